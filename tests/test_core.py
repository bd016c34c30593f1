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
from recsys.recommender import DEFAULT_RETRIEVAL_DEPTH, Recommender, blend_order
from training.dataset import leave_one_out
from training.evaluate import choose_serving, served_metrics, user_states
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


def test_the_export_serves_at_the_depth_and_blend_that_scored_best_on_validation(trained, tmp_path: Path) -> None:
    serving = json.loads((trained.artifact / "manifest.json").read_text())["serving"]
    grid = {float(w): {int(d): m for d, m in by_depth.items()} for w, by_depth in serving["grid"].items()}
    cfg = TrainConfig()
    assert sorted(grid) == sorted(cfg.serve_blends) and all(sorted(t) == list(cfg.serve_depths) for t in grid.values())
    best = max(m["ndcg@10"] for t in grid.values() for m in t.values())
    tied = [(d, w) for w, t in grid.items() for d, m in t.items() if m["ndcg@10"] == best]
    assert (serving["retrieval_depth"], serving["retrieval_blend"]) == min(tied)  # ties: smaller depth, then weight
    assert serving["validation"] == {str(d): m for d, m in grid[serving["retrieval_blend"]].items()}
    # the grid is the served pipeline's own on the validation clicks (all of them on this small log): every
    # cell equals what recommend_batch serves at that depth and weight, one pass through it per cell
    valid = leave_one_out(trained.data).valid
    for w in (0.0, 1.0, 4.0):
        rec = Recommender.load(trained.artifact, retrieval_blend=w)
        for d in (10, 50, 200):
            assert served_metrics(rec, trained.data, valid, depth=d) == pytest.approx(grid[w][d], abs=1e-12), (w, d)
    depth, blend, again = choose_serving(
        Recommender.load(trained.artifact), trained.data, valid, cfg.serve_depths, cfg.serve_blends
    )
    assert (depth, blend) == (serving["retrieval_depth"], serving["retrieval_blend"]) and again == grid
    # the recommender serves at them unless told otherwise; an artifact without the entry keeps 200 and 0
    rec = Recommender.load(trained.artifact)
    assert (rec.retrieval_depth, rec.retrieval_blend) == (depth, blend)
    assert Recommender.load(trained.artifact, retrieval_depth=50).retrieval_depth == 50
    old = tmp_path / trained.artifact.name
    shutil.copytree(trained.artifact, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["serving"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert (Recommender.load(old).retrieval_depth, Recommender.load(old).retrieval_blend) == (
        DEFAULT_RETRIEVAL_DEPTH,
        0,
    )
    with pytest.raises(InvalidArgument, match="retrieval_blend"):
        Recommender.load(old, retrieval_blend=-1.0)


def test_a_refit_exports_the_model_trained_on_validation_and_serves_as_the_selected_one_chose(
    demo_log, tmp_path: Path
) -> None:
    """`train.refit`: the exported version is the second fit (the selected epoch count, on the training
    and validation clicks, from the same initial weights); the depth, blend and validation metrics in
    its manifest are the selected model's, which alone was validated; the registry holds one version."""
    from recsys.data import load_log
    from training.pipeline import train_and_export

    clog = load_log(demo_log["clicks"], demo_log["items"], demo_log["users"])
    overrides = ["train.epochs=2", "train.progress=false", "train.seed=0", "train.refit=true"]
    report = train_and_export(clog, tmp_path / "artifacts", overrides, run_dir=tmp_path / "run")
    assert report is not None and report.selection is not None and report.selected is not None
    assert report.selected_model is not None
    manifest = json.loads((report.artifact / "manifest.json").read_text())
    chosen = json.loads((report.selected / "manifest.json").read_text())
    split = leave_one_out(report.data)
    assert manifest["refit"]["epochs"] == report.selection.best_epoch == len(report.fit.history)
    assert manifest["serving"] == chosen["serving"] and manifest["metrics"] == chosen["metrics"]
    assert manifest["metrics"]["valid_ndcg@10"] == report.selection.best_metrics["ndcg@10"]
    assert manifest["data"]["train_examples"] == len(split.train) + len(split.valid)
    assert chosen["data"]["train_examples"] == len(split.train)
    assert [p.name for p in (tmp_path / "artifacts").iterdir() if p.is_dir()] == [report.artifact.name]
    assert (tmp_path / "artifacts" / artifact.LATEST).read_text().strip() == report.artifact.name
    rec = Recommender.load(report.artifact)
    assert (rec.retrieval_depth, rec.retrieval_blend) == (
        chosen["serving"]["retrieval_depth"],
        chosen["serving"]["retrieval_blend"],
    )
    refit, selected = report.model.state_dict(), report.selected_model.state_dict()
    assert any(not torch.equal(refit[k], selected[k]) for k in refit if refit[k].is_floating_point())
    torch.testing.assert_close(rec.model.state_dict()["items.ids.weight"], refit["items.ids.weight"])


def test_the_blend_orders_by_ranker_and_retrieval_together_and_keeps_scores_probabilities(trained) -> None:
    rec = Recommender.load(trained.artifact)
    valid = leave_one_out(trained.data).valid.subset(np.arange(40))
    states = user_states(trained.data, valid, 200)
    found = rec.candidates(states, 60, valid.time.astype(np.float64))
    assert found.retrieval is not None and found.items.shape == found.logits.shape == found.retrieval.shape
    real = found.items >= 2
    # the retrieval scores are the inner products FAISS ranked by, less the user's best over the catalogue
    # (seen items included): each row in retrieval's order, and equal to the reference retriever's
    exact = ExactRetriever(rec.artifact.item_vectors)
    for b, state in enumerate(states):
        row = found.items[b][real[b]]
        assert np.all(np.diff(found.retrieval[b][real[b]]) <= 1e-6)
        user = rec.model.encode_user(rec.featurizer.encode_states([state], float(valid.time[b])))
        scores, idx = exact.search(user.detach().numpy(), rec.n_items)
        by_item = dict(zip(idx.tolist()[0], (scores[0] - scores[0].max()).tolist(), strict=True))
        np.testing.assert_allclose(found.retrieval[b][real[b]], [by_item[i] for i in row.tolist()], atol=1e-4)
        assert not set(row.tolist()) & {rec.featurizer.items.lookup([e.item_id])[0] for e in state.history}
    ranker_p = torch.sigmoid(torch.from_numpy(found.logits)).numpy()
    # w = 0: the ranker's order exactly; a large w: retrieval's, but where the ranker disagrees by more than
    # w times retrieval's log-probability gap
    spread = float(found.logits[real].max() - found.logits[real].min())
    for w, follows, slack in ((0.0, found.logits, 0.0), (20.0, found.retrieval, spread / 20.0)):
        for b, (idx, _) in enumerate(blend_order(found, w, 10)):
            key = dict(zip(found.items[b].tolist(), follows[b].tolist(), strict=True))
            assert np.all(np.diff([key[i] for i in idx.tolist()]) <= slack + 1e-5), (w, b)
    for b, (idx, scores) in enumerate(blend_order(found, 1.0, 10)):
        p = dict(zip(found.items[b].tolist(), ranker_p[b].tolist(), strict=True))
        assert np.all(np.diff(scores) <= 0) and np.all((scores > 0) & (scores < 1))
        excess = max(s - p[i] for i, s in zip(idx.tolist(), scores.tolist(), strict=True))
        assert excess <= 1e-5, excess  # r - r_max <= 0 (up to FAISS against torch rounding)
    # what recommend_batch serves is blend_order of these candidates at the recommender's depth and weight
    for w in (0.0, 1.0):
        served = Recommender.load(trained.artifact, retrieval_depth=60, retrieval_blend=w)
        answers = served.recommend_batch(states, 10, now=valid.time.astype(np.float64))
        for answer, (idx, scores) in zip(answers, blend_order(found, w, 10), strict=True):
            assert [x.item_id for x in answer.items] == rec.featurizer.items.decode(idx)
            np.testing.assert_allclose([x.score for x in answer.items], scores, rtol=1e-5)


@pytest.mark.parametrize("depths", ["[5]", "[10,5000]"])
def test_serve_depths_outside_10_to_2000_are_refused_naming_the_fix(depths: str) -> None:
    with pytest.raises(InvalidArgument, match=r"train\.serve_depths=.*out of range; fix: depths between 10"):
        apply_overrides(TrainConfig(), [f"train.serve_depths={depths}"], "train")
    assert apply_overrides(TrainConfig(), ["train.serve_depths=[]"], "train").serve_depths == ()


@pytest.mark.parametrize("blends", ["[0,-1]", "[1e400]"])
def test_serve_blends_that_are_negative_or_infinite_are_refused_naming_the_fix(blends: str) -> None:
    with pytest.raises(InvalidArgument, match=r"train\.serve_blends=.* is not a weight; fix: finite weights >= 0"):
        apply_overrides(TrainConfig(), [f"train.serve_blends={blends}"], "train")
    assert apply_overrides(TrainConfig(), ["train.serve_blends=[0,1.5]"], "train").serve_blends == (0.0, 1.5)


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
