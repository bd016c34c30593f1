"""The feature schema shared by training and serving: behavior events, user state, the store contract.

A feature store keeps *raw* ids (the strings users send), never vocabulary indices, so the same store
serves every model version; the artifact's vocabularies map raw ids to indices at request time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

DEFAULT_EVENT = "click"


@dataclass(frozen=True, slots=True)
class Event:
    """One behavior: the user did `event` on `item_id` at `timestamp` (epoch seconds, UTC).

    `event_id` makes writes idempotent: a store that already holds an event with the same non-empty
    id ignores the second copy. An empty id means "derive one": (item_id, timestamp, event).
    """

    item_id: str
    timestamp: float
    event: str = DEFAULT_EVENT
    event_id: str = ""

    def key(self) -> str:
        return self.event_id or f"{self.item_id}|{self.timestamp!r}|{self.event}"


@dataclass(frozen=True, slots=True)
class UserState:
    """What the ranker needs about a user: the recent history (oldest first) and profile columns."""

    history: tuple[Event, ...] = ()
    profile: Mapping[str, str] = field(default_factory=dict)
    version: int = 0  # bumps on every accepted write; caches key on it


@runtime_checkable
class FeatureStore(Protocol):
    """Per-user histories and profiles, per-item side features. Two backends pass one contract suite:
    `MemoryStore` (memory://) and `RedisStore` (redis://, rediss://)."""

    max_history: int

    def get_user(self, user_id: str) -> UserState:
        """The user's state; an unknown user gets an empty `UserState` (not an error)."""
        ...

    def get_users(self, user_ids: Sequence[str]) -> list[UserState]:
        """Several users in one round trip."""
        ...

    def append_events(self, user_id: str, events: Sequence[Event]) -> UserState:
        """Atomically add events: kept in time order, deduplicated on `Event.key()`, capped at
        `max_history` (oldest dropped). Returns the new state. Raises `Unavailable` when the backend
        cannot be reached; never returns before the write is durable in the backend."""
        ...

    def put_profile(self, user_id: str, profile: Mapping[str, str]) -> None: ...

    def put_users(self, histories: Mapping[str, Sequence[Event]], profiles: Mapping[str, Mapping[str, str]]) -> int:
        """Bulk load (pipelined). Safe to run again: replays deduplicate. Returns users written."""
        ...

    def put_item(self, item_id: str, features: Mapping[str, str]) -> None:
        """Replace an item's side features (items added after training can be served with them)."""
        ...

    def get_items(self, item_ids: Sequence[str]) -> list[dict[str, str]]:
        """Side features per item, in order; an unknown item gets {}."""
        ...

    def set_unavailable(self, item_id: str, unavailable: bool = True) -> None:
        """Mark an item as never to be recommended (out of stock, withdrawn), or available again."""
        ...

    def unavailable_items(self) -> set[str]: ...

    def items_updated_since(self, after: int, limit: int = 10_000) -> list[tuple[str, int]]:
        """Items whose side features were written (or deleted) after update sequence number `after`,
        oldest first, at most `limit`: (item id, its sequence number). Page with the last number
        returned; -1 reads from the start. Every write of an item takes a new, larger number, so a
        reader following the sequence sees catalogue changes (the server serves new items this way)."""
        ...

    def close(self) -> None: ...
