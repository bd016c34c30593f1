"""The feature-store contract: checks every `FeatureStore` backend must pass (scikit-learn style).

Each check is a plain function taking a fresh, empty store (any `max_history` >= 3) and states its
contract in a comment. `tests/test_store.py` runs every check in `CHECKS` against every backend; a new
backend gets the whole suite by adding one parameter there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from recsys.features import Event, FeatureStore, UserState

Check = Callable[[Any], None]


def _events(n: int, start: float = 1000.0, item: str = "i") -> list[Event]:
    return [Event(f"{item}{k}", start + k, event_id=f"{item}-e{k}") for k in range(n)]


def _timestamps(state: UserState) -> list[float]:
    return [e.timestamp for e in state.history]


# Contract: a user the store has never seen has an empty history, an empty profile and version 0; asking
# does not create the user.
def check_unknown_user_empty(store: FeatureStore) -> None:
    assert store.get_user("nobody") == UserState()
    assert store.get_users(["nobody", "nobody-else"]) == [UserState(), UserState()]
    assert store.get_user("nobody") == UserState()


# Contract: append_events returns the new state, and get_user returns the same state afterwards; events
# round-trip exactly (an empty event_id stays empty, a set one is kept).
def check_append_then_get(store: FeatureStore) -> None:
    events = [Event("a", 10.0), Event("b", 11.5, "buy", "id-b"), Event("c", 12.25, event_id="")]
    returned = store.append_events("u1", events)
    assert returned.history == tuple(events)
    assert returned.version >= 1
    assert store.get_user("u1") == returned
    assert store.get_user("u2") == UserState()  # other users untouched


# Contract: the history comes back in time order whatever order the events arrived in, within one call
# and across calls; equal timestamps are ordered deterministically (the same on every backend).
def check_out_of_order(store: FeatureStore) -> None:
    store.append_events("u", [Event("c", 30.0), Event("a", 10.0)])
    store.append_events("u", [Event("b", 20.0), Event("z", 5.0), Event("y", 20.0)])
    state = store.get_user("u")
    assert _timestamps(state) == [5.0, 10.0, 20.0, 20.0, 30.0]
    assert [e.item_id for e in state.history if e.timestamp == 20.0] == ["b", "y"]


# Contract: an event whose key is already held is ignored: the same event_id (even with other fields),
# or the same (item_id, timestamp, event) when event_id is empty, also within one batch. Int and float
# timestamps of the same value are the same event. A write that adds nothing does not bump the version.
def check_duplicates_ignored(store: FeatureStore) -> None:
    first = store.append_events("u", [Event("a", 1.0, event_id="e1"), Event("b", 2.0)])
    again = store.append_events(
        "u",
        [Event("other", 3.0, event_id="e1"), Event("b", 2.0), Event("b", 2), Event("a", 1.0, event_id="e1")],
    )
    assert again == first
    assert store.get_user("u").version == first.version
    in_batch = store.append_events("u", [Event("c", 4.0), Event("c", 4.0), Event("d", 5.0, event_id="x")] * 2)
    assert [e.item_id for e in in_batch.history] == ["a", "b", "c", "d"]
    assert in_batch.version > first.version


# Contract: the history keeps only the newest max_history events (oldest dropped), also when one call
# brings more than max_history; an event older than everything held in a full history is dropped at
# once, and since nothing changed the version stays.
def check_cap_keeps_newest(store: FeatureStore) -> None:
    cap = store.max_history
    events = _events(cap + 3)
    state = store.append_events("u", events[::-1])  # newest first, to also exercise ordering
    assert state.history == tuple(events[-cap:])
    more = _events(2, start=5000.0, item="n")
    state = store.append_events("u", more)
    assert state.history == tuple((events + more)[-cap:])
    before = state.version
    stale = store.append_events("u", [Event("old", 1.0)])
    assert stale.history == state.history
    assert stale.version == before


# Contract: put_profile replaces the profile, which get_user returns; it bumps the version only when the
# profile changed; an empty mapping deletes it. Profiles and histories do not disturb each other.
def check_profile_round_trip(store: FeatureStore) -> None:
    store.put_profile("u", {"age": "30", "country": "de"})
    state = store.get_user("u")
    assert dict(state.profile) == {"age": "30", "country": "de"}
    assert state.version >= 1
    store.put_profile("u", {"age": "30", "country": "de"})
    assert store.get_user("u").version == state.version
    store.put_profile("u", {"age": "31"})
    after = store.append_events("u", [Event("a", 1.0)])
    assert dict(after.profile) == {"age": "31"}
    assert after.history == (Event("a", 1.0),)
    store.put_profile("u", {})
    assert dict(store.get_user("u").profile) == {}


# Contract: get_users returns one state per id, in the order asked (repeats and unknown ids included),
# each equal to get_user of that id.
def check_get_users_batch(store: FeatureStore) -> None:
    store.append_events("a", _events(2))
    store.append_events("b", _events(1, item="j"))
    store.put_profile("b", {"k": "v"})
    ids = ["b", "missing", "a", "b"]
    assert store.get_users(ids) == [store.get_user(u) for u in ids]
    assert store.get_users([]) == []


# Contract: every write that changes a user's state gives a strictly larger version than any state
# seen before; versions are per user.
def check_versions_increase(store: FeatureStore) -> None:
    seen = [store.get_user("u").version]
    for k in range(3):
        seen.append(store.append_events("u", [Event(f"i{k}", float(k))]).version)
        store.put_profile("u", {"k": str(k)})
        seen.append(store.get_user("u").version)
    assert all(a < b for a, b in zip(seen, seen[1:], strict=False)), seen
    assert store.get_user("other").version == 0


# Contract: put_users loads histories and profiles with the same semantics as append_events and
# put_profile, returns the number of users written, and running it again changes nothing (versions
# included): a bulk load can be safely re-run.
def check_put_users_idempotent(store: FeatureStore) -> None:
    cap = store.max_history
    histories = {
        "u1": [Event("a", 3.0), Event("b", 1.0), Event("a", 3.0)],
        "u2": _events(cap + 2)[::-1],
        "u3": [],
    }
    profiles = {"u1": {"age": "20"}, "u4": {"age": "40"}}
    assert store.put_users(histories, profiles) == 4
    first = store.get_users(["u1", "u2", "u3", "u4"])
    assert first[0].history == (Event("b", 1.0), Event("a", 3.0))
    assert dict(first[0].profile) == {"age": "20"}
    assert first[1].history == tuple(_events(cap + 2)[-cap:])
    assert dict(first[3].profile) == {"age": "40"}
    assert store.put_users(histories, profiles) == 4
    assert store.get_users(["u1", "u2", "u3", "u4"]) == first


# Contract: item side features round-trip (put replaces; an unknown item gets {}), and an item marked
# unavailable is listed until it is marked available again.
def check_items_round_trip(store: Any) -> None:
    store.put_item("i1", {"category": "books", "price": "9.5"})
    store.put_item("i2", {"category": "toys"})
    store.put_item("i2", {"brand": "acme"})
    assert store.get_items(["i2", "nope", "i1"]) == [
        {"brand": "acme"},
        {},
        {"category": "books", "price": "9.5"},
    ]
    assert store.get_items([]) == []
    assert store.unavailable_items() == set()
    store.set_unavailable("i1", True)
    store.set_unavailable("i3", True)
    store.set_unavailable("i3", False)
    assert store.unavailable_items() == {"i1"}


# Contract: every feature write or delete that changes an item numbers it anew (rewriting the same
# features does not); a reader paging `items_updated_since` sees each item once at its newest number,
# oldest first, and then nothing until the next change.
def check_items_updated_since(store: Any) -> None:
    assert store.items_updated_since(-1) == []
    store.put_items({"a": {"category": "x"}, "b": {"category": "y"}, "c": {"category": "z"}})
    first = store.items_updated_since(-1)
    assert [i for i, _ in first] == ["a", "b", "c"]
    seqs = [n for _, n in first]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert store.items_updated_since(seqs[-1]) == []
    store.put_items({"c": {"category": "z"}, "a": {"category": "x"}})  # unchanged: not renumbered
    assert store.items_updated_since(seqs[-1]) == []
    store.put_item("a", {"category": "w"})  # rewritten: moves past c
    store.put_item("b", {})  # deleted: still reported, so a reader drops it
    page = store.items_updated_since(-1, limit=2)
    assert [i for i, _ in page] == ["c", "a"]
    rest = store.items_updated_since(page[-1][1])
    assert [i for i, _ in rest] == ["b"] and rest[0][1] > page[-1][1]
    assert store.get_items(["b"]) == [{}]


CHECKS: list[Check] = [
    check_items_updated_since,
    check_unknown_user_empty,
    check_append_then_get,
    check_out_of_order,
    check_duplicates_ignored,
    check_cap_keeps_newest,
    check_profile_round_trip,
    check_get_users_batch,
    check_versions_increase,
    check_put_users_idempotent,
    check_items_round_trip,
]
