"""`python -m training export-events`: the live-event stream in a real Redis -> a Parquet click log
that the training loader accepts, exactly once per event, incrementally, and atomically."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from recsys.data import load_log
from recsys.features import Event
from recsys.store import RedisStore
from tests.conftest import ROOT


def _export(url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", "export-events", "--redis", url, "--out", str(out), "--quiet", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_export_events_writes_every_accepted_event_once(redis_proc, redisdb, tmp_path: Path) -> None:
    url = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    redisdb.flushdb()  # the redis-server is per session: other tests' events are in its stream
    store = RedisStore(url, max_history=3)  # a short history: the stream still keeps every event
    store.append_events("u1", [Event("a", 100.0, "click", "e1"), Event("b", 50.0, "cart", "e2")])
    store.append_events("u1", [Event("a", 100.0, "click", "e1")])  # a retry: deduplicated, not streamed
    store.append_events("u2", [Event(f"i{n}", 200.0 + n) for n in range(5)])
    # at-least-once delivery: the same event appended to the stream twice must be exported once
    store.client().xadd(
        store.stream_key, {"user_id": "u1", "item_id": "b", "timestamp": "50.0", "event": "cart", "event_id": "e2"}
    )

    out = tmp_path / "events" / "batch1.parquet"
    done = _export(url, out)
    assert done.returncode == 0, done.stderr
    assert "exported 7 events (1 duplicates dropped)" in done.stdout
    frame = pd.read_parquet(out)
    assert len(frame) == 7 and not frame.duplicated(["user_id", "event_id"]).any()
    assert set(frame[frame.user_id == "u1"].item_id) == {"a", "b"}
    assert frame[frame.user_id == "u2"].item_id.tolist() == [f"i{n}" for n in range(5)]
    clog = load_log(out)  # the training loader takes the file as it is
    assert len(clog.events) == 7 and set(clog.events.event) == {"click", "cart"}
    last = pq.read_schema(out).metadata[b"recsys.last_stream_id"].decode()
    assert last and last in done.stdout
    assert not list(tmp_path.glob("events/.*.tmp")), "no temporary file left behind"

    # incremental: only what arrived after the last export; --trim removes exported entries
    store.append_events("u3", [Event("z", 300.0)])
    again = _export(url, tmp_path / "batch2.parquet", "--after", last, "--trim")
    assert again.returncode == 0, again.stderr
    assert pd.read_parquet(tmp_path / "batch2.parquet").item_id.tolist() == ["z"]
    assert store.read_events() == [], "--trim deletes what was exported"
    store.close()


def test_export_events_rejects_a_non_redis_url(tmp_path: Path) -> None:
    done = _export("memory://", tmp_path / "x.parquet")
    assert done.returncode != 0 and "--redis" in done.stderr and "fix" in done.stderr
    assert "Traceback" not in done.stderr
