"""The command lines: bad input exits non-zero with one line naming the problem and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def bad_log(tmp_path: Path) -> Path:
    path = tmp_path / "clicks.csv"
    pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": [1, -3]}).to_csv(path, index=False)
    return path


def test_fit_with_a_missing_log(tmp_path: Path) -> None:
    proc = run("training", "fit", "--log", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "a"))
    assert proc.returncode == 2
    assert "file not found" in one_error_line(proc)


def test_synth_with_too_few_items_for_its_categories(tmp_path: Path) -> None:
    proc = run("training", "synth", "--out", str(tmp_path / "d"), "--users", "60", "--items", "40")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "--items 40" in line and "n_items too small" in line and "fix:" in line
    assert not (tmp_path / "d").exists(), "nothing written"


def test_fit_with_a_bad_timestamp(bad_log: Path, tmp_path: Path) -> None:
    proc = run("training", "fit", "--log", str(bad_log), "--out", str(tmp_path / "a"))
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "column 'timestamp', row 2" in line and "fix:" in line


def test_fit_with_an_unknown_config_key(tmp_path: Path, demo_log) -> None:
    proc = run(
        "training", "fit", "--log", str(demo_log["clicks"]), "--out", str(tmp_path / "a"), "--set", "model.depth=3"
    )
    assert proc.returncode == 2
    assert "unknown key 'depth'" in one_error_line(proc)


@pytest.mark.parametrize(
    ("override", "words"),
    [("model.retrieval_towers=0", "retrieval_towers=0 must be >= 1"), ("model.retrieval_heads=3", "retrieval_heads=3")],
)
def test_fit_with_a_model_config_its_own_checks_refuse(tmp_path: Path, demo_log, override: str, words: str) -> None:
    proc = run("training", "fit", "--log", str(demo_log["clicks"]), "--out", str(tmp_path / "a"), "--set", override)
    assert proc.returncode == 2
    assert words in one_error_line(proc)
    assert not (tmp_path / "a").exists(), "fails before anything is written"


def test_retrain_with_refit_is_refused_not_ignored(tmp_path: Path, trained, demo_log) -> None:
    """train.refit belongs to `fit`; retrain (whose gate holds its own holdout out) refuses it by name."""
    proc = run(
        "training",
        "retrain",
        "--from",
        str(trained.artifact),
        "--log",
        str(demo_log["clicks"]),
        "--out",
        str(tmp_path / "a"),
        "--set",
        "train.refit=true",
    )
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "train.refit=true" in line and "fix:" in line
    assert not (tmp_path / "a").exists(), "nothing written"


def test_fit_with_a_malformed_device(tmp_path: Path, demo_log) -> None:
    proc = run(
        "training", "fit", "--log", str(demo_log["clicks"]), "--out", str(tmp_path / "a"), "--set", "train.device=gpu"
    )
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "train.device='gpu'" in line and "fix: cpu, cuda, cuda:N or auto" in line
    assert not (tmp_path / "a").exists(), "fails before anything is written"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_fit_on_cuda_without_a_gpu(tmp_path: Path, demo_log) -> None:
    proc = run(
        "training", "fit", "--log", str(demo_log["clicks"]), "--out", str(tmp_path / "a"), "--set", "train.device=cuda"
    )
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "train.device='cuda'" in line and "no CUDA device" in line and "fix: --set train.device=cpu" in line


def test_serving_with_no_artifact(tmp_path: Path) -> None:
    proc = run("serving", "--artifact", str(tmp_path), "--port", "0")
    assert proc.returncode == 4
    assert "no manifest.json and no LATEST" in one_error_line(proc)


def test_serving_with_an_unknown_store(trained) -> None:
    proc = run("serving", "--artifact", str(trained.artifact), "--features", "mongo://x", "--port", "0")
    assert proc.returncode == 2
    assert "mongo" in one_error_line(proc)


def test_fit_can_drop_the_log_before_training(demo_log) -> None:
    """`training fit` drops its ClickLog after `prepare` (0.24 GiB less peak memory at 20M events):
    nothing `prepare` returns may keep the log's frames alive."""
    import gc
    import weakref

    from recsys.data import load_log
    from training.pipeline import prepare

    clog = load_log(demo_log["clicks"], demo_log["items"], demo_log["users"])
    summary = clog.summary()
    frames = [weakref.ref(f) for f in (clog.events, clog.items, clog.users) if f is not None]
    prep = prepare(clog, ["train.progress=false"])
    del clog
    gc.collect()
    assert [f() is None for f in frames] == [True] * len(frames)
    assert prep.summary == summary
    assert len(prep.split.train) > 0 and len(prep.data.items) == summary["positives"]


def test_fit_checks_recall_with_as_many_queries_as_configured(tmp_path: Path) -> None:
    """`--set index.recall_queries=N` reaches the export: the build-time recall@100 check runs on N
    validation users' vectors, even above the default 500 (until 2026-12-07 at most 500 were passed)."""
    import json

    from recsys.data import load_log
    from training import synth
    from training.pipeline import train_and_export

    paths = synth.write(synth.SynthConfig(n_users=700, n_items=120, n_categories=6, seed=1), tmp_path, "parquet")
    clog = load_log(paths["clicks"], paths["items"])
    overrides = ["train.epochs=1", "train.progress=false", "index.kind=hnsw", "index.recall_queries=650"]
    report = train_and_export(clog, tmp_path / "artifacts", overrides, run_dir=tmp_path / "run")
    assert report is not None
    index = json.loads((report.artifact / "manifest.json").read_text())["index"]
    assert index["kind"].startswith("IndexHNSW") and index["recall_queries"] == "650 user vectors", index
