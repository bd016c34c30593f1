"""Training on a GPU (`train.device=cuda`): the same log and config reach one CPU process's validation
quality, the model comes back on the CPU for export and serving, and torchrun ranks train on their own
GPUs with NCCL. Skipped where torch sees no GPU (this project's CI); `make gpu-check` runs them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from recsys.data import load_log
from tests.conftest import ROOT, TINY_TRAIN
from tests.test_distributed import TOLERANCE, torchrun_fit  # the same bound as two CPU processes
from training.pipeline import train_and_export

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU on this machine")


def test_fit_on_a_gpu_matches_the_cpu(trained, demo_log: dict[str, Path], tmp_path: Path) -> None:
    clog = load_log(demo_log["clicks"], demo_log["items"], demo_log["users"])
    report = train_and_export(clog, tmp_path / "a", [*TINY_TRAIN, "train.device=cuda"], run_dir=tmp_path / "run")
    assert report is not None
    assert {p.device.type for p in report.model.parameters()} == {"cpu"}, "export and serving read a CPU model"
    manifest = json.loads((report.artifact / "manifest.json").read_text())
    assert manifest["train_config"]["device"] == "cuda"
    for key in ("ndcg@10", "auc"):
        gpu, cpu = report.fit.best_metrics[key], trained.fit.best_metrics[key]
        assert abs(gpu - cpu) <= TOLERANCE, (key, gpu, cpu)
    assert report.test["served"]["hr@10"] > 0


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="two ranks need two GPUs (NCCL takes one GPU per rank)")
def test_two_ranks_on_two_gpus_match_one_cpu_process(trained, demo_log: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "artifacts"
    cmd = torchrun_fit(demo_log, out, tmp_path / "run", [], [*TINY_TRAIN, "train.device=cuda"])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (version,) = [p for p in out.iterdir() if p.is_dir()]
    two = json.loads((version / "manifest.json").read_text())["metrics"]
    for key in ("ndcg@10", "auc"):
        assert abs(two[f"valid_{key}"] - trained.fit.best_metrics[key]) <= TOLERANCE, key
