"""Bulk-load a click log into a Redis feature store:

    python -m serving.features load --log clicks.parquet [--items items.csv] [--users users.csv] \\
        --redis redis://localhost:6379/0 [--max-history 200] [--no-progress]

The log is read and validated by `recsys.data.load_log` (the canonical schema, the same checks as
training). Per user, the positive events (label 1) become the history, capped at the newest
`--max-history` (use the server's value); the user table's non-empty columns become the profile; the
item table's columns become item side features (multi-valued cells joined with "|"). Histories and
profiles are written with the store's pipelined `put_users`, which deduplicates on each event's key,
so running the load twice, or after live traffic, changes nothing that is already there. Bulk loads
do not go to the live events stream.

Exit codes as for the server: 2 for a bad file or argument, 3 when Redis is unreachable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from recsys.data import MULTI_SEP, ClickLog, load_log
from recsys.errors import InvalidArgument, RecsysError
from recsys.features import Event
from recsys.store import DEFAULT_MAX_HISTORY, SCHEMES, RedisStore, mask_url, order_key

logger = logging.getLogger(__name__)

ITEM_CHUNK = 1000  # items per pipeline


@dataclass(frozen=True)
class LoadReport:
    users: int  # users written (with a history, a profile, or both)
    events: int  # events sent (after the per-user cap; duplicates are dropped by the store)
    items: int  # items whose side features were written


def histories_of(clog: ClickLog, max_history: int) -> dict[str, list[Event]]:
    """Each user's positive events, oldest first, capped exactly as the store would cap them."""
    ev = clog.events
    pos = ev[ev["label"] == 1]
    histories: dict[str, list[Event]] = {}
    columns = (pos[c].tolist() for c in ("user_id", "item_id", "timestamp", "event"))
    for user, item, ts, kind in zip(*columns, strict=True):
        histories.setdefault(str(user), []).append(Event(str(item), float(ts), str(kind)))
    for user, events in histories.items():
        if len(events) > max_history:  # send only what the store keeps: the newest distinct events, its order
            unique = {e.key(): e for e in events}.values()
            histories[user] = sorted(unique, key=order_key)[-max_history:]
    return histories


def profiles_of(clog: ClickLog) -> dict[str, dict[str, str]]:
    """Non-empty user-table columns per user (as training's seed does)."""
    if clog.users is None:
        return {}
    return {
        str(r["user_id"]): {k: str(v) for k, v in r.items() if k != "user_id" and v}
        for r in clog.users.to_dict("records")
    }


def items_of(clog: ClickLog) -> dict[str, dict[str, str]]:
    if clog.items is None:
        return {}
    return {
        str(r["item_id"]): {k: MULTI_SEP.join(v) for k, v in r.items() if k != "item_id" and v}
        for r in clog.items.to_dict("records")
    }


def load(
    store: RedisStore,
    histories: Mapping[str, Sequence[Event]],
    profiles: Mapping[str, Mapping[str, str]],
    items: Mapping[str, Mapping[str, str]],
    progress: bool = True,
) -> LoadReport:
    users = len(dict.fromkeys([*histories, *profiles]))
    with tqdm(total=users, unit="user", desc="users", disable=not progress) as bar:
        written = store.put_users(histories, profiles, progress=bar.update)
    ids = list(items)
    for start in range(0, len(ids), ITEM_CHUNK):
        store.put_items({i: items[i] for i in ids[start : start + ITEM_CHUNK]})
    return LoadReport(written, sum(len(h) for h in histories.values()), len(ids))


def open_redis(url: str, max_history: int) -> RedisStore:
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES or scheme == "memory":
        raise InvalidArgument(
            f"--redis {mask_url(url)!r}: not a Redis URL; fix: use redis://HOST:PORT/DB (or rediss://, unix://, "
            "redis+cluster://)"
        )
    return RedisStore(url, max_history)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serving.features", description="Feature-store maintenance.")
    sub = p.add_subparsers(dest="command", required=True)
    ld = sub.add_parser("load", help="bulk-load histories, profiles and item features from a click log")
    ld.add_argument("--log", required=True, help="click log (CSV or Parquet, the canonical schema)")
    ld.add_argument("--items", help="optional item table: item_id + categorical columns")
    ld.add_argument("--users", help="optional user table: user_id + profile columns")
    ld.add_argument("--redis", required=True, help="redis://HOST:PORT/DB (the server's --features)")
    ld.add_argument("--max-history", type=int, default=DEFAULT_MAX_HISTORY, help="events kept per user")
    ld.add_argument("--no-progress", action="store_true", help="no progress bar")
    un = sub.add_parser("unavailable", help="mark items as never to be recommended (or --clear them), or list them")
    un.add_argument("items", nargs="*", help="raw item ids (none: list the unavailable items)")
    un.add_argument("--redis", required=True, help="redis://HOST:PORT/DB (the server's --features)")
    un.add_argument("--clear", action="store_true", help="mark the items available again")
    return p.parse_args(argv)


def unavailable(store: RedisStore, items: Sequence[str], clear: bool) -> str:
    for item in items:
        store.set_unavailable(item, not clear)
    listed = sorted(store.unavailable_items())
    return (
        f"{len(listed)} unavailable item(s)"
        + (": " + ", ".join(listed[:20]) if listed else "")
        + (" ..." if len(listed) > 20 else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "unavailable":
        try:
            store = open_redis(args.redis, DEFAULT_MAX_HISTORY)
            try:
                print(unavailable(store, args.items, args.clear))
            finally:
                store.close()
        except RecsysError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
        return 0
    try:
        store = open_redis(args.redis, args.max_history)
        try:
            clog = load_log(args.log, args.items, args.users)
            report = load(
                store, histories_of(clog, args.max_history), profiles_of(clog), items_of(clog), not args.no_progress
            )
        finally:
            store.close()
    except RecsysError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(
        f"loaded {report.users} users ({report.events} events) and {report.items} items "
        f"from {Path(args.log).name} into {mask_url(args.redis)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
