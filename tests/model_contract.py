"""The BST contract: checks every model configuration must pass, each a plain function with its
contract in the docstring (scikit-learn style). `tests/test_model.py` runs them over configurations."""

from __future__ import annotations

import torch

from recsys.model import BST, History, ModelConfig


def random_history(cfg: ModelConfig, B: int, T: int, gen: torch.Generator, min_len: int = 0) -> History:
    lengths = torch.randint(min_len, T + 1, (B,), generator=gen)
    slots = torch.arange(T).expand(B, T)
    valid = slots >= (T - lengths).unsqueeze(1)  # left padding
    items = torch.randint(2, cfg.n_items, (B, T), generator=gen) * valid
    positions = torch.randint(2, cfg.n_positions, (B, T), generator=gen) * valid
    events = torch.randint(1, cfg.n_events, (B, T), generator=gen) * valid
    user = (
        torch.stack([torch.randint(0, n, (B,), generator=gen) for n in cfg.user_sizes], 1)
        if cfg.user_sizes
        else torch.zeros(B, 0, dtype=torch.long)
    )
    context = torch.randint(0, 8, (B, 2), generator=gen)
    return History(items, positions, events, user, context)


def check_deterministic(model: BST, hist: History, cands: torch.Tensor) -> None:
    """In eval mode the same inputs give the same scores, twice."""
    torch.testing.assert_close(model.score(hist, cands), model.score(hist, cands), rtol=0, atol=0)


def check_padding_invariant(model: BST, hist: History, cands: torch.Tensor) -> None:
    """Extra left padding does not change scores or the user vector."""
    pad = lambda x: torch.cat([torch.zeros_like(x[:, :3]), x], 1)  # noqa: E731
    padded = History(pad(hist.items), pad(hist.positions), pad(hist.events), hist.user, hist.context)
    # only meaningful while the padded window still fits both encoders
    if padded.items.shape[1] <= model.cfg.retrieval_len:
        torch.testing.assert_close(model.encode_user(padded), model.encode_user(hist), atol=1e-5, rtol=1e-5)
    cut = model.cfg.max_len
    if hist.items.shape[1] >= cut:  # the ranker reads the newest max_len either way
        torch.testing.assert_close(model.score(padded, cands), model.score(hist, cands), atol=1e-5, rtol=1e-5)


def check_candidates_do_not_see_each_other(model: BST, hist: History, cands: torch.Tensor) -> None:
    """Target invariance: permuting the candidates permutes their scores, and a candidate's score
    does not depend on which other candidates are scored with it."""
    perm = torch.randperm(cands.shape[1])
    torch.testing.assert_close(
        model.score(hist, cands[:, perm]), model.score(hist, cands)[:, perm], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(model.score(hist, cands[:, :1]), model.score(hist, cands)[:, :1], atol=1e-5, rtol=1e-5)


def check_history_matters(model: BST, hist: History, cands: torch.Tensor) -> None:
    """A different history gives different scores (the sequence is actually read)."""
    other = History(hist.items.roll(1, 0), hist.positions.roll(1, 0), hist.events.roll(1, 0), hist.user, hist.context)
    assert not torch.allclose(model.score(other, cands), model.score(hist, cands))


def check_state_dict_round_trip(model: BST, hist: History, cands: torch.Tensor) -> None:
    """A model rebuilt from its config and state dict scores identically."""
    clone = BST(model.cfg)
    clone.load_state_dict(model.state_dict())
    clone.eval()
    torch.testing.assert_close(clone.score(hist, cands), model.score(hist, cands), rtol=0, atol=0)
    torch.testing.assert_close(clone.encode_user(hist), model.encode_user(hist), rtol=0, atol=0)


def check_user_vector_is_the_causal_encoders_newest_position(model: BST, hist: History, cands: torch.Tensor) -> None:
    """`encode_user` (whose last block computes the newest position alone) equals the full causal
    encoder's newest output (each retrieval tower's, concatenated)."""
    items = hist.items[:, -model.cfg.retrieval_len :]
    full = torch.cat([model.encode_sequence(items, tower=t)[:, -1] for t in range(model.cfg.retrieval_towers)], 1)
    torch.testing.assert_close(model.encode_user(hist), full, atol=1e-5, rtol=1e-5)


CHECKS = [
    check_user_vector_is_the_causal_encoders_newest_position,
    check_deterministic,
    check_padding_invariant,
    check_candidates_do_not_see_each_other,
    check_history_matters,
    check_state_dict_round_trip,
]
