"""Candidate retrieval by inner product over item vectors: FAISS, and a brute-force reference.

Both implement `Retriever`; a test holds them equal. Rows 0 and 1 of the item table (padding and
unknown) are never indexed, so no search can return them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import faiss
import numpy as np
import torch

FIRST_ITEM = 2  # indices 0 (padding) and 1 (unknown) are not items


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

    @classmethod
    def build(cls, vectors: np.ndarray) -> FaissRetriever:
        """Exact inner product (IndexFlatIP); approximate indexes for large catalogs come later."""
        vecs = np.ascontiguousarray(vectors[FIRST_ITEM:], dtype=np.float32)
        index = faiss.IndexFlatIP(vecs.shape[1])
        index.add(vecs)
        return cls(index, len(vectors))

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


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if ids.shape[1] == k:
        return scores, ids
    B = ids.shape[0]
    pad = k - ids.shape[1]
    return (
        np.concatenate([scores, np.full((B, pad), -np.inf, np.float32)], 1),
        np.concatenate([ids, np.full((B, pad), -1, np.int64)], 1),
    )
