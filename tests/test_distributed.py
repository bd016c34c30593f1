"""Data-parallel training through torchrun: two processes on this machine (gloo) reach the validation
quality of one process on the same log and config, rank 0 alone writes the run and the artifact, and a
rank killed mid-run is restarted by torchrun and the job resumes from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY_TRAIN

TOLERANCE = 0.03  # absolute, on validation NDCG@10 and AUC (the demo log: about 0.17 and 0.87)


def torchrun_fit(
    demo_log: dict[str, Path], out: Path, run_dir: Path, torchrun_args: list[str], overrides: list[str]
) -> list[str]:
    """`training fit` of the demo log in 2 processes under torchrun, as a command line."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *torchrun_args]
    cmd += ["-m", "--"]  # else torchrun's own parser reads --log as an abbreviation of its --log-dir
    cmd += ["training", "fit", "--log", str(demo_log["clicks"]), "--items", str(demo_log["items"])]
    cmd += ["--users", str(demo_log["users"]), "--out", str(out), "--run-dir", str(run_dir)]
    return cmd + [arg for kv in overrides for arg in ("--set", kv)]


def _workers(pid: int) -> list[int]:
    """Every descendant process of `pid` (torchrun's agent starts its workers as children)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            out += [int(child), *_workers(int(child))]
    return out


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # exited meanwhile
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def _fit_killing_rank_1(cmd: list[str], run_dir: Path) -> tuple[int | None, int, str]:
    """Run torchrun `cmd`; SIGKILL rank 1 of the first round as soon as epoch 1's checkpoint exists.
    -> (the killed pid or None, torchrun's exit status, its output)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    try:
        deadline = time.monotonic() + 600
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            if (run_dir / "checkpoint.pt").exists():
                for pid in _workers(proc.pid):
                    e = _environ(pid)
                    if e.get("RANK") == "1" and e.get("TORCHELASTIC_RESTART_COUNT") == "0":
                        os.kill(pid, signal.SIGKILL)
                        killed = pid
                        break
            time.sleep(0.2)
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    return killed, proc.returncode, output


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers through Linux /proc")
def test_two_processes_match_one_even_when_a_rank_dies_and_the_job_resumes(
    trained, demo_log: dict[str, Path], tmp_path: Path
) -> None:
    # rank 1 is SIGKILLed as soon as epoch 1's checkpoint exists; torchrun (--max-restarts 1) stops rank 0 and
    # starts both again, `fit --resume` continues at epoch 2, and the result still matches one process
    out, run_dir = tmp_path / "artifacts", tmp_path / "run"
    cmd = torchrun_fit(demo_log, out, run_dir, ["--max-restarts", "1", "--monitor-interval", "0.5"], TINY_TRAIN)
    cmd.append("--resume")
    killed, status, output = _fit_killing_rank_1(cmd, run_dir)
    assert killed is not None, "rank 1 was not found while training"
    assert status == 0, output[-3000:]
    assert "resumed from" in output, output[-3000:]
    versions = [p for p in out.iterdir() if p.is_dir()]
    assert len(versions) == 1, "rank 0 alone exports, once"
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 2, (
        f"one line per epoch (rank 0 alone writes), epoch 1 not repeated after the restart: {epochs}"
    )
    two = json.loads((versions[0] / "manifest.json").read_text())["metrics"]
    one = {f"valid_{k}": v for k, v in trained.fit.best_metrics.items()}
    for key in ("valid_ndcg@10", "valid_auc"):
        assert abs(two[key] - one[key]) <= TOLERANCE, (key, two[key], one[key])
