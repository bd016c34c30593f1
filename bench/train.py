"""Training throughput with 1 and 2 processes (torchrun, gloo), and with one process shuffling examples one
by one (`train.group_histories=false`), on one synthetic log, in one run.

    python -m bench.train [--users 600] [--items 300] [--epochs 2] [--json OUT]

Both runs are `python -m training fit` subprocesses on the same log and config; the table gives each
run's examples per second (all ranks together, `FitResult.examples_per_second`), wall time, the best
validation NDCG@10 and AUC, and the throughput ratio against the one-process run. Under torchrun each
rank gets cores / ranks intra-op threads (`training.__main__.init_distributed`), so both runs use the
whole machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], out: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"error: {' '.join(cmd[:6])} ... exited {proc.returncode}: {proc.stderr[-1500:]}")
    manifest = json.loads(next(out.glob("v*/manifest.json")).read_text())
    return {
        "examples_per_second": manifest["examples_per_second"],
        "train_seconds": manifest["train_seconds"],
        "wall_seconds": round(time.monotonic() - t0, 1),
        "valid_ndcg@10": manifest["metrics"]["valid_ndcg@10"],
        "valid_auc": manifest["metrics"]["valid_auc"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__)
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the table as JSON")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    demo = work / "demo"
    subprocess.run(
        [sys.executable, "-m", "training", "synth", "--out", str(demo), "--users", str(args.users)]
        + ["--items", str(args.items), "--seed", "0"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    fit = ["training", "fit", "--log", str(demo / "clicks.parquet"), "--items", str(demo / "items.parquet")]
    fit += ["--users", str(demo / "users.parquet"), "--set", f"train.epochs={args.epochs}", "--quiet"]
    rows = {
        "1 process": run(
            [sys.executable, "-m", *fit, "--out", str(work / "one"), "--run-dir", str(work / "r1")], work / "one"
        ),
        "2 processes (torchrun)": run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "--"]
            + [*fit, "--out", str(work / "two"), "--run-dir", str(work / "r2")],
            work / "two",
        ),
        # the trainer's default keeps a positive and its negatives in one step (the BST then encodes their
        # shared history once for its retrieval-score input); this row is the one-by-one shuffle
        "1 process, examples shuffled one by one": run(
            [sys.executable, "-m", *fit, "--out", str(work / "ungrouped"), "--run-dir", str(work / "r3")]
            + ["--set", "train.group_histories=false"],
            work / "ungrouped",
        ),
    }
    base = rows["1 process"]["examples_per_second"]
    print(
        f"training throughput: synthetic log, {args.users} users, {args.items} items, {args.epochs} epochs, "
        f"{os.cpu_count()} cores\n"
    )
    print("| run | examples/s | vs 1 process | train s | wall s | valid NDCG@10 | valid AUC |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['examples_per_second']:,.0f} | {r['examples_per_second'] / base:.2f}x | "
            f"{r['train_seconds']:.1f} | {r['wall_seconds']:.1f} | {r['valid_ndcg@10']:.4f} | {r['valid_auc']:.4f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)  # runs/ is not in a fresh clone
        args.json.write_text(json.dumps({"users": args.users, "items": args.items, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
