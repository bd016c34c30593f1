"""The test examples every model is scored on, and the protocols beside `training.evaluate`'s.

- CTR: each leave-one-out test positive against one uniform negative with the same history and time,
  drawn with `training.pipeline.test_metrics`'s seed, so every model (the BST's own report included)
  is scored on identical pairs.
- Sampled-100: the held-out item ranked among 100 items drawn uniformly from those the user never
  clicked (SASRec, Kang & McAuley 2018; BERT4Rec, Sun et al. 2019). Reported because that literature
  does; it inflates metrics and can reorder models (Krichene & Rendle 2020), so full ranking is the
  headline protocol.

A model enters as a `CandidateScorer`: (examples, candidates (B, C)) -> scores (B, C).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from recsys.index import FIRST_ITEM
from training.baselines import history_of
from training.dataset import EncodedLog, Examples, Split, sample_negatives
from training.evaluate import batched

CandidateScorer = Callable[[Examples, Tensor], Tensor]

CTR_STREAM = 20_000  # training.pipeline.test_metrics draws its negatives from default_rng([seed, 20_000])
SAMPLED_STREAM = 30_000  # the sampled-100 negatives' stream, apart from every stream the trainer uses
N_SAMPLED = 100


def test_ctr_examples(data: EncodedLog, split: Split, seed: int) -> Examples:
    """The test positives, then one uniform negative per positive (same order): the pairs of
    `training.pipeline.test_metrics` for the same seed."""
    rng = np.random.default_rng([seed, CTR_STREAM])
    return Examples.concat([split.test, sample_negatives(data, split.test, 1, rng)])


def sample_unseen(data: EncodedLog, ex: Examples, seed: int, n: int = N_SAMPLED) -> np.ndarray:
    """(len(ex), n) items drawn uniformly without replacement from those the example's user never
    clicked (in the whole log, held-out items included, as SASRec's protocol). A user with fewer than
    `n` such items gets them with replacement."""
    rng = np.random.default_rng([seed, SAMPLED_STREAM])
    out = np.empty((len(ex), n), dtype=np.int64)
    n_items = data.n_items
    for row, u in enumerate(ex.user):
        clicked = np.unique(data.items[data.start[u] : data.stop[u]])
        free = n_items - FIRST_ITEM - int((clicked >= FIRST_ITEM).sum())
        if free <= 0:
            raise ValueError(f"user {data.user_ids[u]} clicked every item: no unseen item to sample")
        if free < n:
            pool = np.setdiff1d(np.arange(FIRST_ITEM, n_items), clicked)
            out[row] = rng.choice(pool, n, replace=True)
            continue
        got = np.zeros(0, dtype=np.int64)
        while len(got) < n:  # rejection: draw, drop clicked items and repeats, keep draw order
            draw = rng.integers(FIRST_ITEM, n_items, size=2 * n)
            draw = np.concatenate([got, draw[~np.isin(draw, clicked)]])
            _, first = np.unique(draw, return_index=True)
            got = draw[np.sort(first)]
        out[row] = got[:n]
    return out


def sampled_ranks(score: CandidateScorer, ex: Examples, negatives: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """0-based rank of each held-out item among [item; its negatives] (ties count against it)."""
    out = []
    for sl in batched(len(ex), batch_size):
        part = ex.subset(np.arange(sl.start, sl.stop))
        candidates = torch.from_numpy(np.concatenate([part.target[:, None], negatives[sl]], axis=1))  # (B, 1 + n)
        scores = score(part, candidates)  # (B, 1 + n)
        out.append((scores[:, 1:] >= scores[:, :1]).sum(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def target_scores(score: CandidateScorer, ex: Examples, batch_size: int = 1024) -> np.ndarray:
    """Each example's score for its own target (CTR metrics of a scorer without `forward`). (n,)."""
    out = []
    for sl in batched(len(ex), batch_size):
        part = ex.subset(np.arange(sl.start, sl.stop))
        out.append(score(part, torch.from_numpy(part.target[:, None].astype(np.int64)))[:, 0].numpy())
    return np.concatenate(out) if out else np.zeros(0)


# -- models as candidate scorers --------------------------------------------------------------------


def model_candidates(model: nn.Module, data: EncodedLog) -> CandidateScorer:
    """`model.score(history, candidates)`: the ranker's logits (the BST's, DIN's, ...)."""

    @torch.inference_mode()
    def score(ex: Examples, candidates: Tensor) -> Tensor:
        model.eval()
        return model.score(history_of(data, ex), candidates)

    return score


def retrieval_candidates(model: nn.Module, data: EncodedLog) -> CandidateScorer:
    """user vector . item vectors: a retrieval head (`encode_user`, `item_vectors`) on candidates."""

    @torch.inference_mode()
    def score(ex: Examples, candidates: Tensor) -> Tensor:
        model.eval()
        user = model.encode_user(history_of(data, ex))  # (B, d)
        return (model.item_vectors()[candidates] * user.unsqueeze(1)).sum(-1)  # (B, C)

    return score


def catalogue_candidates(full: Callable[[Examples], Tensor]) -> CandidateScorer:
    """A scorer of the whole catalogue ((B, N), e.g. ItemKNN's) restricted to candidates."""
    return lambda ex, candidates: full(ex).gather(1, candidates)
