"""The model contract over several configurations, and the forward/training interface."""

from __future__ import annotations

import pytest
import torch

from recsys.model import BST, History, ModelConfig
from tests.model_contract import CHECKS, random_history

CONFIGS = {
    "paper_default": ModelConfig(n_items=60, side_sizes=(9,), side_widths=(1,), user_sizes=(4, 3)),
    "multi_valued_attrs": ModelConfig(
        n_items=60, side_sizes=(9, 30), side_widths=(1, 4), user_sizes=(), retrieval_blocks=1
    ),
    "two_blocks_flatten": ModelConfig(n_items=60, n_blocks=2, pooling="flatten", mlp_dims=(64, 32)),
    "ordinal": ModelConfig(n_items=60, position="ordinal", n_positions=60, max_len=10, retrieval_len=20),
}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("seed", [0, 1])
def test_contract(name: str, check, seed: int) -> None:
    cfg = CONFIGS[name]
    torch.manual_seed(seed)
    model = BST(cfg).eval()
    for j, w in enumerate(cfg.side_widths):  # fill the side tables as the data layer would
        getattr(model.items, f"side_table_{j}").copy_(torch.randint(0, cfg.side_sizes[j], (cfg.n_items, w)))
    gen = torch.Generator().manual_seed(seed)
    hist = random_history(cfg, B=4, T=cfg.retrieval_len, gen=gen, min_len=1)
    cands = torch.randint(2, cfg.n_items, (4, 7), generator=gen)
    with torch.no_grad():
        check(model, hist, cands)


def test_empty_history_scores_are_finite() -> None:
    cfg = CONFIGS["paper_default"]
    model = BST(cfg).eval()
    hist = random_history(cfg, B=3, T=cfg.max_len, gen=torch.Generator().manual_seed(0), min_len=0)
    empty = History(
        torch.zeros_like(hist.items),
        torch.zeros_like(hist.items),
        torch.zeros_like(hist.items),
        hist.user,
        hist.context,
    )
    with torch.no_grad():
        assert torch.isfinite(model.score(empty, torch.tensor([[2, 3], [4, 5], [6, 7]]))).all()
        assert torch.isfinite(model.encode_user(empty)).all()


def test_forward_returns_logits_and_a_loss_that_trains() -> None:
    cfg = ModelConfig(n_items=40, mlp_dims=(32,), d_model=32, n_heads=4, dropout=0.0)
    torch.manual_seed(0)
    model = BST(cfg)
    hist = random_history(cfg, B=32, T=cfg.retrieval_len, gen=torch.Generator().manual_seed(0), min_len=2)
    batch = dict(zip(History._fields, hist, strict=True))
    batch["target"] = hist.items[:, -1].clamp(min=2)  # learnable: "the target repeats the last item"
    batch["label"] = (torch.arange(32) % 2).float()
    batch["target"] = torch.where(batch["label"] > 0, batch["target"], torch.randint(2, 40, (32,)))
    logits, loss = model(batch)
    assert logits.shape == (32,) and loss.dim() == 0
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = loss.item()
    for _ in range(60):
        _, loss = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_config_rejects_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(n_items=10, d_model=30, n_heads=8)
    with pytest.raises(ValueError, match="retrieval_len"):
        ModelConfig(n_items=10, max_len=30, retrieval_len=20)
