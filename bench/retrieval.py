"""Retrieval for large catalogues: the recall-latency curve of FAISS indexes against exact search.

    python -m bench.retrieval [--items 1000000] [--dim 64] [--queries 1000] [--json OUT]

Synthetic item vectors shaped like learned embeddings (a mixture of clusters with Zipf-sized
clusters and per-item norms), and user queries made the way the retrieval head makes them (a mix of
a few item vectors plus noise). For each index and search setting it prints recall@100 against
exact inner-product search, and per-query latency p50/p99 (one query per call, as the server
issues them), beside the exact flat scan measured in the same run. The defaults of
`recsys.index.IndexConfig` come from this table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recsys.index import FIRST_ITEM, ExactRetriever, FaissRetriever, IndexConfig, recall_at

log = logging.getLogger("bench.retrieval")


def synthetic_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """(n + FIRST_ITEM, d): rows 0 and 1 are padding/unknown, as in an artifact's item table."""
    rng = np.random.default_rng(seed)
    n_clusters = max(16, int(np.sqrt(n)))
    centers = rng.normal(size=(n_clusters, d)).astype(np.float32)
    sizes = 1.0 / np.arange(1, n_clusters + 1) ** 0.8
    assign = rng.choice(n_clusters, size=n, p=sizes / sizes.sum())
    vecs = centers[assign] + 0.6 * rng.normal(size=(n, d)).astype(np.float32)
    vecs *= rng.lognormal(0.0, 0.25, size=(n, 1)).astype(np.float32)  # popular items get longer vectors
    return np.concatenate([np.zeros((FIRST_ITEM, d), np.float32), vecs]).astype(np.float32)


def synthetic_queries(vectors: np.ndarray, m: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    items = vectors[FIRST_ITEM:]
    picks = rng.integers(0, len(items), size=(m, 5))
    weights = rng.dirichlet(np.ones(5), size=m).astype(np.float32)
    q = np.einsum("mk,mkd->md", weights, items[picks]) + 0.3 * rng.normal(size=(m, items.shape[1]))
    return q.astype(np.float32)


def latency(retriever: Any, queries: np.ndarray, k: int) -> dict[str, float]:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        retriever.search(q[None], k)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64, help="vector width (the model's d_model)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100, help="recall@k and the search depth")
    parser.add_argument("--threads", type=int, default=2, help="FAISS OpenMP threads (this machine: 2 cores)")
    parser.add_argument("--ef", default="64,128,256,512", help="HNSW efSearch values ('' skips HNSW)")
    parser.add_argument("--nprobe", default="16,32,64,128,256", help="IVF nprobe values")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    faiss.omp_set_num_threads(args.threads)

    vectors = synthetic_vectors(args.items, args.dim)
    queries = synthetic_queries(vectors, args.queries)
    exact = ExactRetriever(vectors)
    flat = FaissRetriever.build(vectors, IndexConfig(kind="flat"))
    rows: list[dict[str, Any]] = [
        {"index": "flat (exact)", "param": "-", "build_s": flat.info["build_seconds"], "recall": 1.0}
        | latency(flat, queries[:200], args.k)
    ]
    base = rows[0]["p50_ms"]
    log.info("flat: %s", rows[0])

    efs = [int(x) for x in args.ef.split(",") if x]
    hnsw = FaissRetriever.build(vectors, IndexConfig(kind="hnsw", recall_queries=0)) if efs else None
    for ef in efs:
        assert hnsw is not None
        hnsw.index.hnsw.efSearch = ef
        row = {"index": f"HNSW M={IndexConfig().hnsw_m}", "param": f"efSearch={ef}"}
        row |= {"build_s": hnsw.info["build_seconds"], "recall": recall_at(hnsw, exact, queries, args.k)}
        rows.append(row | latency(hnsw, queries, args.k))
        log.info("%s", rows[-1])

    ivf = FaissRetriever.build(vectors, IndexConfig(kind="ivf", recall_queries=0))
    for nprobe in [int(x) for x in args.nprobe.split(",")]:
        ivf.index.nprobe = nprobe
        row = {"index": f"IVF nlist={ivf.index.nlist}", "param": f"nprobe={nprobe}"}
        row |= {"build_s": ivf.info["build_seconds"], "recall": recall_at(ivf, exact, queries, args.k)}
        rows.append(row | latency(ivf, queries, args.k))
        log.info("%s", rows[-1])

    print(
        f"\nRetrieval, {args.items:,} synthetic items x {args.dim} dims, {args.queries} queries, recall@{args.k} "
        f"against exact inner-product search, one query per call, {args.threads} FAISS threads\n"
    )
    print(f"| index | search | build s | recall@{args.k} | p50 ms | p99 ms | p50 speed-up vs flat |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['index']} | {r['param']} | {r['build_s']:.1f} | {r['recall']:.4f} | {r['p50_ms']:.3f} | "
            f"{r['p99_ms']:.3f} | {base / r['p50_ms']:.1f}x |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)  # runs/ is not in a fresh clone
        args.json.write_text(json.dumps({"items": args.items, "dim": args.dim, "k": args.k, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
