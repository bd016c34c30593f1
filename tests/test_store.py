"""Feature stores: the contract suite on every backend, plus Redis-only behavior (errors, the stream).

Redis tests run against throwaway servers: a plain one from pytest-redis (`redis_proc` in conftest.py)
and a one-node Redis Cluster started here, so the ``redis+cluster://`` code path runs for real.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_contract import CHECKS, Check

from recsys.errors import InvalidArgument, Unavailable
from recsys.features import Event, FeatureStore, UserState
from recsys.store import MemoryStore, RedisStore, mask_url, open_store, order_key

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
CONTRACT_MAX_HISTORY = 5  # small, so the cap checks stay cheap


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _url(proc: Any) -> str:
    return f"redis://{proc.host}:{proc.port}/0"


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-node Redis Cluster owning all 16384 slots: enough to run cluster-mode clients for real."""
    datadir: Path = tmp_path_factory.mktemp("redis-cluster")
    for _ in range(20):  # the cluster bus listens on port + 10000, which must be free too
        port = _free_port()
        if port + 10000 < 65536:
            break
    options = f"--port {port} --bind 127.0.0.1 --cluster-enabled yes --dir {datadir} --appendonly no"
    proc = subprocess.Popen(
        [REDIS_SERVER, *options.split(), "--cluster-config-file", str(datadir / "nodes.conf"), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, decode_responses=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        while "cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "one-node cluster did not come up"
            time.sleep(0.05)
        client.close()
        yield f"redis+cluster://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


StoreFactory = Callable[..., Any]


@pytest.fixture(params=["memory", "redis", "cluster"])
def make_store(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    """A factory of fresh, empty stores of one backend; each gets its own key prefix."""
    stores: list[Any] = []

    def make(max_history: int = CONTRACT_MAX_HISTORY) -> Any:
        if request.param == "memory":
            store: Any = MemoryStore(max_history)
        else:
            store = RedisStore(url, max_history, prefix=f"t{uuid.uuid4().hex[:8]}:")
        stores.append(store)
        return store

    if request.param == "redis":
        client = request.getfixturevalue("redisdb")
        client.flushdb()
        url = _url(request.getfixturevalue("redis_proc"))
    elif request.param == "cluster":
        url = request.getfixturevalue("redis_cluster_url")
    yield make
    for store in stores:
        store.close()


# ---------------------------------------------------------------- the contract, on every backend


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_contract(make_store: StoreFactory, check: Check) -> None:
    store = make_store()
    assert isinstance(store, FeatureStore)
    check(store)


# ---------------------------------------------------------------- hypothesis: any append sequence


@st.composite
def append_sequences(draw: st.DrawFn) -> tuple[int, list[list[Event]]]:
    """(max_history, batches): batches drawn from a pool of events with distinct keys, so repeats are
    exact duplicates; few items and timestamps, so ties and duplicates are common."""
    pool = draw(
        st.lists(
            st.builds(
                Event,
                item_id=st.sampled_from(["a", "b", "c"]),
                timestamp=st.integers(0, 4).map(float),
                event=st.sampled_from(["click", "buy"]),
                event_id=st.sampled_from(["", "", "x", "y"]),
            ),
            min_size=1,
            max_size=10,
            unique_by=lambda e: e.key(),
        )
    )
    batches = draw(st.lists(st.lists(st.sampled_from(pool), max_size=6), max_size=6))
    return draw(st.integers(1, 4)), batches


def reference(max_history: int, batches: list[list[Event]]) -> tuple[tuple[Event, ...], int]:
    """The simplest statement of the semantics: (history, version) after appending `batches`. Keeps
    every distinct key ever seen (a store forgets trimmed keys, but a trimmed event never comes back)."""
    seen: dict[str, Event] = {}
    history: tuple[Event, ...] = ()
    version = 0
    for batch in batches:
        for e in batch:
            seen.setdefault(e.key(), e)
        new = tuple(sorted(seen.values(), key=order_key)[-max_history:])
        if new != history:
            history, version = new, version + 1
    return history, version


def check_append_sequence(store: Any, batches: list[list[Event]]) -> None:
    state = UserState()
    for batch in batches:
        state = store.append_events("u", batch)
    history, version = reference(store.max_history, batches)
    assert state == store.get_user("u")
    assert state.history == history
    assert state.version == version
    times = [e.timestamp for e in state.history]
    assert times == sorted(times)
    assert len({e.key() for e in state.history}) == len(state.history) <= store.max_history


@given(append_sequences())
def test_append_property_memory(case: tuple[int, list[list[Event]]]) -> None:
    max_history, batches = case
    check_append_sequence(MemoryStore(max_history), batches)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=append_sequences())
def test_append_property_redis(redis_proc: Any, case: tuple[int, list[list[Event]]]) -> None:
    max_history, batches = case
    store = RedisStore(_url(redis_proc), max_history, prefix=f"h{uuid.uuid4().hex[:8]}:")
    try:
        check_append_sequence(store, batches)
    finally:
        store.close()


# ---------------------------------------------------------------- Redis specifics


def test_events_stream(redis_proc: Any, redisdb: redis.Redis) -> None:
    store = RedisStore(_url(redis_proc), prefix="s:")
    store.append_events("u1", [Event("a", 1.5, "buy", "e1"), Event("b", 2.0)])
    store.append_events("u1", [Event("a", 1.5, "buy", "e1")])  # duplicate: not streamed again
    store.put_users({"u2": [Event("c", 3.0)]}, {})  # bulk load: not streamed
    entries = redisdb.xrange("s:events")
    fields = [{k.decode(): v.decode() for k, v in f.items()} for _, f in entries]
    assert fields == [
        {"user_id": "u1", "item_id": "a", "timestamp": "1.5", "event": "buy", "event_id": "e1"},
        {"user_id": "u1", "item_id": "b", "timestamp": "2.0", "event": "click", "event_id": "b|2.0|click"},
    ]
    store.close()


def test_cluster_events_stream(redis_cluster_url: str) -> None:
    store = RedisStore(redis_cluster_url, prefix=f"c{uuid.uuid4().hex[:8]}:")
    store.append_events("u1", [Event("a", 1.0), Event("a", 1.0)])
    entries = store.client().xrange(store.stream_key)
    assert [f["item_id"] for _, f in entries] == ["a"]  # type: ignore[index]
    store.close()


def test_unreachable_redis_raises_unavailable_without_password() -> None:
    url = f"redis://:s3cret@127.0.0.1:{_free_port()}/0"
    store = open_store(url, socket_connect_timeout=0.5)  # constructing does not connect
    for call in (lambda: store.get_user("u"), lambda: store.append_events("u", [Event("a", 1.0)])):
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            call()
        assert time.monotonic() - started < 3
        assert "s3cret" not in str(info.value) and "***" in str(info.value)
    assert "s3cret" not in repr(store)
    cluster = open_store(url.replace("redis://", "redis+cluster://"), socket_connect_timeout=0.5)
    with pytest.raises(Unavailable) as info:
        cluster.get_user("u")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://alice:s3cret@host:6380/1", "rediss://alice:***@host:6380/1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix:///run/redis.sock?db=0&password=s3cret", "unix:///run/redis.sock?db=0&password=***"),
        ("memory://", "memory://"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_open_store_schemes() -> None:
    assert isinstance(open_store("memory://", max_history=7), MemoryStore)
    assert open_store("memory://").max_history == 200
    assert isinstance(open_store("redis://localhost:1/0"), RedisStore)
    assert isinstance(open_store("redis+cluster://localhost:1"), RedisStore)  # lazy: no connection yet
    with pytest.raises(InvalidArgument, match=r"bogus.*memory://.*redis\+cluster://"):
        open_store("bogus://x")
    with pytest.raises(InvalidArgument) as info:
        open_store("bogus://u:s3cret@x")
    assert "s3cret" not in str(info.value)
    with pytest.raises(InvalidArgument) as info:
        open_store("redis://:s3cret@host:notaport/0")
    assert "s3cret" not in str(info.value)
    with pytest.raises(InvalidArgument):
        open_store("memory://", max_history=0)


def test_non_finite_timestamp_rejected() -> None:
    with pytest.raises(InvalidArgument, match="not finite"):
        MemoryStore().append_events("u", [Event("a", float("nan"))])
