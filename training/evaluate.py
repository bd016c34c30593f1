"""Offline metrics. Every function names its protocol.

- Next item, *full ranking*: the held-out item is ranked against every catalog item, items the user
  has already clicked excluded (the protocol of HSTU and "Turning Dross Into Gold Loss").
- Ranking (CTR): AUC (scikit-learn), GAUC (per-user AUC weighted by the user's examples, as in the
  DIN paper; users whose examples are all one class are skipped) and log loss, on held-out positives
  against the same negatives for every model.
- `served`: the exact pipeline the server runs (`Recommender.recommend_batch`: FAISS retrieval, BST
  ranking, seen items excluded), top 10.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score

from recsys.features import Event, UserState
from recsys.index import FIRST_ITEM
from recsys.model import BST, History
from recsys.recommender import Recommender, blend_order
from training.dataset import EncodedLog, Examples, model_device

K = 10


def rank_metrics(ranks: np.ndarray) -> dict[str, float]:
    """0-based ranks of the held-out item -> HR@10, NDCG@10, Recall@50 (one target: recall = hit)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if len(ranks) == 0:
        return {"hr@10": 0.0, "ndcg@10": 0.0, "recall@50": 0.0, "n": 0}
    hit = ranks < K
    return {
        "hr@10": float(hit.mean()),
        "ndcg@10": float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()),
        "recall@50": float((ranks < 50).mean()),
        "n": int(len(ranks)),
    }


def seen_items(data: EncodedLog, ex: Examples) -> list[np.ndarray]:
    return [data.items[data.start[u] : e] for u, e in zip(ex.user, ex.end, strict=True)]


def full_ranking_ranks(scores: torch.Tensor, targets: np.ndarray, seen: list[np.ndarray]) -> np.ndarray:
    """scores (B, N) over the whole vocabulary -> 0-based rank of each target among unseen items
    (ties count against the target)."""
    scores = scores.clone()
    scores[:, :FIRST_ITEM] = float("-inf")
    rows = np.concatenate([np.full(len(s), b) for b, s in enumerate(seen)]) if seen else np.zeros(0, int)
    cols = np.concatenate(seen) if seen else np.zeros(0, int)
    dev = scores.device
    if len(rows):
        scores[torch.from_numpy(rows).to(dev), torch.from_numpy(cols.astype(np.int64)).to(dev)] = float("-inf")
    t = torch.from_numpy(targets.astype(np.int64)).to(dev)
    target_score = scores.gather(1, t.unsqueeze(1))  # (B, 1)
    ranks = (scores >= target_score).sum(1).cpu().numpy() - 1
    # a held-out item the user had already clicked cannot be recommended when seen items are
    # excluded (as served): it counts as a miss, for every model alike
    return np.where(torch.isneginf(target_score[:, 0]).cpu().numpy(), scores.shape[1], ranks)


def batched(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


@torch.inference_mode()
def user_vectors(model: BST, data: EncodedLog, ex: Examples, limit: int = 1000) -> np.ndarray:
    """Retrieval-head user vectors (n, d) of the first `limit` examples: realistic FAISS queries."""
    model.eval()
    part = ex.subset(np.arange(min(limit, len(ex))))
    if len(part) == 0:
        return np.zeros((0, model.retrieval_dim), np.float32)
    batch = data.batch(part, model_device(model))
    return model.encode_user(History(*(batch[f] for f in History._fields))).float().cpu().numpy()  # (n, d)


@torch.inference_mode()
def retrieval_ranks(model: BST, data: EncodedLog, ex: Examples, batch_size: int = 512) -> np.ndarray:
    """Full ranking by the retrieval head (user vector . item vectors)."""
    model.eval()
    vectors = model.item_vectors()  # (N, d)
    out = []
    for sl in batched(len(ex), batch_size):
        part = ex.subset(np.arange(sl.start, sl.stop))
        batch = data.batch(part, model_device(model))
        hist = History(*(batch[f] for f in History._fields))
        scores = model.encode_user(hist) @ vectors.T  # (B, N)
        out.append(full_ranking_ranks(scores, part.target, seen_items(data, part)))
    return np.concatenate(out) if out else np.zeros(0)


def score_ranks(
    scorer: Callable[[Examples], torch.Tensor], data: EncodedLog, ex: Examples, batch_size: int = 256
) -> np.ndarray:
    """Full ranking by any scorer giving (B, N) scores for a batch of examples (baselines)."""
    out = []
    for sl in batched(len(ex), batch_size):
        part = ex.subset(np.arange(sl.start, sl.stop))
        out.append(full_ranking_ranks(scorer(part), part.target, seen_items(data, part)))
    return np.concatenate(out) if out else np.zeros(0)


@torch.inference_mode()
def ctr_logits(model: BST, data: EncodedLog, ex: Examples, batch_size: int = 1024) -> np.ndarray:
    model.eval()
    out = []
    for sl in batched(len(ex), batch_size):
        logits, _ = model(data.batch(ex.subset(np.arange(sl.start, sl.stop)), model_device(model)))
        out.append(logits.cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-user AUC weighted by the user's number of examples; single-class users skipped."""
    total, weight = 0.0, 0
    order = np.argsort(users, kind="stable")
    users, labels, scores = users[order], labels[order], scores[order]
    bounds = np.flatnonzero(np.diff(users)) + 1
    for lab, sc in zip(np.split(labels, bounds), np.split(scores, bounds), strict=True):
        if 0 < lab.sum() < len(lab):
            total += roc_auc_score(lab, sc) * len(lab)
            weight += len(lab)
    return total / weight if weight else float("nan")


def ctr_metrics(users: np.ndarray, labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    probs = torch.sigmoid(torch.from_numpy(logits.astype(np.float64))).numpy()  # no overflow warning for large |logits|
    return {
        "auc": float(roc_auc_score(labels, logits)),
        "gauc": float(gauc(users, labels, logits)),
        "logloss": float(log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7), labels=[0, 1])),
    }


def user_states(data: EncodedLog, ex: Examples, max_history: int) -> list[UserState]:
    """The users' histories as the feature store would hold them (raw ids), for `served`."""
    tokens = data.featurizer.items.tokens
    ev = data.featurizer.events.tokens
    states = []
    for u, e in zip(ex.user, ex.end, strict=True):
        lo = max(data.start[u], e - max_history)
        hist = tuple(
            Event(tokens[i], float(t), ev[k])
            for i, t, k in zip(data.items[lo:e], data.times[lo:e], data.events[lo:e], strict=True)
        )
        states.append(UserState(history=hist, profile=data.profiles.get(str(data.user_ids[u]), {})))
    return states


def served_ranks(
    rec: Recommender,
    data: EncodedLog,
    ex: Examples,
    max_history: int = 200,
    batch_size: int = 256,
    depth: int | None = None,
) -> np.ndarray:
    """Ranks (K for a miss) of held-out items in the served top 10: retrieval, BST, seen excluded.
    Each example is served at its own time, so time-gap positions match training."""
    ranks = np.full(len(ex), K, dtype=np.int64)
    for sl in batched(len(ex), batch_size):
        part = ex.subset(np.arange(sl.start, sl.stop))
        states = user_states(data, part, max_history)
        answers = rec.recommend_batch(states, K, exclude_seen=True, now=part.time.astype(np.float64), depth=depth)
        for j, (answer, target) in enumerate(zip(answers, part.target, strict=True)):
            ids = [x.item_id for x in answer.items]
            name = data.featurizer.items.tokens[target]
            if name in ids:
                ranks[sl.start + j] = ids.index(name)
    return ranks


def served_metrics(rec: Recommender, data: EncodedLog, ex: Examples, depth: int | None = None) -> dict[str, float]:
    """HR@10 and NDCG@10 of the served top 10 (`served_ranks`). Recall@50 is left out: a top 10 has no
    50th place."""
    return served_from_ranks(served_ranks(rec, data, ex, depth=depth))


def served_grid(
    rec: Recommender,
    data: EncodedLog,
    ex: Examples,
    depths: Sequence[int],
    blends: Sequence[float],
    max_history: int = 200,
    batch_size: int = 256,
) -> dict[float, dict[int, dict[str, float]]]:
    """Served HR@10 / NDCG@10 over `ex` at every depth and blend weight, {w: {depth: metrics}}, from one
    retrieval and ranking pass at the deepest depth (`Recommender.candidates`): a request of depth d
    ranks the first d of those candidates, and `blend_order` is the server's own ordering, so each cell
    is what `served_metrics` gives for a recommender at that depth and weight (a test holds them equal)."""
    ranks = {(d, w): np.full(len(ex), K, dtype=np.int64) for d in depths for w in blends}
    for sl in batched(len(ex), batch_size):
        part = ex.subset(np.arange(sl.start, sl.stop))
        found = rec.candidates(user_states(data, part, max_history), max(depths), part.time.astype(np.float64))
        targets = rec.featurizer.items.lookup([data.featurizer.items.tokens[t] for t in part.target])  # rec's ids
        for d in depths:
            for w in blends:
                for j, (idx, _) in enumerate(blend_order(found.prefix(d), w, K)):
                    at = np.flatnonzero(idx == targets[j])
                    if len(at):
                        ranks[d, w][sl.start + j] = at[0]
    return {w: {d: served_from_ranks(ranks[d, w]) for d in depths} for w in blends}


def served_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    return {k: v for k, v in rank_metrics(ranks).items() if k != "recall@50"}


def choose_serving(
    rec: Recommender,
    data: EncodedLog,
    ex: Examples,
    depths: Sequence[int],
    blends: Sequence[float] = (0.0,),
    metric: str = "ndcg@10",
) -> tuple[int, float, dict[float, dict[int, dict[str, float]]]]:
    """The retrieval depth (candidates the ranker orders) and blend weight (`blend_order`) whose served
    top 10 scores best on `metric` over `ex`, a validation set: ties go to the smaller depth, which also
    serves faster, then to the smaller weight. Returns both and the whole grid (`served_grid`). A ranker
    can order retrieval's first few candidates better than retrieval and still bury the held-out item
    under a long list's weaker ones; the blend lets retrieval's confidence temper it."""
    grid = served_grid(rec, data, ex, sorted(set(depths)), sorted(set(blends)))
    best = max(((d, w) for w in grid for d in grid[w]), key=lambda dw: (grid[dw[1]][dw[0]][metric], -dw[0], -dw[1]))
    return best[0], best[1], grid
