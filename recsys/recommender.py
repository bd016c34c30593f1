"""The served pipeline, as one domain object: retrieve with FAISS, rank with BST, exclude seen items,
fall back to popular items for users with no usable history.

The gRPC server calls it per request, and offline evaluation calls the very same `recommend_batch`
to report the `served` metrics, so what is measured is what is served.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from recsys import artifact as artifact_format
from recsys.errors import InvalidArgument, NotFound
from recsys.fast import FastScorer, UnsupportedConfig
from recsys.features import Event, UserState
from recsys.index import FIRST_ITEM, Retriever
from recsys.model import History

log = logging.getLogger(__name__)

MAX_K = 1000  # Recommend: 1 <= k <= MAX_K
MAX_RANK_ITEMS = 10_000  # Rank: at most this many item ids per request
DEFAULT_RETRIEVAL_DEPTH = 200  # candidates retrieved and ranked per request


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float


@dataclass(frozen=True)
class Recommendation:
    items: list[ScoredItem]
    personalised: bool
    model_version: str
    reason: str  # "personalised" | "cold_start"


class Recommender:
    """A loaded artifact plus the request-time logic around it. Thread-safe for concurrent calls."""

    def __init__(
        self,
        art: artifact_format.Artifact,
        retriever: Retriever | None = None,
        retrieval_depth: int = DEFAULT_RETRIEVAL_DEPTH,
        scorer: Literal["fast", "reference"] = "fast",
    ):
        self.artifact = art
        self.model = art.model.eval()
        self.fast: FastScorer | None = None
        if scorer == "fast":
            try:
                self.fast = FastScorer(self.model)
            except UnsupportedConfig as err:
                log.warning("serving %s with the reference scorer: %s", art.version, err)
        self.scorer = "fast" if self.fast is not None else "reference"
        self.featurizer = art.featurizer
        self.retriever: Retriever = retriever or art.index
        self.retrieval_depth = retrieval_depth
        self.version = art.version
        self.created_at = str(art.manifest["created_at"])
        self.n_items = int(art.manifest["catalog_size"])
        self.metrics: dict[str, float] = {
            k: float(v) for k, v in art.manifest.get("metrics", {}).items() if isinstance(v, int | float)
        }
        self.path = art.path
        self._popular_idx = np.array([i for i, _ in art.popular], dtype=np.int64)
        self._popular_score = np.array([s for _, s in art.popular], dtype=np.float32)

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> Recommender:
        return cls(artifact_format.load(path), **kwargs)

    # -- queries ---------------------------------------------------------------------------------

    def known_item(self, item_id: str) -> bool:
        return item_id in self.featurizer.items

    def recommend(self, user: UserState, k: int, exclude_seen: bool = True, now: float | None = None) -> Recommendation:
        return self.recommend_batch([user], k, exclude_seen, now)[0]

    def recommend_batch(
        self,
        users: Sequence[UserState],
        k: int,
        exclude_seen: bool = True,
        now: float | Sequence[float] | None = None,
        depth: int | None = None,
    ) -> list[Recommendation]:
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"k={k} is out of range; fix: ask for 1 <= k <= {MAX_K}")
        depth = max(k, depth or self.retrieval_depth)
        times = np.broadcast_to(np.asarray(now if now is not None else _now(), dtype=np.float64), (len(users),))
        seen = [self._seen(u) for u in users]
        personal = [i for i, s in enumerate(seen) if len(s)]
        out: list[Recommendation | None] = [None] * len(users)
        if personal:
            ranked = self._retrieve_and_rank(
                [users[i] for i in personal], [seen[i] for i in personal], k, depth, exclude_seen, times[personal]
            )
            for i, (idx, scores) in zip(personal, ranked, strict=True):
                out[i] = self._answer(idx, scores, seen[i], k, exclude_seen, "personalised")
        for i, rec in enumerate(out):
            if rec is None:
                out[i] = self._answer(
                    np.zeros(0, np.int64), np.zeros(0, np.float32), seen[i], k, exclude_seen, "cold_start"
                )
        return [r for r in out if r is not None]

    def rank(self, user: UserState, item_ids: Sequence[str], now: float | None = None) -> list[float]:
        """Scores (click probabilities) in the order of `item_ids`."""
        if not item_ids:
            raise InvalidArgument("item_ids is empty; fix: pass at least one item id to rank")
        if len(item_ids) > MAX_RANK_ITEMS:
            raise InvalidArgument(f"item_ids has {len(item_ids)} ids; fix: pass at most {MAX_RANK_ITEMS}")
        idx = self.featurizer.items.lookup(list(item_ids))
        unknown = [item_ids[int(j)] for j in np.flatnonzero(idx < FIRST_ITEM)]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise NotFound(
                f"item_ids: {len(unknown)} unknown to model {self.version} ({shown}); "
                "fix: rank only catalog items (new items are learned at the next retrain)"
            )
        hist = self.featurizer.encode_states([user], float(now if now is not None else _now()))
        logits = self.score(hist, torch.from_numpy(idx).unsqueeze(0))  # (1, C)
        return [float(x) for x in torch.sigmoid(logits[0])]

    def score(self, hist: History, candidates: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """Ranker logits (B, C): the fast single-pass scorer, or the reference for unsupported configs."""
        if self.fast is not None:
            return self.fast.score(hist, candidates, user)
        with torch.inference_mode():
            return self.model.score(hist, candidates, user)

    def seed(self) -> Iterator[tuple[str, list[Event], dict[str, str]]]:
        """Users' recent histories and profiles from the training log, to seed a memory:// store."""
        frame = artifact_format.read_seed(self.path)
        for row in frame.itertuples(index=False):
            events = [
                Event(str(i), float(t), str(e)) for i, t, e in zip(row.items, row.timestamps, row.events, strict=True)
            ]
            yield str(row.user_id), events, json.loads(row.profile)

    # -- internals -------------------------------------------------------------------------------

    def _seen(self, user: UserState) -> np.ndarray:
        if not user.history:
            return np.zeros(0, np.int64)
        idx = self.featurizer.items.lookup([e.item_id for e in user.history])
        return np.unique(idx[idx >= FIRST_ITEM])

    def _retrieve_and_rank(
        self,
        users: Sequence[UserState],
        seen: list[np.ndarray],
        k: int,
        depth: int,
        exclude_seen: bool,
        now: np.ndarray,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        hist = self.featurizer.encode_states(users, now)
        with torch.inference_mode():
            user = self.model.encode_user(hist)  # (B, d)
        queries = user.float().numpy()
        extra = max(len(s) for s in seen) if exclude_seen else 0
        _, found = self.retriever.search(queries, depth + extra)
        cands = np.zeros((len(users), depth), dtype=np.int64)
        for b, row in enumerate(found):
            row = row[row >= FIRST_ITEM]
            if exclude_seen:
                row = row[~np.isin(row, seen[b])]
            row = row[:depth]
            cands[b, : len(row)] = row
        probs = torch.sigmoid(self.score(hist, torch.from_numpy(cands), user)).numpy()  # (B, depth)
        probs = np.where(cands >= FIRST_ITEM, probs, -np.inf)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [(cands[b, order[b]], probs[b, order[b]]) for b in range(len(users))]

    def _answer(
        self, idx: np.ndarray, scores: np.ndarray, seen: np.ndarray, k: int, exclude_seen: bool, reason: str
    ) -> Recommendation:
        keep = np.isfinite(scores)
        idx, scores = idx[keep], scores[keep]
        if len(idx) < k:  # top up from the popular list (too few candidates, or a cold start)
            pop = self._popular_idx
            mask = ~np.isin(pop, idx)
            if exclude_seen:
                mask &= ~np.isin(pop, seen)
            fill = np.flatnonzero(mask)[: k - len(idx)]
            # popularity shares (<= 1) scaled under the lowest ranked score: the list stays descending
            floor = float(scores.min()) if len(scores) else 1.0
            idx = np.concatenate([idx, pop[fill]])
            scores = np.concatenate([scores, floor * self._popular_score[fill] / max(self._popular_score[0], 1e-12)])
        names = self.featurizer.items.decode(idx)
        return Recommendation(
            items=[ScoredItem(n, float(s)) for n, s in zip(names, scores, strict=True)],
            personalised=reason == "personalised",
            model_version=self.version,
            reason=reason,
        )


def _now() -> float:
    import time

    return time.time()
