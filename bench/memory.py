"""Peak memory of training on a log far larger than the demo: 20 million events by default.

    python -m bench.memory [--events 20000000] [--users 200000] [--items 100000] [--minutes 3]
                           [--work DIR] [--json OUT]

Writes a synthetic log as a directory of Parquet files (1M rows each, in global time order, as an
event export is) and an item table, then measures three subprocesses, each one's peak resident memory
(`os.wait4`'s ru_maxrss, the largest the process ever was) and wall time:

  eager read    the whole directory read at once (`pd.read_parquet`) and validated: the baseline, what
                reading a log without streaming costs
  stream read   `recsys.data.load_log`: Parquet record batches through `pyarrow.dataset`, each validated
                and reduced to the canonical columns before the next is read
  fit           `python -m training fit` on the directory: read, vocabularies, encoded log, training
                until the `--minutes` budget ends the first epoch, validation, export, test metrics

The generator is vectorised numpy (users with a preferred category, Zipf item popularity, exponential
gaps) and writes part by part; it is not `training synth`, whose per-user Python loop would take an
hour at this size. The table is for the machine it runs on; the README quotes one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
PART_ROWS = 1_000_000
N_CATEGORIES = 50
GiB = 1024**3


def generate(out: Path, n_events: int, n_users: int, n_items: int, seed: int = 0) -> dict[str, Path]:
    """`out/clicks/part-NNNN.parquet` (string ids, epoch-second timestamps, time-ordered) and
    `out/items.parquet` (item_id, category)."""
    rng = np.random.default_rng(seed)
    category = rng.integers(0, N_CATEGORIES, n_items)
    by_cat = [np.flatnonzero(category == c) for c in range(N_CATEGORIES)]
    zipf = 1.0 / np.arange(1, n_items + 1) ** 1.05
    popular_cdf = np.cumsum(zipf / zipf.sum())
    # events per user: lognormal around the mean, every user at least 5 (so leave-one-out keeps them)
    lengths = np.maximum(5, rng.lognormal(0, 0.8, n_users) * n_events / n_users / np.exp(0.32)).astype(np.int64)
    lengths = np.floor(lengths * n_events / lengths.sum()).astype(np.int64)
    lengths[: n_events - int(lengths.sum())] += 1
    user = np.repeat(np.arange(n_users, dtype=np.int32), lengths)  # (E,)
    taste = rng.integers(0, N_CATEGORIES, n_users)[user]
    from_taste = rng.random(n_events) < 0.6
    item = np.searchsorted(popular_cdf, rng.random(n_events)).astype(np.int32)
    sizes = np.array([len(b) for b in by_cat])[taste]
    pick = (rng.random(n_events) * sizes).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in by_cat])])
    flat_by_cat = np.concatenate(by_cat).astype(np.int32)
    item = np.where(from_taste, flat_by_cat[offsets[taste] + pick], item)
    del taste, from_taste, pick, sizes
    start = rng.integers(1_600_000_000, 1_650_000_000, n_users)
    gaps = rng.exponential(3_600.0, n_events).astype(np.int64) + 1
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    csum = np.cumsum(gaps)
    ts = start[user] + csum - np.repeat(csum[first], lengths)
    del gaps, csum
    order = np.argsort(ts, kind="stable")  # global time order, as a log is written
    clicks = out / "clicks"
    clicks.mkdir(parents=True, exist_ok=True)
    for part, lo in enumerate(range(0, n_events, PART_ROWS)):
        rows = order[lo : lo + PART_ROWS]
        table = pa.table(
            {
                "user_id": pc.binary_join_element_wise("u", pa.array(user[rows]).cast(pa.string()), ""),
                "item_id": pc.binary_join_element_wise("i", pa.array(item[rows]).cast(pa.string()), ""),
                "timestamp": pa.array(ts[rows]),
            }
        )
        pq.write_table(table, clicks / f"part-{part:04d}.parquet")
    items = pa.table(
        {
            "item_id": pc.binary_join_element_wise("i", pa.array(np.arange(n_items)).cast(pa.string()), ""),
            "category": pc.binary_join_element_wise("c", pa.array(category).cast(pa.string()), ""),
        }
    )
    pq.write_table(items, out / "items.parquet")
    return {"clicks": clicks, "items": out / "items.parquet"}


def measure(cmd: list[str]) -> dict[str, Any]:
    """Run `cmd`; its wall time and peak resident memory (ru_maxrss is in KiB on Linux)."""
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"error: {' '.join(cmd[:6])} ... exited {proc.returncode}:\n{output[-3000:]}")
    return {"seconds": round(time.monotonic() - t0, 1), "peak_rss_gib": usage.ru_maxrss * 1024 / GiB, "output": output}


EAGER = """
import sys, pandas as pd
from recsys.data import validate_log
ev, _ = validate_log(pd.read_parquet(sys.argv[1]), sys.argv[1])
print(len(ev))
"""
STREAM = """
import sys
from recsys.data import load_log
print(len(load_log(sys.argv[1], sys.argv[2]).events))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget of the fit (train.max_minutes)")
    parser.add_argument("--work", type=Path, help="directory for the log and artifact (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="write the table as JSON")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-memory-"))
    t0 = time.monotonic()
    paths = generate(work / "log", args.events, args.users, args.items)
    gen_s = time.monotonic() - t0
    size = sum(f.stat().st_size for f in paths["clicks"].glob("*.parquet"))
    rows: dict[str, dict[str, Any]] = {}
    rows["eager read (baseline)"] = measure([sys.executable, "-c", EAGER, str(paths["clicks"])])
    rows["stream read (load_log)"] = measure([sys.executable, "-c", STREAM, str(paths["clicks"]), str(paths["items"])])
    fit = [sys.executable, "-m", "training", "fit", "--log", str(paths["clicks"]), "--items", str(paths["items"])]
    fit += ["--out", str(work / "artifacts"), "--run-dir", str(work / "run"), "--quiet"]
    fit += ["--set", "train.epochs=1", "--set", f"train.max_minutes={args.minutes}"]
    rows["fit (train + export + test)"] = measure(fit)
    manifest = json.loads(next((work / "artifacts").glob("v*/manifest.json")).read_text())
    base = rows["eager read (baseline)"]["peak_rss_gib"]
    total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB
    print(
        f"peak memory: synthetic log of {args.events:,} events, {args.users:,} users, {args.items:,} items, "
        f"{size / 2**20:,.0f} MiB of Parquet in {len(list(paths['clicks'].glob('*.parquet')))} files "
        f"(written in {gen_s:.0f} s, generator peak {total:.2f} GiB), {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GiB:.0f} GiB RAM\n"
    )
    print("| step | peak RSS GiB | vs eager read | wall s |")
    print("|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['peak_rss_gib']:.2f} | {r['peak_rss_gib'] / base:.2f}x | {r['seconds']:.0f} |")
    print(
        f"\nfit: {manifest['data']['train_examples']:,} training examples, "
        f"{manifest['examples_per_second']:,.0f} examples/s, train {manifest['train_seconds']:.0f} s "
        f"(budget {args.minutes} min), valid NDCG@10 {manifest['metrics'].get('valid_ndcg@10', float('nan')):.4f}"
    )
    if args.json:
        out = {k: {f: v for f, v in r.items() if f != "output"} for k, r in rows.items()}
        args.json.parent.mkdir(parents=True, exist_ok=True)  # runs/ is not in a fresh clone
        args.json.write_text(json.dumps({"events": args.events, "parquet_bytes": size, "runs": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
