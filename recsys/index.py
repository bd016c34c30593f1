"""Candidate retrieval by inner product over item vectors: FAISS, and a brute-force reference.

Both implement `Retriever`; a test holds them equal (exactly for the flat index, to a recall bound for
the approximate ones). Rows 0 and 1 of the item table (padding and unknown) are never indexed, so no
search can return them.

The index type follows the catalogue size (`IndexConfig`, kind "auto"): exact inner product
(IndexFlatIP) below `exact_below` items, where a scan costs about a millisecond, and IVF above. HNSW
is available, but on inner product over embeddings whose norms vary (popular items get long vectors)
its recall@100 stalls near 0.86 at any efSearch (the MIPS-to-L2 augmentation was worse still), while
IVF reaches 0.99 at a fraction of a flat scan's cost (bench/retrieval.py).
`build` measures recall@100 of the chosen index against exact search on sample queries, and the
artifact writes it into the manifest. `bench/retrieval.py` measures the recall-latency curve behind
the defaults.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import faiss
import numpy as np
import torch

log = logging.getLogger(__name__)

FIRST_ITEM = 2  # indices 0 (padding) and 1 (unknown) are not items
RECALL_AT = 100  # build-time quality check: recall@100 against exact search


@dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index an artifact gets. Saved in the manifest with the recall it measured."""

    kind: Literal["auto", "flat", "hnsw", "ivf"] = "auto"  # auto: flat below exact_below items, else ivf
    exact_below: int = 50_000  # auto's threshold; a flat scan of 50k x 64 floats takes ~1 ms on one core
    hnsw_m: int = 32  # graph degree: memory ~ (d + 2 * m) * 4 bytes per item
    hnsw_ef_construction: int = 64  # build-time beam; higher = better graph, slower build
    hnsw_ef_search: int = 256  # search-time beam (>= the retrieval depth matters most); bench/retrieval.py
    ivf_nlist: int = 0  # IVF cells; 0 = 4 * sqrt(items)
    ivf_nprobe: int = 0  # IVF cells visited per query; 0 = max(64, nlist // 32): recall@100 0.98 at 100k, 0.95 at 1M
    recall_queries: int = 500  # queries for the build-time recall@100 check (0 = skip it)

    def resolve(self, n: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "flat" if n < self.exact_below else "ivf"


class Retriever(Protocol):
    n_items: int

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, d) float32 queries -> (scores (B, k) float32, item indices (B, k) int64), best first.
        When fewer than k items exist, missing slots have index -1 and score -inf."""
        ...


class ExactRetriever:
    """The reference: `torch.topk` over all inner products."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors[FIRST_ITEM:], dtype=np.float32))
        self.n_items = len(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = torch.from_numpy(np.asarray(queries, np.float32)) @ self.vectors.T  # (B, N-2)
        kk = min(k, scores.shape[1])
        top = torch.topk(scores, kk, dim=1)
        s, i = top.values.numpy(), top.indices.numpy().astype(np.int64) + FIRST_ITEM
        return _pad(s, i, k)


class FaissRetriever:
    """FAISS inner-product search. The index type is recorded in the artifact manifest."""

    def __init__(self, index: faiss.Index, n_items: int):
        self.index = index
        self.n_items = n_items
        self.info: dict[str, Any] = {"kind": self.kind, "metric": "inner_product", "vectors": int(index.ntotal)}

    @classmethod
    def build(
        cls, vectors: np.ndarray, config: IndexConfig | None = None, queries: np.ndarray | None = None
    ) -> FaissRetriever:
        """The index `config` picks for this catalogue. `queries` (e.g. users' vectors) drive the
        recall check; without them, a sample of item vectors does. See `self.info` for the result."""
        config = config or IndexConfig()
        vecs = np.ascontiguousarray(vectors[FIRST_ITEM:], dtype=np.float32)
        n, d = vecs.shape
        kind = config.resolve(n)
        started = time.perf_counter()
        index: faiss.Index
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.hnsw_ef_construction
            index.hnsw.efSearch = config.hnsw_ef_search
        elif kind == "ivf":
            nlist = config.ivf_nlist or max(1, int(4 * np.sqrt(n)))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vecs[np.random.default_rng(0).permutation(n)[: max(nlist * 39, 10_000)]])
            index.nprobe = config.ivf_nprobe or max(64, nlist // 32)
        else:
            raise ValueError(f"index kind {kind!r}; fix: use one of auto, flat, hnsw, ivf")
        index.add(vecs)
        out = cls(index, len(vectors))
        info: dict[str, Any] = {"kind": out.kind, "metric": "inner_product", "vectors": n, "config": asdict(config)}
        info["build_seconds"] = round(time.perf_counter() - started, 3)
        if kind != "flat" and config.recall_queries > 0 and n > 0:
            if queries is None:
                pick = np.random.default_rng(0).choice(n, min(config.recall_queries, n), replace=False)
                queries, source = vecs[pick], "item vectors"
            else:
                queries, source = np.asarray(queries, np.float32)[: config.recall_queries], "user vectors"
            info[f"recall@{RECALL_AT}"] = round(recall_at(out, ExactRetriever(vectors), queries, RECALL_AT), 4)
            info["recall_queries"] = f"{len(queries)} {source}"
        elif kind == "flat":
            info[f"recall@{RECALL_AT}"] = 1.0  # exact by construction
        out.info = info
        log.info("index: %s", info)
        return out

    @property
    def kind(self) -> str:
        return type(self.index).__name__

    def save(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, n_items: int) -> FaissRetriever:
        index = faiss.read_index(str(path))
        if index.ntotal != n_items - FIRST_ITEM:
            raise ValueError(f"index holds {index.ntotal} vectors, the vocabulary {n_items - FIRST_ITEM} items")
        return cls(index, n_items)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        kk = min(k, self.index.ntotal)
        s, i = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), kk)
        i = np.where(i >= 0, i + FIRST_ITEM, -1).astype(np.int64)
        return _pad(s, i, k)


def set_search_threads(n: int) -> None:
    """FAISS's OpenMP threads. Servers search one query per call from several worker threads: more
    than one OpenMP thread per search only adds fork-join overhead there (bench/retrieval.py: IVF
    p99 at 1M items 1.9 ms with 1 thread, 2.3 ms with 2)."""
    faiss.omp_set_num_threads(n)


def recall_at(approx: Retriever, exact: Retriever, queries: np.ndarray, k: int, chunk: int = 100) -> float:
    """Mean over queries of |approx top-k & exact top-k| / |exact top-k| (queries in chunks, so the
    exact scores of a large catalogue never take more than chunk x items floats)."""
    hits: list[float] = []
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        _, a = approx.search(q, k)
        _, e = exact.search(q, k)
        hits += [
            len(np.intersect1d(x[x >= 0], y[y >= 0])) / max(1, int((y >= 0).sum())) for x, y in zip(a, e, strict=True)
        ]
    return float(np.mean(hits)) if hits else 1.0


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if ids.shape[1] == k:
        return scores, ids
    B = ids.shape[0]
    pad = k - ids.shape[1]
    return (
        np.concatenate([scores, np.full((B, pad), -np.inf, np.float32)], 1),
        np.concatenate([ids, np.full((B, pad), -1, np.int64)], 1),
    )
