"""An in-process LRU cache of user states in front of the feature store, with a TTL and a size bound.

- `get(user)` returns a *fresh* entry (younger than the TTL) or None; the caller then reads the store
  and `put`s what it read.
- An expired entry is not dropped: it stays until the size bound evicts it, because when the store is
  down, `get_stale(user)` still answers from it (degraded mode) rather than from nothing.
- `put` never replaces a fresh entry with an older state: a read that started before a concurrent
  write but finished after it carries a lower `UserState.version` and is ignored.
- `invalidate(user)` marks the entry expired (kept for `get_stale`); RecordEvents calls it before the
  store write and `put`s the state the store returns after it.

Thread-safe (one lock; every operation is O(1)). `max_size=0` disables the cache.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from recsys.features import UserState


class UserStateCache:
    def __init__(self, max_size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_size < 0 or ttl_s < 0:
            raise ValueError(f"max_size={max_size} and ttl_s={ttl_s} must be >= 0")
        self.max_size = max_size
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[UserState, float]] = OrderedDict()  # user -> (state, expires at)

    @property
    def enabled(self) -> bool:
        return self.max_size > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, user_id: str) -> UserState | None:
        """The cached state if it is fresh, else None."""
        with self._lock:
            entry = self._entries.get(user_id)
            if entry is None or entry[1] <= self._clock():
                return None
            self._entries.move_to_end(user_id)
            return entry[0]

    def get_stale(self, user_id: str) -> UserState | None:
        """The cached state however old (for answering while the store is down), else None."""
        with self._lock:
            entry = self._entries.get(user_id)
            return None if entry is None else entry[0]

    def put(self, user_id: str, state: UserState) -> None:
        if not self.max_size:
            return
        with self._lock:
            now = self._clock()
            entry = self._entries.get(user_id)
            if entry is not None and entry[1] > now and entry[0].version > state.version:
                return  # a fresher state is already cached (a write overtook this read)
            self._entries[user_id] = (state, now + self.ttl_s)
            self._entries.move_to_end(user_id)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)

    def invalidate(self, user_id: str) -> None:
        """Make the next `get` miss; the entry stays available to `get_stale`."""
        with self._lock:
            entry = self._entries.get(user_id)
            if entry is not None:
                self._entries[user_id] = (entry[0], float("-inf"))
