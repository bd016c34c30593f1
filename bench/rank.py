"""Ranking alone: the reference `BST.score` against the fast single-pass scorer (fp32, bf16, int8).

    python -m bench.rank [--candidates 100,500,2000] [--threads 1] [--repeats 50] [--set model.K=V] [--json OUT]

The model has the default configuration, the paper's shape (1 block, d=64, 8 heads, 20 behaviors, MLP
1024-512-256) unless `--set` overrides a field (e.g. `--set 'model.mlp_dims=[256,128]'`), over a
100k-item catalog with random weights: speed does not depend on training. One request = one user's
history and C candidates. Reported: p50/p99 latency per request, speed-up against the reference
measured in the same run, achieved GFLOP/s of the fast path (its matmul FLOPs counted analytically),
and this machine's matmul peak (a 1024x1024 GEMM) measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from recsys.config import apply_overrides, check_prefixes
from recsys.errors import InvalidArgument
from recsys.fast import FastScorer, candidate_flops, keep_freed_memory
from recsys.model import BST, History, ModelConfig


def timeit(fn: Callable[[], object], repeats: int, warmup: int = 3) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out * 1e3  # ms


def matmul_peak(dtype: torch.dtype, n: int = 1024, repeats: int = 20, budget_s: float = 2.0) -> float:
    """GFLOP/s of an n x n GEMM: the median of `repeats` runs, fewer where one run is slow (bf16 without
    hardware support runs at about 1 GFLOP/s here: 20 runs would take 45 s)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t0 = time.perf_counter()
    a @ b  # warm-up, and the time of one run
    one = time.perf_counter() - t0
    ms = np.median(timeit(lambda: a @ b, max(3, min(repeats, int(budget_s / max(one, 1e-9)))), warmup=0))
    return 2 * n**3 / (ms / 1e3) / 1e9


def fast_flops(cfg: ModelConfig, L: int, C: int) -> float:
    """Matmul FLOPs of the fast path for one request: the behaviors' q/k/v once, then C candidates."""
    return 2.0 * cfg.n_blocks * L * 3 * cfg.d_model**2 + C * candidate_flops(cfg, L)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rank", description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", default="100,500,2000")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json")
    parser.add_argument(
        "--set", action="append", default=[], metavar="model.KEY=VALUE", help="model config override (repeatable)"
    )
    args = parser.parse_args(argv)
    try:
        check_prefixes(args.set, ["model"])
        cfg = apply_overrides(
            ModelConfig(n_items=100_002, side_sizes=(1002,), side_widths=(1,), user_sizes=(10, 5)), args.set, "model"
        )
        torch.manual_seed(0)
        model = BST(cfg).eval()
        fast32 = FastScorer(model)  # refuses a configuration its single pass would only approximate
    except InvalidArgument as e:
        parser.error(str(e))
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the server does
    gen = torch.Generator().manual_seed(0)
    T = cfg.retrieval_len
    items = torch.randint(2, cfg.n_items, (1, T), generator=gen)
    hist = History(
        items,
        torch.randint(2, cfg.n_positions, (1, T), generator=gen),
        torch.ones(1, T, dtype=torch.long),
        torch.tensor([[3, 2]]),
        torch.tensor([[5, 2]]),
    )
    fast16 = FastScorer(copy.deepcopy(model).to(torch.bfloat16))
    fast8 = FastScorer(model, int8=True)
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    rows = []
    for C in (int(c) for c in args.candidates.split(",")):
        cands = torch.randint(2, cfg.n_items, (1, C), generator=gen)
        with torch.inference_mode():
            ref = timeit(lambda cands=cands: model.score(hist, cands), max(5, args.repeats // 5))
            f32 = timeit(lambda cands=cands: fast32.score(hist, cands), args.repeats)
            f16 = timeit(lambda cands=cands: fast16.score(hist, cands), args.repeats)
            i8 = timeit(lambda cands=cands: fast8.score(hist, cands), args.repeats)
            want = model.score(hist, cands).sigmoid()
            gap = (fast16.score(hist, cands).float().sigmoid() - want).abs().max()
            gap8 = (fast8.score(hist, cands).sigmoid() - want).abs().max()
        flops = fast_flops(cfg, cfg.max_len, C)
        rows.append(
            {
                "candidates": C,
                "reference_p50_ms": float(np.median(ref)),
                "reference_p99_ms": float(np.percentile(ref, 99)),
                "fast_fp32_p50_ms": float(np.median(f32)),
                "fast_fp32_p99_ms": float(np.percentile(f32, 99)),
                "fast_bf16_p50_ms": float(np.median(f16)),
                "fast_bf16_p99_ms": float(np.percentile(f16, 99)),
                "fast_int8_p50_ms": float(np.median(i8)),
                "fast_int8_p99_ms": float(np.percentile(i8, 99)),
                "speedup_fp32": float(np.median(ref) / np.median(f32)),
                "speedup_bf16": float(np.median(ref) / np.median(f16)),
                "speedup_int8": float(np.median(ref) / np.median(i8)),
                "fast_fp32_gflops": flops / (np.median(f32) / 1e3) / 1e9,
                "fast_bf16_gflops": flops / (np.median(f16) / 1e3) / 1e9,
                "fast_int8_gflops": flops / (np.median(i8) / 1e3) / 1e9,
                "bf16_max_prob_gap": float(gap),
                "int8_max_prob_gap": float(gap8),
            }
        )
    print(
        f"BST ranking, one request (1 user, {cfg.max_len} behaviors, d={cfg.d_model}, MLP {cfg.mlp_dims}), "
        f"{args.threads} thread(s); matmul peak fp32 {peak32:.1f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s"
    )
    print(
        "| candidates | reference p50 / p99 ms | fast fp32 p50 / p99 ms | fast bf16 p50 / p99 ms "
        "| fast int8 p50 / p99 ms | speed-up fp32 / bf16 / int8 | GFLOP/s fp32 / bf16 / int8 "
        "| max prob gap bf16 / int8 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['candidates']} | {r['reference_p50_ms']:.2f} / {r['reference_p99_ms']:.2f} "
            f"| {r['fast_fp32_p50_ms']:.2f} / {r['fast_fp32_p99_ms']:.2f} "
            f"| {r['fast_bf16_p50_ms']:.2f} / {r['fast_bf16_p99_ms']:.2f} "
            f"| {r['fast_int8_p50_ms']:.2f} / {r['fast_int8_p99_ms']:.2f} "
            f"| {r['speedup_fp32']:.1f}x / {r['speedup_bf16']:.1f}x / {r['speedup_int8']:.1f}x "
            f"| {r['fast_fp32_gflops']:.1f} / {r['fast_bf16_gflops']:.1f} / {r['fast_int8_gflops']:.1f} "
            f"| {r['bf16_max_prob_gap']:.4f} / {r['int8_max_prob_gap']:.4f} |"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)  # runs/ is not in a fresh clone
        with open(args.json, "w") as f:
            json.dump(
                {
                    "threads": args.threads,
                    "mlp_dims": list(cfg.mlp_dims),
                    "model_overrides": args.set,
                    "peak_gflops": {"fp32": peak32, "bf16": peak16},
                    "rows": rows,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
