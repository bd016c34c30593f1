"""`python -m training export-events`: the serving stream of live events -> a Parquet click log.

The server appends every accepted event to the Redis stream `recsys:events` (see `recsys.store`). This
reads it in pages (XRANGE, oldest first), drops duplicates (delivery is at least once; `event_id` is the
key the store deduplicated on), and writes the canonical click-log schema (`recsys.data`): user_id,
item_id, timestamp (epoch seconds), event, plus event_id and stream_id. The file appears atomically
(written beside, then renamed), so a killed export leaves nothing half-written.

Incremental exports: `--after STREAM_ID` starts after an earlier export's last id (each run prints its
own, and writes it into the file's metadata); `--trim` deletes exported entries from the stream once
the file is durable.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from recsys.errors import InvalidArgument
from recsys.store import RedisStore, mask_url

log = logging.getLogger(__name__)

PAGE = 10_000
COLUMNS = ("user_id", "item_id", "timestamp", "event", "event_id", "stream_id")


@dataclass(frozen=True)
class ExportReport:
    read: int  # stream entries read
    written: int  # rows in the file (read minus duplicates)
    last_id: str  # stream id of the last entry read ("" when none)
    path: Path


def export_events(store: RedisStore, out: Path, after: str = "0-0", progress: bool = True) -> ExportReport:
    rows: list[dict[str, str]] = []
    last = ""
    cursor = after
    with tqdm(desc="export-events", unit="event", disable=not progress) as bar:
        while page := store.read_events(cursor, PAGE):
            for stream_id, fields in page:
                rows.append({**fields, "stream_id": stream_id})
            cursor = last = page[-1][0]
            bar.update(len(page))
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    read = len(frame)
    frame = frame.drop_duplicates(subset=["user_id", "event_id"], keep="first")
    frame["timestamp"] = pd.to_numeric(frame["timestamp"]).astype("float64")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"recsys.last_stream_id": last.encode()})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return ExportReport(read, len(frame), last, out)


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-events", help="write the server's live-event stream (Redis) as a Parquet click log")
    p.add_argument("--redis", required=True, help="redis://HOST:PORT/DB: the server's --features store")
    p.add_argument("--out", required=True, help="Parquet file to write (replaced atomically)")
    p.add_argument("--after", default="0-0", help="export entries after this stream id (an earlier run's last id)")
    p.add_argument("--trim", action="store_true", help="delete the exported entries from the stream afterwards")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    if not str(args.redis).startswith(("redis://", "rediss://", "unix://")):
        raise InvalidArgument(f"--redis {mask_url(args.redis)!r}: not a Redis URL; fix: use redis://HOST:PORT/DB")
    store = RedisStore(args.redis)
    try:
        report = export_events(store, Path(args.out), args.after, progress=not args.quiet)
        trimmed = store.trim_events(report.last_id) if args.trim and report.last_id else 0
    finally:
        store.close()
    print(
        f"exported {report.written} events ({report.read - report.written} duplicates dropped) to {report.path}; "
        f"last stream id {report.last_id or '(none)'}" + (f"; trimmed {trimmed} from the stream" if args.trim else "")
    )
    return 0
