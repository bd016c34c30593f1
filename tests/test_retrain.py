"""`python -m training retrain`: vocabulary growth that keeps old indices and old scores, the gate
(promote when not worse, refuse a worse candidate), crash safety, on the session's trained artifact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
import torch

from recsys import artifact
from recsys.batch import Featurizer
from recsys.data import load_log
from recsys.errors import InvalidArgument
from recsys.features import UserState
from recsys.recommender import Recommender
from serving.client import RecommenderClient
from tests.conftest import ROOT
from training.retrain import REFUSED_EXIT, GateConfig, grow

DAY = 86_400
N_NEW = 15  # catalogue items cloned under new ids in the new batch


def new_batch(demo_log: dict[str, Path], out: Path, n_new: int = N_NEW, shuffle: bool = False) -> dict[str, Path]:
    """The demo log a month later, with the `n_new` most clicked items replaced by new ids that keep
    their features (the next version must learn them, the live one cannot know them). `shuffle`: the
    item ids of every row older than the gate's holdout are permuted, so a candidate trains on noise
    while the holdout stays real."""
    clicks = pd.read_parquet(demo_log["clicks"])
    items = pd.read_parquet(demo_log["items"])
    popular = clicks["item_id"].value_counts().index[:n_new]
    rename = {old: f"new-{old}" for old in popular}
    clicks = clicks.assign(item_id=clicks["item_id"].replace(rename), timestamp=clicks["timestamp"] + 30 * DAY)
    if shuffle:
        cutoff = np.quantile(clicks.loc[clicks["label"] == 1, "timestamp"], 1 - GateConfig.holdout, method="higher")
        old = clicks["timestamp"] < cutoff
        rng = np.random.default_rng(0)
        clicks.loc[old, "item_id"] = rng.permutation(clicks.loc[old, "item_id"].to_numpy())
    new_items = items[items["item_id"].isin(popular)].assign(item_id=lambda f: f["item_id"].map(rename))
    out.mkdir(parents=True, exist_ok=True)
    paths = {"clicks": out / "clicks.parquet", "items": out / "items.parquet"}
    clicks.to_parquet(paths["clicks"], index=False)
    pd.concat([items, new_items], ignore_index=True).to_parquet(paths["items"], index=False)
    return paths


def run_retrain(base: Path, batch: dict[str, Path], root: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "training",
            "retrain",
            "--from",
            str(base),
            "--log",
            str(batch["clicks"]),
            "--items",
            str(batch["items"]),
            "--out",
            str(root),
            "--set",
            "train.epochs=2",
            "--set",
            "train.progress=false",
            *extra,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def latest(root: Path) -> str:
    return (root / artifact.LATEST).read_text().strip()


def live_root(trained, tmp_path: Path) -> Path:
    """An artifact root whose LATEST is a copy of the session's trained version."""
    import shutil

    root = tmp_path / "artifacts"
    root.mkdir()
    shutil.copytree(trained.artifact, root / trained.artifact.name)
    artifact.set_latest(root, trained.artifact.name)
    return root


def test_grown_vocabulary_keeps_old_indices_and_a_frozen_model_scores_old_items_the_same(
    trained, demo_log, tmp_path: Path
) -> None:
    base = artifact.load(trained.artifact)
    batch = new_batch(demo_log, tmp_path / "batch")
    clog = load_log(batch["clicks"], batch["items"])
    old = base.featurizer
    feats = Featurizer.build(clog, old.window_len, old.n_positions, base=old)
    assert feats.items.tokens[: len(old.items)] == old.items.tokens
    assert len(feats.items) == len(old.items) + N_NEW
    for j, table in enumerate(old.side_tables):
        np.testing.assert_array_equal(feats.side_tables[j][: len(table)], table)
    model = grow(base.model, feats).eval()
    _, events, profile = next(iter(Recommender(base).seed()))
    state = UserState(history=tuple(events), profile=profile)
    now = events[-1].timestamp + 60.0
    cands = torch.arange(2, len(old.items)).unsqueeze(0)  # every old item
    with torch.no_grad():
        before = base.model.score(old.encode_states([state], now), cands)
        after = model.score(feats.encode_states([state], now), cands)
        np.testing.assert_allclose(after.numpy(), before.numpy(), atol=1e-6)
        user_before = base.model.encode_user(old.encode_states([state], now))
        np.testing.assert_allclose(model.encode_user(feats.encode_states([state], now)), user_before, atol=1e-6)
    bad = clog.items.assign(extra=[("x",)] * len(clog.items))  # type: ignore[union-attr]
    with pytest.raises(InvalidArgument, match="columns"):
        Featurizer.build(type(clog)(clog.events, bad, None, True), old.window_len, old.n_positions, base=old)


@pytest.mark.slow
def test_the_daily_loop_learns_new_items_and_the_running_server_picks_the_promoted_version_up(
    trained, demo_log, redis_proc, server_factory, tmp_path: Path
) -> None:
    """The README's loop against a real Redis and a running server: a month of clicks (with new items)
    arrives through RecordEvents, export-events writes it to a date partition, retrain warm-starts from
    the live version, the gate promotes it, the server hot-swaps to it, and it recommends the new items
    while every old item keeps its index."""
    root = live_root(trained, tmp_path)
    url = f"redis://{redis_proc.host}:{redis_proc.port}/6"  # a database of its own: its stream is exported
    redis.Redis(host=redis_proc.host, port=redis_proc.port, db=6).flushdb()
    server = server_factory(root, url)
    batch = new_batch(demo_log, tmp_path / "batch")
    clicks = pd.read_parquet(batch["clicks"])
    clicks = clicks[clicks["label"] == 1]
    with RecommenderClient(server.target) as client:
        for user, rows in clicks.groupby("user_id"):
            events = list(zip(rows["item_id"], rows["timestamp"].astype(float), rows["event"], strict=True))
            for lo in range(0, len(events), 1000):
                client.record(str(user), events[lo : lo + 1000])
        day = tmp_path / "events" / "date=2024-03-01"
        day.mkdir(parents=True)
        export = subprocess.run(
            [sys.executable, "-m", "training", "export-events", "--redis", url, "--trim", "--quiet"]
            + ["--out", str(day / "events.parquet")],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert export.returncode == 0, export.stderr[-2000:]
        proc = run_retrain(root, {"clicks": day, "items": batch["items"]}, root)
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-2000:]
        version = latest(root)
        assert version != trained.artifact.name and version in out
        deadline = time.monotonic() + 30  # the server polls LATEST every 5 s
        while client.info().model_version != version and time.monotonic() < deadline:
            time.sleep(0.5)
        assert client.info().model_version == version
        assert client.recommend(str(clicks["user_id"].iloc[0]), k=5).model_version == version
    manifest = json.loads((root / version / "manifest.json").read_text())
    gate = manifest["gate"]
    assert gate["promoted"] and gate["against"] == trained.artifact.name
    assert gate["candidate"]["ndcg@10"] >= gate["live"]["ndcg@10"]
    assert manifest["retrain"]["from"] == trained.artifact.name
    # the candidate was gated at the serving depth it chose on its own validation clicks
    assert manifest["serving"]["retrieval_depth"] == Recommender.load(root / version).retrieval_depth
    rec = Recommender.load(root)
    old = artifact.load(trained.artifact).featurizer.items.tokens
    assert rec.featurizer.items.tokens[: len(old)] == old
    # the new version recommends the new items: users of the batch get them in their top 10
    got = set()
    for _, events, profile in list(rec.seed())[:100]:
        answer = rec.recommend(UserState(history=tuple(events[:-1]), profile=profile), 10, now=events[-1].timestamp)
        got |= {it.item_id for it in answer.items if it.item_id.startswith("new-")}
    assert len(got) >= 3, got
    assert not list((root / ".staging" / "versions").glob("v*")), "nothing left in staging"


@pytest.mark.slow
def test_a_worse_candidate_is_refused_and_a_killed_retrain_changes_nothing(trained, demo_log, tmp_path: Path) -> None:
    root = live_root(trained, tmp_path)
    batch = new_batch(demo_log, tmp_path / "batch", n_new=0, shuffle=True)
    before = sorted(p.name for p in root.iterdir())
    # killed mid-run (once it has finished an epoch): the registry is as it was
    proc = run_retrain(root, batch, root, "--window", "0")
    deadline = time.monotonic() + 300
    while not (root / ".staging" / "run" / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert sorted(p.name for p in root.iterdir()) == sorted([*before, ".staging"])
    assert latest(root) == trained.artifact.name
    # the batch alone (--window 0), its older rows shuffled: a candidate trained on noise is refused
    proc = run_retrain(root, batch, root, "--window", "0")
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == REFUSED_EXIT, (out, err[-2000:])
    assert latest(root) == trained.artifact.name
    refused = [p for p in root.iterdir() if p.name.startswith("v") and p.name != trained.artifact.name]
    assert len(refused) == 1
    gate = json.loads((refused[0] / "manifest.json").read_text())["gate"]
    assert not gate["promoted"] and "refused" in gate["reason"]
    assert gate["candidate"]["ndcg@10"] < gate["live"]["ndcg@10"]
