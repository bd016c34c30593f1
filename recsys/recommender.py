"""The served pipeline, as one domain object: retrieve with FAISS, rank with BST, exclude seen items,
fall back to popular items for users with no usable history.

The gRPC server calls it per request, and offline evaluation calls the very same `recommend_batch`
to report the `served` metrics, so what is measured is what is served.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from recsys import artifact as artifact_format
from recsys.errors import InvalidArgument, NotFound
from recsys.fast import FastScorer, StateCache, UnsupportedConfig, candidate_flops, prepare_cached
from recsys.fast import UserState as RankState
from recsys.features import Event, UserState
from recsys.index import FIRST_ITEM, Retriever
from recsys.model import History
from recsys.vocab import UNK

log = logging.getLogger(__name__)

MAX_K = 1000  # Recommend: 1 <= k <= MAX_K
MAX_RANK_ITEMS = 10_000  # Rank: at most this many item ids per request
DEFAULT_RETRIEVAL_DEPTH = 200  # candidates retrieved and ranked per request
DEFAULT_STATE_CACHE = 4096  # users whose ranking state is kept (about 15 KB each at the default sizes)
MAX_RETRIEVAL_DEPTH = 2000  # a request may ask for k..MAX_RETRIEVAL_DEPTH candidates
MAX_FILTER_ITEMS = 10_000  # allow- and deny-lists: at most this many item ids each
MAX_FRESH_ITEMS = 100_000  # items added after training that Recommend retrieves (brute force beside FAISS)


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


@dataclass(frozen=True)
class Filters:
    """Which items a request may get, beyond the user's seen items.

    `allow`: if not None, only these raw item ids (retrieval is skipped; every allowed item is ranked).
    `deny`: never these. `unavailable`: the store's catalogue-wide unavailable set, also never.
    Ids the model does not know can be neither ranked nor recommended, so they have no effect.
    """

    allow: Sequence[str] | None = None
    deny: Sequence[str] = ()
    unavailable: frozenset[str] | set[str] = frozenset()

    def validate(self) -> None:
        for name, ids in (("allow_item_ids", self.allow or ()), ("deny_item_ids", self.deny)):
            if len(ids) > MAX_FILTER_ITEMS:
                raise InvalidArgument(f"{name} has {len(ids)} ids; fix: pass at most {MAX_FILTER_ITEMS}")


NO_FILTERS = Filters()


@dataclass(frozen=True)
class FreshItems:
    """Items added after training, retrieved and ranked from their side features until a retrain learns
    them. Their vectors are the unknown-item id embedding plus the mean embeddings of their feature
    values: the item space the FAISS index holds, searched by brute force beside it. Built for one model
    by `Recommender.fresh_items`; fresh item j is candidate index len(vocabulary) + j."""

    version: str  # the model whose embeddings these are
    ids: tuple[str, ...]
    position: Mapping[str, int]  # id -> j
    vectors: Tensor  # (n, R) float32, for retrieval
    ranker: Tensor  # (n, d) in the ranker's dtype, its candidate embeddings

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Candidates:
    """One batch's candidates in retrieval's order, with both stages' scores (`Recommender.candidates`)."""

    items: np.ndarray  # (B, C) candidate indices, best retrieved first; 0 = padding (a short row)
    logits: np.ndarray  # (B, C) float32 ranker logits
    # (B, C) float32 retrieval's inner product minus the user's best over the catalogue (<= 0 for catalogue
    # items): retrieval's log-odds against its own first choice. None when no blend needs it
    retrieval: np.ndarray | None

    def prefix(self, depth: int) -> Candidates:
        """The candidates a request of this depth would have ranked: each row's first `depth` (the ranker
        scores each candidate on its own, so their logits do not change)."""
        r = None if self.retrieval is None else self.retrieval[:, :depth]
        return Candidates(self.items[:, :depth], self.logits[:, :depth], r)


def blend_order(found: Candidates, weight: float, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The served order of each row's candidates, best first, cut to k: (item indices, scores).

    The score is sigmoid(logit + w * (r - r_max)): r is retrieval's inner product with the item, r_max its
    best over the whole catalogue for this user (the FAISS index's first hit, seen items included), so
    r - r_max <= 0 is retrieval's log-odds against its own first choice and depends on neither the
    request's filters nor its depth. w = 0 is the ranker's click probability alone; a larger w lets
    retrieval's confidence reorder what the ranker is unsure about (w chosen on validation at export).
    A blended score stays in (0, 1) and, for catalogue items, at most the ranker's probability. Ties keep
    retrieval's order."""
    valid = found.items >= FIRST_ITEM
    logits = torch.from_numpy(found.logits)
    if weight:
        assert found.retrieval is not None, "a blend needs the candidates' retrieval scores"
        logits = logits + weight * torch.from_numpy(np.where(valid, found.retrieval, 0.0).astype(np.float32))
    probs = np.where(valid, torch.sigmoid(logits).numpy(), -np.inf)  # (B, C)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [(found.items[b, order[b]], probs[b, order[b]]) for b in range(len(found.items))]


class Recommender:
    """A loaded artifact plus the request-time logic around it. Thread-safe for concurrent calls."""

    def __init__(
        self,
        art: artifact_format.Artifact,
        retriever: Retriever | None = None,
        retrieval_depth: int | None = None,
        scorer: Literal["fast", "reference"] = "fast",
        precision: Literal["fp32", "bf16", "int8"] = "fp32",
        state_cache: int = DEFAULT_STATE_CACHE,
        retrieval_blend: float | None = None,
    ):
        """`retrieval_depth`: candidates retrieved and ranked when a request names none; None = the depth
        the artifact chose on validation at export (`serving.retrieval_depth`), else 200.
        `retrieval_blend`: the weight w of retrieval's opinion in the served order (`blend_order`); None =
        the weight the artifact chose on validation at export (`serving.retrieval_blend`), else 0 (the
        ranker alone).
        `state_cache`: users whose fast-path state (retrieval vector, history keys and values, the
        request's MLP part) is kept between requests (`recsys.fast.StateCache`; 0 = off).
        `precision="bf16"`: the fast ranker runs on a bfloat16 copy of the weights; `"int8"`: its
        per-candidate MLP runs as dynamically quantized int8 linears (`recsys.fast.quantize_int8`).
        Retrieval stays fp32 either way, so FAISS queries are unchanged. bench/rank.py measures the speed
        and the score gap, `bench.quality --int8` the served quality beside fp32."""
        self.artifact = art
        self.model = art.model.eval()
        self.fast: FastScorer | None = None
        self.precision = precision
        if scorer == "fast":
            try:
                ranker = copy.deepcopy(self.model).to(torch.bfloat16) if precision == "bf16" else self.model
                if precision == "bf16" and not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
                    log.warning(
                        "precision=bf16 on a CPU without native bf16 (capability %s): bf16 matmuls are emulated "
                        "and several times slower than fp32 here (bench/rank.py); prefer fp32",
                        torch.backends.cpu.get_cpu_capability(),
                    )
                self.fast = FastScorer(ranker, int8=precision == "int8")
            except UnsupportedConfig as err:
                log.warning("serving %s with the reference scorer: %s", art.version, err)
        elif precision != "fp32":
            raise InvalidArgument(f"precision={precision!r} needs scorer='fast'; fix: use the fast scorer or fp32")
        self.scorer = "fast" if self.fast is not None else "reference"
        self.state_cache = StateCache(state_cache) if self.fast is not None and state_cache > 0 else None
        self.featurizer = art.featurizer
        self.retriever: Retriever = retriever or art.index
        # the default depth: the caller's, else the one chosen on validation at export, else 200
        self.retrieval_depth = retrieval_depth or art.retrieval_depth or DEFAULT_RETRIEVAL_DEPTH
        self.retrieval_blend = art.retrieval_blend if retrieval_blend is None else float(retrieval_blend)
        if not 0 <= self.retrieval_blend < float("inf"):
            raise InvalidArgument(
                f"retrieval_blend={self.retrieval_blend}: the blend weight must be finite and >= 0; fix: 0 (the "
                "ranker alone) or a positive weight such as the one chosen at export"
            )
        self._vectors = torch.from_numpy(np.ascontiguousarray(art.item_vectors, dtype=np.float32))  # (N, R)
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

    @property
    def serves_new_items(self) -> bool:
        """Items outside the vocabulary can be embedded from side features (the model has item columns)
        and scored (the fast scorer takes candidate embeddings)."""
        return bool(self.featurizer.item_columns) and self.fast is not None

    def fresh_items(self, features: Mapping[str, Mapping[str, str]]) -> FreshItems:
        """The servable new items among `features` (raw feature maps as the store keeps them, newest
        last): ids outside the vocabulary with features, the newest MAX_FRESH_ITEMS. Empty when the model
        cannot embed new items (`serves_new_items`)."""
        ids = [i for i, f in features.items() if f and not self.known_item(i)][-MAX_FRESH_ITEMS:]
        d, r = self.model.cfg.d_model, self.model.retrieval_dim
        if not ids or not self.serves_new_items:
            return FreshItems(self.version, (), {}, torch.zeros(0, r), torch.zeros(0, d))
        assert self.fast is not None
        sides = [torch.from_numpy(rows) for rows in self.featurizer.side_rows([features[i] for i in ids])]
        unk = torch.full((len(ids),), UNK)
        with torch.no_grad():
            vectors = self.model.embed_retrieval(unk, sides).float()  # (n, R)
            ranker = self.fast.model.ranker_items.embed(unk, sides)  # (n, d), bf16 when the ranker is
        return FreshItems(self.version, tuple(ids), {i: j for j, i in enumerate(ids)}, vectors, ranker)

    def recommend(self, user: UserState, k: int, exclude_seen: bool = True, now: float | None = None) -> Recommendation:
        return self.recommend_batch([user], k, exclude_seen, now)[0]

    def recommend_batch(
        self,
        users: Sequence[UserState],
        k: int,
        exclude_seen: bool = True,
        now: float | Sequence[float] | None = None,
        depth: int | None = None,
        filters: Filters = NO_FILTERS,
        fresh: FreshItems | None = None,
    ) -> list[Recommendation]:
        """Top-k per user. `depth`: candidates retrieved for the ranker (None = the default; k..2000).
        `filters` apply to every user of the batch; seen items are excluded per user. `fresh`: items
        added after training (`fresh_items`) that compete with the catalogue for the candidates."""
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"k={k} is out of range; fix: ask for 1 <= k <= {MAX_K}")
        if depth is not None and not k <= depth <= MAX_RETRIEVAL_DEPTH:
            raise InvalidArgument(
                f"retrieval_depth={depth} is out of range; fix: ask for k ({k}) <= retrieval_depth <= "
                f"{MAX_RETRIEVAL_DEPTH}, or 0 for the server default ({self.retrieval_depth})"
            )
        filters.validate()
        if fresh is not None and (fresh.version != self.version or not len(fresh)):
            fresh = None  # built for another model: its embeddings mean nothing here
        depth = max(k, depth or self.retrieval_depth)
        times = np.broadcast_to(np.asarray(now if now is not None else _now(), dtype=np.float64), (len(users),))
        seen = [self._lookup_known([e.item_id for e in u.history], fresh) for u in users]
        blocked = self._lookup_known([*filters.deny, *filters.unavailable], fresh)
        allow = None if filters.allow is None else np.setdiff1d(self._lookup_known(filters.allow, fresh), blocked)
        excluded = [np.union1d(s, blocked) if exclude_seen else blocked for s in seen]
        personal = [i for i, s in enumerate(seen) if len(s)]
        out: list[Recommendation | None] = [None] * len(users)
        if personal:
            w = self.retrieval_blend
            found = self._candidates(
                [users[i] for i in personal],
                [excluded[i] for i in personal],
                depth,
                allow,
                times[personal],
                fresh,
                w > 0,
            )
            for i, (idx, scores) in zip(personal, blend_order(found, w, k), strict=True):
                out[i] = self._answer(idx, scores, excluded[i], allow, k, "personalised", fresh)
        for i, rec in enumerate(out):
            if rec is None:
                out[i] = self._answer(
                    np.zeros(0, np.int64), np.zeros(0, np.float32), excluded[i], allow, k, "cold_start", fresh
                )
        return [r for r in out if r is not None]

    def rank(
        self,
        user: UserState,
        item_ids: Sequence[str],
        now: float | None = None,
        new_items: Mapping[str, Mapping[str, str]] | None = None,
    ) -> list[float]:
        """Scores (click probabilities) in the order of `item_ids`.

        Items added after training (not in the vocabulary) are scored from their side features in
        `new_items` (raw feature maps as the feature store keeps them): the unknown-item id embedding
        plus the mean embeddings of their category, brand, ... values. Unknown ids without features
        are `NotFound`: there is nothing to score them from.
        """
        if not item_ids:
            raise InvalidArgument("item_ids is empty; fix: pass at least one item id to rank")
        if len(item_ids) > MAX_RANK_ITEMS:
            raise InvalidArgument(f"item_ids has {len(item_ids)} ids; fix: pass at most {MAX_RANK_ITEMS}")
        idx = self.featurizer.items.lookup(list(item_ids))
        unknown_at = np.flatnonzero(idx < FIRST_ITEM)
        new_items = new_items or {}
        scorable = self.serves_new_items
        missing = [item_ids[int(j)] for j in unknown_at if not (scorable and new_items.get(item_ids[int(j)]))]
        if missing:
            shown = ", ".join(repr(u) for u in missing[:5]) + (" ..." if len(missing) > 5 else "")
            why = (
                "have no side features in the feature store; fix: store their features (python -m serving.features "
                "load --items ...) or rank only catalog items"
                if scorable
                else "cannot be scored by this model (it has no item side features); fix: rank only catalog items"
            )
            raise NotFound(
                f"item_ids: {len(missing)} unknown to model {self.version} ({shown}) and {why} "
                "(new items are learned at the next retrain)"
            )
        hist = self.featurizer.encode_states([user], float(now if now is not None else _now()))
        _, state = self._prepare(hist)
        if len(unknown_at) == 0:
            logits = self._rank_logits(hist, torch.from_numpy(idx).unsqueeze(0), None, state)  # (1, C)
        else:  # the same embeddings and scorer as Recommend's fresh items
            unknown = list(dict.fromkeys(item_ids[int(j)] for j in unknown_at))
            fresh = self.fresh_items({i: new_items[i] for i in unknown})
            base = len(self.featurizer.items)
            idx = idx.copy()
            idx[unknown_at] = [base + fresh.position[item_ids[int(j)]] for j in unknown_at]
            logits = self._score_fresh(idx[None, :], fresh, state)  # (1, C)
        return [float(x) for x in torch.sigmoid(logits[0])]

    def ranking_flops(self, n_requests: int, depth: int | None = None) -> float:
        """Matmul FLOPs of ranking `n_requests` requests at `depth` candidates each (None = the default
        depth) on the fast path (`recsys.fast.candidate_flops`): what decides whether a call is worth
        splitting over several intra-op threads (serving.batching)."""
        return n_requests * (depth or self.retrieval_depth) * candidate_flops(self.model.cfg)

    def score(self, hist: History, candidates: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """Ranker logits (B, C): the fast single-pass scorer, or the reference for unsupported configs."""
        if self.fast is not None:
            if self.precision == "bf16" and user is not None:
                user = user.to(torch.bfloat16)
            return self.fast.score(hist, candidates, user).float()
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

    def _lookup_known(
        self, item_ids: Sequence[str] | set[str] | frozenset[str], fresh: FreshItems | None = None
    ) -> np.ndarray:
        """Sorted unique candidate indices of the ids the model knows or `fresh` holds; other unknown ids
        are dropped (see Filters)."""
        if not item_ids:
            return np.zeros(0, np.int64)
        ids = list(item_ids)
        idx = self.featurizer.items.lookup(ids)
        known = idx[idx >= FIRST_ITEM]
        if fresh is not None:
            base = len(self.featurizer.items)
            extra = [base + fresh.position[i] for i in ids if i in fresh.position]  # never in the vocabulary
            known = np.concatenate([known, np.asarray(extra, dtype=np.int64)])
        return np.unique(known)

    def candidates(self, users: Sequence[UserState], depth: int, now: float | Sequence[float]) -> Candidates:
        """What `recommend_batch` orders for these users (seen items excluded, no other filter), with both
        stages' scores: the served top k at any depth d <= `depth` and blend weight w is `blend_order` of
        the first d candidates of each row (`Candidates.prefix`), as offline evaluation uses it to choose the
        serving depth and weight at export (`training.evaluate.choose_serving`)."""
        if not 1 <= depth <= MAX_RETRIEVAL_DEPTH:
            raise InvalidArgument(f"depth={depth} is out of range; fix: 1 <= depth <= {MAX_RETRIEVAL_DEPTH}")
        times = np.broadcast_to(np.asarray(now, dtype=np.float64), (len(users),))
        excluded = [self._lookup_known([e.item_id for e in u.history]) for u in users]
        return self._candidates(users, excluded, depth, None, times, None, True)

    def _candidates(
        self,
        users: Sequence[UserState],
        excluded: list[np.ndarray],
        depth: int,
        allow: np.ndarray | None,
        now: np.ndarray,
        fresh: FreshItems | None = None,
        blend: bool = False,
    ) -> Candidates:
        """Retrieve (or take the allowed items), drop each user's exclusions, keep `depth`, and score them
        with the ranker (and, with `blend`, with retrieval's inner product too), in retrieval's order."""
        hist = self.featurizer.encode_states(users, now)
        user, state = self._prepare(hist)  # (B, R) and the ranker's per-request part
        best: np.ndarray | None = None  # (B,) each user's best retrieval score over the catalogue, for a blend
        if allow is not None:  # rank exactly the allowed items, minus each user's exclusions
            rows = [allow[~np.isin(allow, ex)] for ex in excluded]
            if blend:
                best = self.retriever.search(user.float().numpy(), 1)[0][:, 0]
        else:  # over-fetch by the excluded count so that `depth` candidates survive the filter
            extra = max(len(ex) for ex in excluded)
            scores, found = self.retriever.search(user.float().numpy(), min(depth + extra, self.n_items))
            best = scores[:, 0].copy()
            if fresh is not None:  # new items compete on the same inner product, by brute force
                with torch.no_grad():
                    top = (user.float() @ fresh.vectors.T).topk(min(depth + extra, len(fresh)), dim=1)  # (B, n')
                scores = np.concatenate([scores, top.values.numpy()], axis=1)
                found = np.concatenate([found, top.indices.numpy() + len(self.featurizer.items)], axis=1)
                found = np.take_along_axis(found, np.argsort(-scores, axis=1, kind="stable"), axis=1)
            rows = [r[(r >= FIRST_ITEM) & ~np.isin(r, ex)][:depth] for r, ex in zip(found, excluded, strict=True)]
        width = max(1, max(len(r) for r in rows))
        cands = np.zeros((len(users), width), dtype=np.int64)  # 0 = padding, masked below
        for b, row in enumerate(rows):
            cands[b, : len(row)] = row
        if fresh is not None and (cands >= len(self.featurizer.items)).any():
            logits = self._score_fresh(cands, fresh, state)
        else:
            logits = self._rank_logits(hist, torch.from_numpy(cands), user, state)
        retrieval = None
        if blend and best is not None:
            retrieval = self._retrieval_scores(user, cands, fresh) - best[:, None].astype(np.float32)  # (B, C)
        return Candidates(cands, logits.float().numpy(), retrieval)

    def _retrieval_scores(self, user: Tensor, cands: np.ndarray, fresh: FreshItems | None) -> np.ndarray:
        """(B, C) inner products of the users' retrieval vectors with their candidates' item vectors: the
        scores FAISS ranked them by (exactly, for the flat and IVF indexes)."""
        base = len(self.featurizer.items)
        vecs = self._vectors[torch.from_numpy(np.where(cands < base, cands, 0))]  # (B, C, R)
        if fresh is not None and (cands >= base).any():
            where = torch.from_numpy(cands >= base)
            vecs[where] = fresh.vectors[torch.from_numpy(cands[cands >= base] - base)].float()
        with torch.no_grad():
            return torch.einsum("bd,bcd->bc", user.float(), vecs).numpy()  # (B, C)

    def _prepare(self, hist: History) -> tuple[Tensor, RankState | None]:
        """The retrieval vectors (B, R) and, on the fast path, the ranking state (through the state
        cache when there is one)."""
        if self.fast is None:
            with torch.inference_mode():
                return self.model.encode_user(hist), None
        return prepare_cached(self.fast, self.model.encode_user, hist, self.state_cache)

    def _rank_logits(self, hist: History, cands: Tensor, user: Tensor | None, state: RankState | None) -> Tensor:
        if state is not None and self.fast is not None:
            return self.fast.score_prepared(state, cands).float()
        return self.score(hist, cands, user)

    def _score_fresh(self, cands: np.ndarray, fresh: FreshItems, state: RankState | None) -> Tensor:
        """Ranker logits (B, C) for candidates among which some are fresh (index >= len(vocabulary)),
        from the prepared ranking state (`_prepare`)."""
        assert self.fast is not None and state is not None  # fresh items exist only for models that serve new items
        base = len(self.featurizer.items)
        is_fresh = cands >= base
        with torch.no_grad():
            ids = torch.from_numpy(np.where(is_fresh, UNK, cands))  # (B, C)
            rows, where = torch.from_numpy(cands[is_fresh] - base), torch.from_numpy(is_fresh)
            emb = self.fast.model.ranker_items(ids)  # (B, C, d)
            emb[where] = fresh.ranker[rows]
            if self.fast.model.ranks_in_retrieval_space:
                return self.fast.score_prepared(state, ids, emb).float()
            vec = self.fast.model.retrieval_items(ids)  # (B, C, R) the retrieval vectors, for the retrieval-score input
            vec[where] = fresh.vectors[rows].to(vec.dtype)
            return self.fast.score_prepared(state, ids, emb, vec).float()

    def _answer(
        self,
        idx: np.ndarray,
        scores: np.ndarray,
        excluded: np.ndarray,
        allow: np.ndarray | None,
        k: int,
        reason: str,
        fresh: FreshItems | None = None,
    ) -> Recommendation:
        keep = np.isfinite(scores)
        idx, scores = idx[keep], scores[keep]
        if len(idx) < k:  # top up from the popular list (too few candidates, or a cold start)
            pop = self._popular_idx
            mask = ~np.isin(pop, idx) & ~np.isin(pop, excluded)
            if allow is not None:
                mask &= np.isin(pop, allow)
            fill = np.flatnonzero(mask)[: k - len(idx)]
            # popularity shares (<= 1) scaled under the lowest ranked score: the list stays descending
            floor = float(scores.min()) if len(scores) else 1.0
            idx = np.concatenate([idx, pop[fill]])
            scores = np.concatenate([scores, floor * self._popular_score[fill] / max(self._popular_score[0], 1e-12)])
        base = len(self.featurizer.items)
        names = self.featurizer.items.decode(np.where(idx < base, idx, UNK))
        if fresh is not None:
            names = [fresh.ids[i - base] if i >= base else n for i, n in zip(idx.tolist(), names, strict=True)]
        return Recommendation(
            items=[ScoredItem(n, float(s)) for n, s in zip(names, scores, strict=True)],
            personalised=reason == "personalised",
            model_version=self.version,
            reason=reason,
        )


def _now() -> float:
    import time

    return time.time()
