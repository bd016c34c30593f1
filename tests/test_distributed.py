"""Data-parallel training through torchrun: two processes on this machine (gloo) reach the validation
quality of one process on the same log and config, and rank 0 alone writes the run and the artifact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY_TRAIN

TOLERANCE = 0.03  # absolute, on validation NDCG@10 and AUC (the demo log: about 0.17 and 0.87)


@pytest.mark.slow
def test_two_processes_match_one(trained, demo_log: dict[str, Path], tmp_path: Path) -> None:
    out, run_dir = tmp_path / "artifacts", tmp_path / "run"
    sets = [arg for kv in TINY_TRAIN for arg in ("--set", kv)]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "--",  # else torchrun's own parser reads --log as an abbreviation of its --log-dir
            "training",
            "fit",
            "--log",
            str(demo_log["clicks"]),
            "--items",
            str(demo_log["items"]),
            "--users",
            str(demo_log["users"]),
            "--out",
            str(out),
            "--run-dir",
            str(run_dir),
            *sets,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    versions = [p for p in out.iterdir() if p.is_dir()]
    assert len(versions) == 1, "rank 0 alone exports"
    two = json.loads((versions[0] / "manifest.json").read_text())["metrics"]
    one = {f"valid_{k}": v for k, v in trained.fit.best_metrics.items()}
    for key in ("valid_ndcg@10", "valid_auc"):
        assert abs(two[key] - one[key]) <= TOLERANCE, (key, two[key], one[key])
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1)), "one line per epoch: rank 0 alone writes"
