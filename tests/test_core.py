"""The shared core: time buckets, FAISS against its brute-force reference, the artifact format, and
online/offline feature parity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys import artifact
from recsys.batch import time_bucket
from recsys.config import apply_overrides
from recsys.errors import ArtifactError, InvalidArgument
from recsys.features import Event, UserState
from recsys.index import ExactRetriever, FaissRetriever, IndexConfig, recall_at
from recsys.recommender import DEFAULT_RETRIEVAL_DEPTH, Recommender
from training.dataset import leave_one_out
from training.evaluate import choose_depth
from training.trainer import TrainConfig


def test_time_buckets_are_monotone_and_bounded() -> None:
    gaps = np.array([0, 1, 59, 60, 3600, 86_400, 31_536_000, 10**12])
    b = time_bucket(gaps, 64)
    assert list(b) == sorted(b) and b.min() == 2 and b.max() == 63
    assert time_bucket(np.array([-5]), 64)[0] == 2  # clock skew never reaches padding or target slots


@pytest.mark.parametrize("seed", range(3))
def test_faiss_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(8, 16)).astype(np.float32)
    s1, i1 = ExactRetriever(vectors).search(queries, 20)
    s2, i2 = FaissRetriever.build(vectors).search(queries, 20)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-5)
    assert i1.min() >= 2  # padding and unknown rows are never returned
    s3, i3 = FaissRetriever.build(vectors[:5]).search(queries, 10)  # fewer items than k
    assert (i3[:, 3:] == -1).all() and np.isneginf(s3[:, 3:]).all()


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_measure_their_recall_against_exact_search(kind: str, tmp_path) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, 32))
    vectors = (centers[rng.integers(0, 50, 6000)] + 0.3 * rng.normal(size=(6000, 32))).astype(np.float32)
    queries = rng.normal(size=(200, 32)).astype(np.float32)
    built = FaissRetriever.build(vectors, IndexConfig(kind=kind, ivf_nprobe=16), queries)
    assert built.info["kind"] == {"hnsw": "IndexHNSWFlat", "ivf": "IndexIVFFlat"}[kind]
    measured = recall_at(built, ExactRetriever(vectors), queries, 100)
    assert built.info["recall@100"] == pytest.approx(measured, abs=1e-4)
    assert 0.8 <= measured <= 1.0, built.info  # random queries off the data: a hard case; see bench.retrieval
    _, found = built.search(queries, 100)
    assert found.min() >= 2  # padding and unknown rows are never indexed
    built.save(tmp_path / "index.faiss")  # search parameters survive the round trip
    again = FaissRetriever.load(tmp_path / "index.faiss", len(vectors))
    np.testing.assert_array_equal(again.search(queries, 100)[1], found)


def test_auto_index_is_exact_for_small_catalogues_and_ivf_above_the_threshold() -> None:
    vectors = np.random.default_rng(1).normal(size=(300, 8)).astype(np.float32)
    assert FaissRetriever.build(vectors).info == {
        **FaissRetriever.build(vectors).info,
        "kind": "IndexFlatIP",
        "recall@100": 1.0,
    }
    assert FaissRetriever.build(vectors, IndexConfig(exact_below=200)).info["kind"] == "IndexIVFFlat"


def test_artifact_round_trip_and_latest_pointer(trained) -> None:
    root = trained.artifact.parent
    assert (root / "LATEST").read_text().strip() == trained.artifact.name
    manifest = json.loads((trained.artifact / "manifest.json").read_text())
    assert manifest["format_version"] == artifact.FORMAT_VERSION
    assert set(manifest["files"]) == set(artifact.FILES)
    assert {"valid_ndcg@10", "valid_auc"} <= set(manifest["metrics"])
    assert manifest["model_config"]["n_items"] == 202 and manifest["data"]["users"] == 400
    art = artifact.load(root)  # through LATEST
    assert art.version == trained.artifact.name
    for (name, a), b in zip(art.model.state_dict().items(), trained.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # no pickle anywhere: every file is JSON, safetensors, parquet or FAISS's own format
    assert all(not p.name.endswith((".pt", ".pkl", ".pickle")) for p in trained.artifact.iterdir())


def test_the_export_serves_at_the_depth_that_scored_best_on_validation(trained, tmp_path: Path) -> None:
    serving = json.loads((trained.artifact / "manifest.json").read_text())["serving"]
    table = {int(d): m for d, m in serving["validation"].items()}
    assert sorted(table) == list(TrainConfig().serve_depths)
    best = max(table.values(), key=lambda m: m["ndcg@10"])["ndcg@10"]
    assert serving["retrieval_depth"] == min(d for d, m in table.items() if m["ndcg@10"] == best)  # ties: smaller
    # the table is the served pipeline's own on the validation clicks (all of them on this small log)
    valid = leave_one_out(trained.data).valid
    depth, again = choose_depth(Recommender.load(trained.artifact), trained.data, valid, TrainConfig().serve_depths)
    assert depth == serving["retrieval_depth"] and again == table
    # the recommender serves at it unless told otherwise; an artifact without the entry keeps 200
    assert Recommender.load(trained.artifact).retrieval_depth == depth
    assert Recommender.load(trained.artifact, retrieval_depth=50).retrieval_depth == 50
    old = tmp_path / trained.artifact.name
    shutil.copytree(trained.artifact, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["serving"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert Recommender.load(old).retrieval_depth == DEFAULT_RETRIEVAL_DEPTH


@pytest.mark.parametrize("depths", ["[5]", "[10,5000]"])
def test_serve_depths_outside_10_to_2000_are_refused_naming_the_fix(depths: str) -> None:
    with pytest.raises(InvalidArgument, match=r"train\.serve_depths=.*out of range; fix: depths between 10"):
        apply_overrides(TrainConfig(), [f"train.serve_depths={depths}"], "train")
    assert apply_overrides(TrainConfig(), ["train.serve_depths=[]"], "train").serve_depths == ()


def test_missing_file_and_dangling_latest_are_refused(trained, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(trained.artifact, root / trained.artifact.name)
    (root / trained.artifact.name / "index.faiss").unlink()
    (root / "LATEST").write_text(trained.artifact.name)
    with pytest.raises(ArtifactError, match="index.faiss: missing"):
        artifact.load(root)
    (root / "LATEST").write_text("v-does-not-exist")
    with pytest.raises(ArtifactError, match="has no manifest"):
        artifact.load(root)
    with pytest.raises(ArtifactError, match="no manifest.json and no LATEST"):
        artifact.load(tmp_path)


def test_served_features_equal_training_features(trained) -> None:
    """The server encodes a history from raw store events exactly as training did from the log."""
    data = trained.data
    rec = Recommender.load(trained.artifact)
    users = np.arange(0, 400, 37)
    ends = data.stop[users] - 1  # history = all but the last positive, target = the last
    tokens = data.featurizer.items.tokens
    ev = data.featurizer.events.tokens
    for u, e in zip(users, ends, strict=True):
        lo = data.start[u]
        events = tuple(
            Event(tokens[i], float(t), ev[k])
            for i, t, k in zip(data.items[lo:e], data.times[lo:e], data.events[lo:e], strict=True)
        )
        state = UserState(events, data.profiles.get(str(data.user_ids[u]), {}))
        online = rec.featurizer.encode_states([state], float(data.times[e]))
        offline = data.batch(data.positives(np.array([e])))
        T = min(online.items.shape[1], offline["items"].shape[1])
        for name, tensor in online._asdict().items():
            want = offline[name]
            if tensor.dim() == 2 and name in ("items", "positions", "events"):
                tensor, want = tensor[:, -T:], want[:, -T:]
            torch.testing.assert_close(tensor, want, rtol=0, atol=0, msg=name)
