"""Feature-store backends: `MemoryStore` (the reference) and `RedisStore` (production), via `open_store`.

Both pass one contract suite (`tests/store_contract.py`). The semantics, stated once:

* A user's history is the newest `max_history` events, oldest first, ordered by `timestamp` and, for equal
  timestamps, by the serialized event (`encode_event`): arrival order never matters.
* An event whose `Event.key()` is already in the held history is ignored. Deduplication is against the
  events currently held: an event that has fallen off the cap can be sent again, but since it is older than
  everything held it falls off again at once, so replaying a log never changes the state.
* `version` counts writes that changed the user's state (history or profile); a write that changed nothing
  (duplicates only, events too old to be kept, the same profile again) leaves it alone.

Redis key schema (the prefix is configurable, default ``recsys:``; ``{...}`` are literal braces, a cluster
hash tag, so all of one user's keys live in one slot)::

    recsys:u:{<user_id>}:h      sorted set   member = compact JSON [item_id, timestamp, event, event_key],
                                             score = timestamp; the newest max_history events
    recsys:u:{<user_id>}:ids    set          the event keys of the members of :h (for deduplication)
    recsys:u:{<user_id>}:p      hash         profile columns
    recsys:u:{<user_id>}:v      string(int)  version, INCR'd by every write that changed the user
    recsys:i:{<item_id>}        hash         item side features
    recsys:items:unavailable    set          item ids that must not be recommended
    recsys:items:updated        sorted set   member = item id, score = the sequence number of its newest
                                             feature write (or delete): `items_updated_since` reads it
    recsys:items:seq            string(int)  the last sequence number handed out (INCRBY per put_items)
    recsys:events               stream       every event accepted by `append_events` (not bulk loads),
                                             fields user_id, item_id, timestamp (repr of the float), event,
                                             event_id (= Event.key(), the id the store deduplicated on);
                                             capped with MAXLEN ~ stream_maxlen. Offline retraining
                                             exports it; delivery is at least once, so dedupe on event_id.

`append_events` is one Lua script (dedupe, add, trim, bump the version, XADD, read back): atomic and one
round trip. On Redis Cluster the stream lives in another slot than the user's keys, so the script cannot
touch it there: the XADDs go in a second call right after the script, and a crash between the two calls
can lose stream entries (never history).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.cluster
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ClusterDownError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from recsys.errors import InvalidArgument, Unavailable
from recsys.features import Event, FeatureStore, UserState

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "recsys:"
DEFAULT_MAX_HISTORY = 200
DEFAULT_STREAM_MAXLEN = 10_000_000
BULK_CHUNK_USERS = 500  # users per pipeline in put_users: big enough to amortize round trips, small
# enough that one reply stays a few MB
SCHEMES = ("memory", "redis", "rediss", "unix", "redis+cluster", "rediss+cluster")

# BusyLoadingError and AuthenticationError are ConnectionError subclasses; ClusterDownError covers a
# cluster that lost a slot's primary. All mean "try again later", i.e. UNAVAILABLE.
_UNAVAILABLE_ERRORS = (RedisConnectionError, RedisTimeoutError, ClusterDownError)


# ---------------------------------------------------------------- serialization and reference semantics


def encode_event(event: Event) -> str:
    """The sorted-set member for `event`: compact JSON ``[item_id, timestamp, event, event_key]``.

    ASCII-only (json's default escaping), so Redis's byte order on members equals Python's str order.
    """
    return json.dumps([event.item_id, event.timestamp, event.event, event.key()], separators=(",", ":"))


def decode_event(member: str) -> Event:
    """Inverse of `encode_event`. A key equal to the derived one comes back as ``event_id=""``."""
    item_id, timestamp, kind, key = json.loads(member)
    event = Event(item_id, float(timestamp), kind)
    return event if event.key() == key else Event(item_id, float(timestamp), kind, key)


def order_key(event: Event) -> tuple[float, str]:
    """History order: by timestamp, ties by the serialized event (the order of a Redis sorted set)."""
    return event.timestamp, encode_event(event)


def merge_history(
    history: Sequence[Event], events: Sequence[Event], max_history: int
) -> tuple[tuple[Event, ...], list[Event]]:
    """The reference semantics of `append_events`: (new history, events that were not duplicates).

    `history` must already be in order and capped; `events` must be normalized (`_normalize`).
    """
    held = {e.key() for e in history}
    added: list[Event] = []
    for e in events:
        if e.key() not in held:
            held.add(e.key())
            added.append(e)
    merged = sorted([*history, *added], key=order_key)
    return tuple(merged[-max_history:]), added


def _normalize(user_id: str, event: Event) -> Event:
    """Timestamps become finite floats, so ``Event("a", 5)`` and ``Event("a", 5.0)`` are one event."""
    timestamp = float(event.timestamp)
    if not math.isfinite(timestamp):
        raise InvalidArgument(
            f"user {user_id!r}, item {event.item_id!r}: timestamp {event.timestamp!r} is not finite; "
            "fix: use epoch seconds"
        )
    if type(event.timestamp) is float:
        return event
    return Event(event.item_id, timestamp, event.event, event.event_id)


def _check_max_history(max_history: int) -> None:
    if max_history < 1:
        raise InvalidArgument(f"max_history={max_history} must be >= 1")


# ---------------------------------------------------------------- URL helpers


def mask_url(url: str) -> str:
    """`url` with any password replaced by ``***`` (userinfo and ``?password=``); safe to log."""
    netloc = urlsplit(url).netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        url = url.replace(netloc, f"{userinfo.split(':', 1)[0]}:***@{hostport}", 1)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url)


def _secrets(url: str) -> set[str]:
    """The password(s) in `url`, as written and percent-decoded, to scrub from error messages."""
    parts = urlsplit(url)
    found = {parts.password or ""} | {v for k, v in parse_qsl(parts.query) if k == "password"}
    found |= {unquote(s) for s in found}
    return {s for s in found if s}


# ---------------------------------------------------------------- memory backend


@dataclass
class _MemoryUser:
    history: tuple[Event, ...] = ()
    profile: dict[str, str] = field(default_factory=dict)
    version: int = 0


class MemoryStore:
    """The reference backend (``memory://``): dicts behind one lock. Thread-safe, not shared between
    processes, gone on exit. Used by tests and single-process demos."""

    def __init__(self, max_history: int = DEFAULT_MAX_HISTORY) -> None:
        _check_max_history(max_history)
        self.max_history = max_history
        self._lock = threading.Lock()
        self._users: dict[str, _MemoryUser] = {}
        self._items: dict[str, dict[str, str]] = {}
        self._item_seq: dict[str, int] = {}  # insertion order = sequence order: a rewrite moves to the end
        self._seq = 0
        self._unavailable: set[str] = set()

    def __repr__(self) -> str:
        return f"MemoryStore(max_history={self.max_history})"

    def _state(self, user_id: str) -> UserState:
        user = self._users.get(user_id)
        if user is None:
            return UserState()
        return UserState(user.history[-self.max_history :], dict(user.profile), user.version)

    def get_user(self, user_id: str) -> UserState:
        with self._lock:
            return self._state(user_id)

    def get_users(self, user_ids: Sequence[str]) -> list[UserState]:
        with self._lock:
            return [self._state(u) for u in user_ids]

    def append_events(self, user_id: str, events: Sequence[Event]) -> UserState:
        events = [_normalize(user_id, e) for e in events]
        with self._lock:
            self._append(user_id, events)
            return self._state(user_id)

    def _append(self, user_id: str, events: Sequence[Event]) -> None:
        user = self._users.setdefault(user_id, _MemoryUser())
        history, _ = merge_history(user.history, events, self.max_history)
        if history != user.history:
            user.history = history
            user.version += 1

    def put_profile(self, user_id: str, profile: Mapping[str, str]) -> None:
        """Replace the user's profile (an empty mapping deletes it)."""
        with self._lock:
            self._put_profile(user_id, profile)

    def _put_profile(self, user_id: str, profile: Mapping[str, str]) -> None:
        user = self._users.setdefault(user_id, _MemoryUser())
        if dict(profile) != user.profile:
            user.profile = dict(profile)
            user.version += 1

    def put_users(
        self,
        histories: Mapping[str, Sequence[Event]],
        profiles: Mapping[str, Mapping[str, str]],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Bulk load; same result as `append_events` + `put_profile` per user. Returns users written."""
        user_ids = list(dict.fromkeys([*histories, *profiles]))
        normalized = {u: [_normalize(u, e) for e in histories.get(u, ())] for u in histories}
        with self._lock:
            for u in user_ids:
                if u in histories:
                    self._append(u, normalized[u])
                if u in profiles:
                    self._put_profile(u, profiles[u])
        if progress is not None:
            progress(len(user_ids))
        return len(user_ids)

    def put_item(self, item_id: str, features: Mapping[str, str]) -> None:
        """Replace the item's side features (an empty mapping deletes them)."""
        self.put_items({item_id: features})

    def put_items(self, items: Mapping[str, Mapping[str, str]]) -> int:
        """Replace the side features of several items (unchanged ones are left alone). Returns items given."""
        with self._lock:
            for item_id, features in items.items():
                if self._items.get(item_id, {}) == dict(features):
                    continue  # unchanged: no new sequence number (a re-run load changes nothing)
                if features:
                    self._items[item_id] = dict(features)
                else:
                    self._items.pop(item_id, None)
                self._seq += 1
                self._item_seq.pop(item_id, None)
                self._item_seq[item_id] = self._seq
        return len(items)

    def items_updated_since(self, after: int, limit: int = 10_000) -> list[tuple[str, int]]:
        with self._lock:
            newer = list(itertools.takewhile(lambda kv: kv[1] > after, reversed(self._item_seq.items())))
        return newer[::-1][:limit]

    def get_items(self, item_ids: Sequence[str]) -> list[dict[str, str]]:
        """Side features per item, in order; an unknown item gets ``{}``."""
        with self._lock:
            return [dict(self._items.get(i, {})) for i in item_ids]

    def set_unavailable(self, item_id: str, unavailable: bool = True) -> None:
        """Mark (or unmark) an item as not to be recommended (out of stock, taken down)."""
        with self._lock:
            if unavailable:
                self._unavailable.add(item_id)
            else:
                self._unavailable.discard(item_id)

    def unavailable_items(self) -> set[str]:
        with self._lock:
            return set(self._unavailable)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- redis backend

# KEYS: h, ids, p, v [, stream]
# ARGV: max_history, stream_maxlen, user_id, want_state, then per event: key, member, item_id, ts, event
# Returns {members, profile (flat), version, added event indices (0-based)}; the first three are empty /
# 0 when want_state is "0" (bulk loads).
_APPEND_LUA = """
local h, ids, p, v, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local cap = tonumber(ARGV[1])
local added = {}
for i = 5, #ARGV, 5 do
  if redis.call('SADD', ids, ARGV[i]) == 1 then
    redis.call('ZADD', h, ARGV[i + 3], ARGV[i + 1])
    added[#added + 1] = i
  end
end
local n = redis.call('ZCARD', h)
if n > cap then
  local old = redis.call('ZRANGE', h, 0, n - cap - 1)
  redis.call('ZREMRANGEBYRANK', h, 0, n - cap - 1)
  for _, member in ipairs(old) do
    redis.call('SREM', ids, cjson.decode(member)[4])
  end
end
local changed = false
for _, i in ipairs(added) do
  if redis.call('ZSCORE', h, ARGV[i + 1]) then
    changed = true
    break
  end
end
if changed then
  redis.call('INCR', v)
end
local indices = {}
for _, i in ipairs(added) do
  indices[#indices + 1] = (i - 5) / 5
  if stream then
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[2], '*', 'user_id', ARGV[3], 'item_id', ARGV[i + 2],
      'timestamp', ARGV[i + 3], 'event', ARGV[i + 4], 'event_id', ARGV[i])
  end
end
if ARGV[4] == '0' then
  return {{}, {}, 0, indices}
end
return {redis.call('ZRANGE', h, -cap, -1), redis.call('HGETALL', p), tonumber(redis.call('GET', v) or '0'),
  indices}
"""

# KEYS: p, v.  ARGV: field, value, field, value, ...  Replaces the profile; bumps v only if it changed.
_PUT_PROFILE_LUA = """
local current = redis.call('HGETALL', KEYS[1])
local same = #current == #ARGV
if same then
  local want = {}
  for i = 1, #ARGV, 2 do want[ARGV[i]] = ARGV[i + 1] end
  for i = 1, #current, 2 do
    if want[current[i]] ~= current[i + 1] then
      same = false
      break
    end
  end
end
if same then
  return 0
end
redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return redis.call('INCR', KEYS[2])
"""


def _flat(mapping: Mapping[str, str]) -> list[str]:
    return [x for kv in mapping.items() for x in kv]


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class RedisStore:
    """The production backend: one Redis (``redis://``, ``rediss://`` for TLS, ``unix://``) or a Redis
    Cluster (``redis+cluster://``, ``rediss+cluster://``). See the module docstring for the key schema.

    Nothing connects in the constructor (a server may start while Redis is briefly down); every call that
    cannot reach Redis raises `Unavailable` naming the store, with the password masked. Thread-safe:
    redis-py pools connections.
    """

    def __init__(
        self,
        url: str,
        max_history: int = DEFAULT_MAX_HISTORY,
        *,
        prefix: str = DEFAULT_PREFIX,
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
        socket_timeout: float = 2.0,
        socket_connect_timeout: float = 2.0,
        retries: int = 1,
    ) -> None:
        """`retries`: extra attempts after a connection error or timeout (jittered backoff, at most
        0.5 s), so one call fails within about (retries + 1) * socket timeout."""
        _check_max_history(max_history)
        if "{" in prefix or "}" in prefix:
            raise InvalidArgument(f"prefix={prefix!r} must not contain braces (they are cluster hash tags)")
        if stream_maxlen < 1:
            raise InvalidArgument(f"stream_maxlen={stream_maxlen} must be >= 1")
        scheme = urlsplit(url).scheme
        self.url = url
        self.max_history = max_history
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self.stream_key = f"{prefix}events"
        self._cluster = scheme.endswith("+cluster")
        self._client_url = url.replace("+cluster://", "://", 1) if self._cluster else url
        self._client_kwargs: dict[str, Any] = dict(
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), retries),
        )
        self._secrets = _secrets(url)
        self._client_lock = threading.Lock()
        self._client: redis.Redis | redis.cluster.RedisCluster | None = None
        self._script_objects: tuple[Any, Any] | None = None
        if not self._cluster:  # Redis.from_url does not connect; RedisCluster.from_url does (lazily below)
            try:
                self._client = redis.Redis.from_url(self._client_url, **self._client_kwargs)
            except ValueError as err:  # a malformed URL (bad port, db, scheme)
                raise InvalidArgument(f"feature store URL {mask_url(url)!r}: {self._scrub(err)}") from None

    def __repr__(self) -> str:
        return f"RedisStore({mask_url(self.url)!r}, max_history={self.max_history}, prefix={self.prefix!r})"

    # -- plumbing

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn 'cannot reach Redis' into `Unavailable`; the message never holds the password."""
        try:
            yield
        except _UNAVAILABLE_ERRORS as err:
            raise Unavailable(
                f"feature store {mask_url(self.url)} is unavailable ({type(err).__name__}: "
                f"{self._scrub(err)}); "
                "fix: check that Redis is up and reachable, then retry"
            ) from None

    def _scrub(self, err: Exception) -> str:
        detail = str(err)
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return detail

    def client(self) -> redis.Redis | redis.cluster.RedisCluster:
        """The redis-py client (created on first use for a cluster, which connects to discover slots)."""
        if self._client is None:
            with self._client_lock, self._errors():
                if self._client is None:
                    try:
                        self._client = redis.cluster.RedisCluster.from_url(self._client_url, **self._client_kwargs)
                    except RedisClusterException as err:  # "no reachable startup node"
                        raise RedisConnectionError(str(err)) from err
        return self._client

    def _scripts(self) -> tuple[Any, Any]:
        """(append, put_profile) as redis-py `Script`s: EVALSHA, loading the script on NOSCRIPT."""
        if self._script_objects is None:
            client = self.client()
            self._script_objects = (
                client.register_script(_APPEND_LUA),
                client.register_script(_PUT_PROFILE_LUA),
            )
        return self._script_objects

    def _user_keys(self, user_id: str) -> list[str]:
        """h, ids, p, v. The hash tag keeps them in one cluster slot (see `_check_user_id`)."""
        base = f"{self.prefix}u:{{{user_id}}}"
        return [f"{base}:h", f"{base}:ids", f"{base}:p", f"{base}:v"]

    def _check_user_id(self, user_id: str) -> None:
        # Redis hashes the text between the first "{" and the next "}"; when that is empty (user id "" or
        # starting with "}") it hashes the whole key, and a user's keys would land in different slots.
        if self._cluster and (not user_id or user_id.startswith("}")):
            raise InvalidArgument(f"user_id {user_id!r} is empty or starts with '}}'; not valid on a cluster")

    def _append_args(self, user_id: str, events: Sequence[Event], *, want_state: bool) -> list[Any]:
        args: list[Any] = [self.max_history, self.stream_maxlen, user_id, int(want_state)]
        for e in events:
            args += [e.key(), encode_event(e), e.item_id, repr(e.timestamp), e.event]
        return args

    def _pipeline(self, transaction: bool = False) -> Any:
        return self.client().pipeline(transaction=transaction and not self._cluster)

    def _queue_script(self, pipe: Any, script: Any, keys: list[str], args: list[Any]) -> None:
        if self._cluster:  # ClusterPipeline blocks .evalsha(); put_users loaded the scripts on all primaries
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        else:  # the pipeline checks SCRIPT EXISTS and loads missing scripts before it runs
            script(keys=keys, args=args, client=pipe)

    def _xadd(self, user_id: str, events: Sequence[Event]) -> None:
        pipe = self._pipeline()
        for e in events:
            fields = {
                "user_id": user_id,
                "item_id": e.item_id,
                "timestamp": repr(e.timestamp),
                "event": e.event,
                "event_id": e.key(),
            }
            pipe.xadd(self.stream_key, fields, maxlen=self.stream_maxlen, approximate=True)
        pipe.execute()

    def _user_state(self, members: Sequence[str], profile: Sequence[str] | dict[str, str], version: Any) -> UserState:
        history = tuple(decode_event(m) for m in members)
        profile = profile if isinstance(profile, dict) else _pairs(profile)
        return UserState(history, profile, int(version or 0))

    # -- the FeatureStore contract

    def get_user(self, user_id: str) -> UserState:
        return self.get_users([user_id])[0]

    def get_users(self, user_ids: Sequence[str]) -> list[UserState]:
        """One round trip (a pipeline; MULTI/EXEC on a single node, so each state is a snapshot).

        On a cluster the reads are not atomic, so the version is read first: a concurrent write can make
        the returned version older than the history, never newer, and a cache keyed on the version then
        misses instead of serving stale data.
        """
        if not user_ids:
            return []
        for u in user_ids:
            self._check_user_id(u)
        with self._errors():
            pipe = self._pipeline(transaction=True)
            for u in user_ids:
                h, _, p, v = self._user_keys(u)
                pipe.get(v)
                pipe.zrange(h, -self.max_history, -1)
                pipe.hgetall(p)
            replies = pipe.execute()
        return [self._user_state(replies[i + 1], replies[i + 2], replies[i]) for i in range(0, len(replies), 3)]

    def append_events(self, user_id: str, events: Sequence[Event]) -> UserState:
        """See `FeatureStore.append_events`. One Lua script: atomic and one round trip (two on a cluster,
        where the stream XADDs follow the script). Events not deduplicated go to the events stream."""
        self._check_user_id(user_id)
        events = [_normalize(user_id, e) for e in events]
        keys = self._user_keys(user_id) + ([] if self._cluster else [self.stream_key])
        with self._errors():
            append, _ = self._scripts()
            members, profile, version, added = append(
                keys=keys, args=self._append_args(user_id, events, want_state=True)
            )
            if self._cluster and added:
                self._xadd(user_id, [events[i] for i in added])
        return self._user_state(members, profile, version)

    def put_profile(self, user_id: str, profile: Mapping[str, str]) -> None:
        """Replace the user's profile (an empty mapping deletes it); bumps the version if it changed."""
        self._check_user_id(user_id)
        with self._errors():
            _, put = self._scripts()
            put(keys=self._user_keys(user_id)[2:], args=_flat(profile))

    def put_users(
        self,
        histories: Mapping[str, Sequence[Event]],
        profiles: Mapping[str, Mapping[str, str]],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Bulk load: per user the same scripts as `append_events` / `put_profile`, pipelined
        `BULK_CHUNK_USERS` users at a time (not one transaction: a failed load is simply re-run, replays
        deduplicate). Writes nothing to the events stream: bulk loads are not live events.
        `progress(n)` is called after each chunk with the users it wrote. Returns users written."""
        user_ids = list(dict.fromkeys([*histories, *profiles]))
        for u in user_ids:
            self._check_user_id(u)
        with self._errors():
            append, put = self._scripts()
            if self._cluster:  # a cluster pipeline cannot recover from NOSCRIPT mid-way; load up front
                self.client().script_load(_APPEND_LUA)
                self.client().script_load(_PUT_PROFILE_LUA)
            for start in range(0, len(user_ids), BULK_CHUNK_USERS):
                chunk = user_ids[start : start + BULK_CHUNK_USERS]
                pipe = self._pipeline()
                for u in chunk:
                    h, ids, p, v = self._user_keys(u)
                    if u in histories:
                        events = [_normalize(u, e) for e in histories[u]]
                        args = self._append_args(u, events, want_state=False)
                        self._queue_script(pipe, append, [h, ids, p, v], args)
                    if u in profiles:
                        self._queue_script(pipe, put, [p, v], _flat(profiles[u]))
                pipe.execute()
                logger.debug("%r: loaded users %d..%d of %d", self, start, start + len(chunk), len(user_ids))
                if progress is not None:
                    progress(len(chunk))
        return len(user_ids)

    # -- items

    def _item_key(self, item_id: str) -> str:
        return f"{self.prefix}i:{{{item_id}}}"

    def put_item(self, item_id: str, features: Mapping[str, str]) -> None:
        """Replace the item's side features (an empty mapping deletes them)."""
        self.put_items({item_id: features})

    def put_items(self, items: Mapping[str, Mapping[str, str]]) -> int:
        """Replace the side features of several items. Three round trips: read the current features,
        number the changed items (INCRBY, for `items_updated_since`), write them in one pipeline; an
        unchanged item is not rewritten, so a re-run load changes nothing. Returns items given."""
        if not items:
            return 0
        with self._errors():
            current = self.get_items(list(items))
            changed = {i: f for (i, f), old in zip(items.items(), current, strict=True) if dict(f) != old}
            if not changed:
                return len(items)
            last = int(self.client().incrby(f"{self.prefix}items:seq", len(changed)))  # type: ignore[arg-type]
            pipe = self._pipeline()
            for n, (item_id, features) in enumerate(changed.items(), start=last - len(changed) + 1):
                key = self._item_key(item_id)
                pipe.delete(key)
                if features:
                    pipe.hset(key, mapping=dict(features))
                pipe.zadd(f"{self.prefix}items:updated", {item_id: n})
            pipe.execute()
        return len(items)

    def items_updated_since(self, after: int, limit: int = 10_000) -> list[tuple[str, int]]:
        with self._errors():
            rows = self.client().zrangebyscore(
                f"{self.prefix}items:updated", f"({after}", "+inf", start=0, num=limit, withscores=True
            )
        return [(str(item_id), int(seq)) for item_id, seq in rows]  # type: ignore[union-attr,str-unpack,misc]

    def get_items(self, item_ids: Sequence[str]) -> list[dict[str, str]]:
        """Side features per item, in order, in one round trip; an unknown item gets ``{}``."""
        if not item_ids:
            return []
        with self._errors():
            pipe = self._pipeline()
            for item_id in item_ids:
                pipe.hgetall(self._item_key(item_id))
            return list(pipe.execute())

    def set_unavailable(self, item_id: str, unavailable: bool = True) -> None:
        """Mark (or unmark) an item as not to be recommended (out of stock, taken down)."""
        key = f"{self.prefix}items:unavailable"
        with self._errors():
            if unavailable:
                self.client().sadd(key, item_id)
            else:
                self.client().srem(key, item_id)

    def unavailable_items(self) -> set[str]:
        with self._errors():
            return set(self.client().smembers(f"{self.prefix}items:unavailable"))  # type: ignore[arg-type]

    def read_events(self, after: str = "0-0", count: int = 10_000) -> list[tuple[str, dict[str, str]]]:
        """Up to `count` entries of the events stream strictly after stream id `after`, oldest first:
        (stream id, fields). Page with the last id returned; an empty list means caught up."""
        with self._errors():
            return list(self.client().xrange(self.stream_key, min=f"({after}", max="+", count=count))  # type: ignore[arg-type]

    def trim_events(self, upto: str) -> int:
        """Delete stream entries with ids <= `upto` (after an export made them durable elsewhere)."""
        ms, _, seq = upto.partition("-")
        with self._errors():
            return int(self.client().xtrim(self.stream_key, minid=f"{ms}-{int(seq or 0) + 1}", approximate=False))

    def ping(self) -> None:
        """Raise `Unavailable` unless Redis answers (for readiness checks)."""
        with self._errors():
            self.client().ping()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# ---------------------------------------------------------------- factory


def open_store(url: str, max_history: int = DEFAULT_MAX_HISTORY, **options: Any) -> FeatureStore:
    """The store at `url`: ``memory://``, ``redis://[:password@]host:port/db``, ``rediss://...`` (TLS),
    ``unix:///path/to/redis.sock?db=0``, ``redis+cluster://host:port`` (Redis Cluster). `options` go to
    `RedisStore` (prefix, stream_maxlen, socket timeouts, retries). Connects to nothing."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        if options:
            raise InvalidArgument(f"options {sorted(options)} do not apply to {url!r}")
        return MemoryStore(max_history)
    if scheme in SCHEMES:
        return RedisStore(url, max_history, **options)
    raise InvalidArgument(
        f"feature store URL {mask_url(url)!r} has unknown scheme {scheme!r}; fix: use one of "
        + ", ".join(f"{s}://" for s in SCHEMES)
    )
