"""The model contract over several configurations, and the forward/training interface."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.model import BST, History, ModelConfig, listwise_loss, next_item_loss
from tests.model_contract import CHECKS, random_history
from training.baselines import SASRec, SASRecConfig
from training.dataset import Examples, dense_ranks, narrow
from training.trainer import grouped_permutation

CONFIGS = {
    "paper_default": ModelConfig(n_items=60, side_sizes=(9,), side_widths=(1,), user_sizes=(4, 3)),
    "multi_valued_attrs": ModelConfig(
        n_items=60, side_sizes=(9, 30), side_widths=(1, 4), user_sizes=(), retrieval_blocks=1
    ),
    "two_blocks_flatten": ModelConfig(n_items=60, n_blocks=2, pooling="flatten", mlp_dims=(64, 32)),
    "ordinal": ModelConfig(n_items=60, position="ordinal", n_positions=60, max_len=10, retrieval_len=20),
    "ranker_own_items": ModelConfig(
        n_items=60, side_sizes=(9, 30), side_widths=(1, 4), ranker_items="own", retrieval_heads=2
    ),
    "retrieval_towers": ModelConfig(n_items=60, side_sizes=(9, 30), side_widths=(1, 4), retrieval_towers=2),
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


@pytest.mark.parametrize(
    "name", ["paper_default", "multi_valued_attrs", "ordinal", "ranker_own_items", "retrieval_towers"]
)
def test_training_ranker_path_equals_every_block_over_every_position(name: str) -> None:
    """`score(every_position=False)` (what `forward` trains) computes the last block for the target's
    query alone; it equals the reference, every block over every position, padding included."""
    cfg = CONFIGS[name]
    for n_blocks, sees in ((cfg.n_blocks, True), (2, False), (2, True)):
        torch.manual_seed(n_blocks)
        model = BST(dataclasses.replace(cfg, n_blocks=n_blocks, history_sees_target=sees)).eval()
        hist = random_history(model.cfg, B=5, T=cfg.retrieval_len, gen=torch.Generator().manual_seed(3), min_len=0)
        cands = torch.randint(2, cfg.n_items, (5, 6), generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            reference = model.score(hist, cands)
            torch.testing.assert_close(model.score(hist, cands, every_position=False), reference, atol=1e-5, rtol=1e-5)
            batch = dict(zip(History._fields, hist, strict=True))
            batch |= {"target": cands[:, 0], "label": torch.ones(5)}
            torch.testing.assert_close(model(batch)[0], reference[:, 0], atol=1e-5, rtol=1e-5)


def test_every_table_summed_into_a_token_starts_at_one_scale() -> None:
    """Item ids, side features, positions, events and the retrieval slots are added together into
    each token: all start from N(0, 0.02) with a zero padding row, so no part drowns the others (the
    default N(0, 1) positions had been 50 times the item embeddings). The SASRec baseline alike."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=5000, side_sizes=(3000,), side_widths=(2,), n_events=400, n_positions=400)
    model = BST(cfg)
    tables = {
        "ids": model.items.ids,
        "sides": model.items.sides[0],
        "position": model.position,
        "event": model.event,
        "slot": model.slot,
        "sasrec slot": SASRec(SASRecConfig(n_items=5000, max_len=400)).slot,
    }
    for name, emb in tables.items():
        w = emb.weight.detach()
        if emb.padding_idx is not None:
            assert not w[emb.padding_idx].any(), f"{name}: padding row must be zero"
            w = torch.cat([w[: emb.padding_idx], w[emb.padding_idx + 1 :]])
        assert 0.018 < float(w.std()) < 0.022, f"{name}: std {float(w.std()):.4f}, expected 0.02"


def test_served_user_encodes_each_distinct_history_once_with_the_same_numbers() -> None:
    cfg = CONFIGS["paper_default"]
    model = BST(cfg).train()  # served_user switches to eval mode itself
    hist = random_history(cfg, B=4, T=cfg.retrieval_len, gen=torch.Generator().manual_seed(0), min_len=0)
    rows = torch.tensor([2, 0, 2, 1, 3, 0, 2])  # duplicates, in no order
    items = hist.items[rows]
    got = model.served_user(items)
    model.eval()
    with torch.no_grad():
        want = torch.stack([model.encode_sequence(items[i : i + 1], last_only=True)[0, -1] for i in range(len(rows))])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert model.training is False and not got.requires_grad


def test_grouped_permutation_keeps_a_positive_and_its_negatives_together() -> None:
    rng = np.random.default_rng(0)
    n_hist = 50
    user, end = rng.integers(0, 7, n_hist), rng.permutation(1000)[:n_hist]  # 50 distinct histories
    copies = rng.integers(1, 4, n_hist)  # a positive and 0-2 negatives each
    idx = np.repeat(np.arange(n_hist), copies)
    ex = Examples(user[idx], end[idx], rng.integers(2, 90, len(idx)), np.ones(len(idx), np.float32), end[idx] * 10)
    orders = [grouped_permutation(ex, np.random.default_rng(seed)) for seed in (1, 2)]
    for perm in orders:
        assert sorted(perm.tolist()) == list(range(len(ex)))  # a permutation
        seq = idx[perm]
        assert len([i for i in range(len(seq)) if i == 0 or seq[i] != seq[i - 1]]) == n_hist  # groups contiguous
    assert not np.array_equal(idx[orders[0]], idx[orders[1]])  # the groups' order is random


def test_listwise_loss_is_each_positive_softmaxed_against_its_groups_negatives() -> None:
    """Against a per-group loop: -log(e^pos / (e^pos + sum over the group's negatives)); positives
    without a negative in their group take no loss, nor those `listed` leaves out (which do not become
    negatives either); large logits stay finite."""
    gen = torch.Generator().manual_seed(0)
    group = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4])
    labels = torch.tensor([1, 0, 0, 0, 1, 1, 0, 1, 0, 1, 0], dtype=torch.float32)  # group 2: no negative

    def loop(logits: torch.Tensor, listed: torch.Tensor) -> torch.Tensor:
        want = []
        for g in group.unique():
            members = group == g
            negs = logits[members & (labels < 0.5)]
            for p in logits[members & (labels > 0.5) & listed]:
                if len(negs):
                    want.append(torch.logsumexp(torch.cat([p.view(1), negs]), 0) - p)
        return torch.stack(want).mean()

    everyone = torch.ones(len(group), dtype=torch.bool)
    for scale in (1.0, 300.0):
        logits = (torch.randn(len(group), generator=gen) * scale).requires_grad_()
        got = listwise_loss(logits, labels, group)
        torch.testing.assert_close(got, loop(logits, everyone))
        assert torch.isfinite(got)
        got.backward()
        assert torch.isfinite(logits.grad).all() and logits.grad[5] == 0  # group 2's lone positive
    listed = everyone.clone()
    listed[[0, 7]] = False  # group 0's positive, and one of group 3's two
    torch.testing.assert_close(listwise_loss(logits, labels, group, listed), loop(logits, listed))
    assert listwise_loss(logits, labels, group, listed) != listwise_loss(logits, labels, group)
    none = listwise_loss(torch.randn(3, requires_grad=True), torch.zeros(3), torch.tensor([0, 1, 1]))
    assert none.item() == 0.0 and none.requires_grad  # no positive: zero, and still differentiable


def test_listwise_weight_adds_the_listwise_term_to_forward_when_groups_are_given() -> None:
    cfg = ModelConfig(n_items=40, mlp_dims=(32,), d_model=32, n_heads=4, dropout=0.0, retrieval_weight=0.0)
    torch.manual_seed(0)
    model = BST(cfg).eval()
    hist = random_history(cfg, B=6, T=cfg.retrieval_len, gen=torch.Generator().manual_seed(1), min_len=2)
    batch = dict(zip(History._fields, hist, strict=True)) | {"target": torch.randint(2, 40, (6,))}
    batch["label"] = torch.tensor([1.0, 0, 0, 1, 0, 0])
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    with torch.no_grad():
        logits, pointwise = model(batch)
        model.cfg = dataclasses.replace(cfg, listwise_weight=0.5)
        assert model(batch)[1] == pointwise  # no groups in the batch: the log loss alone
        _, both = model(batch | {"group": group})
    torch.testing.assert_close(both, pointwise + 0.5 * listwise_loss(logits, batch["label"], group))
    with pytest.raises(ValueError, match="listwise_weight=-1"):
        ModelConfig(n_items=10, listwise_weight=-1)


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


def test_a_ranker_with_its_own_item_tables_never_moves_the_retrieval_space() -> None:
    """`ranker_items="own"`: the CTR loss reaches the ranker's item tables and none of the retrieval
    ones (the ids and side values FAISS indexes); the next-item loss reaches the retrieval tables and
    none of the ranker's. Both read the one item -> side-value table, saved once."""
    cfg = CONFIGS["ranker_own_items"]
    torch.manual_seed(0)
    model = BST(cfg)
    assert not any(k.startswith("ranker_embedding.side_table") for k in model.state_dict())
    for j, w in enumerate(cfg.side_widths):  # fill the side tables as the data layer would
        getattr(model.items, f"side_table_{j}").copy_(torch.randint(0, cfg.side_sizes[j], (cfg.n_items, w)))
    hist = random_history(cfg, B=8, T=cfg.retrieval_len, gen=torch.Generator().manual_seed(0), min_len=2)
    batch = dict(zip(History._fields, hist, strict=True)) | {"target": hist.items[:, -1].clamp(min=2)}
    batch["label"] = (torch.arange(8) % 2).float()
    ranker = list(model.ranker_items.parameters())
    retrieval = list(model.items.parameters())
    for weight, touched, untouched in ((0.0, ranker, retrieval), (1.0, retrieval, None)):
        model.zero_grad(set_to_none=True)
        model.cfg = dataclasses.replace(cfg, retrieval_weight=weight)
        model(batch)[1].backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in touched)
        if untouched is not None:
            assert all(p.grad is None or not p.grad.any() for p in untouched)
    model.zero_grad(set_to_none=True)
    next_loss = model.next_item_loss(model.encode_sequence(hist.items), hist.items.roll(-1, dims=1))
    next_loss.backward()
    assert all(p.grad is None for p in ranker)


# a one-tower model's retrieval encoder -> the same parts of a second tower
TOWER_KEYS = {"items.ids.": "towers.0.items.ids.", "items.sides.": "towers.0.items.sides.", "slot.": "towers.0.slot."}
TOWER_KEYS |= {"retrieval_blocks.": "towers.0.blocks.", "retrieval_norm.": "towers.0.norm."}


def one_tower_models(model: BST) -> list[BST]:
    """One one-tower model per retrieval tower of `model`, holding that tower's weights as its retrieval
    encoder and every other weight of `model`."""
    state = model.state_dict()
    mine = {k: v for k, v in state.items() if not k.startswith("towers.")}
    out = []
    for tower in range(model.cfg.retrieval_towers):
        single = BST(dataclasses.replace(model.cfg, retrieval_towers=1))
        renamed = {k: state[TOWER_KEYS[p] + k.removeprefix(p)] for k in mine for p in TOWER_KEYS if k.startswith(p)}
        single.load_state_dict(mine | (renamed if tower else {}))
        out.append(single)
    return out


@pytest.mark.parametrize("ranker_items", ["shared", "own"])
def test_two_retrieval_towers_score_as_two_one_tower_models_summed(ranker_items: str) -> None:
    """`retrieval_towers=2`, an ensemble in one model: its user and item vectors are those of two
    one-tower models holding each tower's weights, concatenated, so the inner product FAISS takes is the
    sum of the two models' retrieval scores."""
    cfg = dataclasses.replace(CONFIGS["retrieval_towers"], ranker_items=ranker_items)
    torch.manual_seed(0)
    model = BST(cfg).eval()
    for j, w in enumerate(cfg.side_widths):  # fill the side tables as the data layer would
        getattr(model.items, f"side_table_{j}").copy_(torch.randint(0, cfg.side_sizes[j], (cfg.n_items, w)))
    singles = [s.eval() for s in one_tower_models(model)]
    hist = random_history(cfg, B=6, T=cfg.retrieval_len, gen=torch.Generator().manual_seed(1), min_len=1)
    with torch.no_grad():
        user, vectors = model.encode_user(hist), model.item_vectors()
        assert user.shape == (6, model.retrieval_dim) and vectors.shape == (cfg.n_items, 2 * cfg.d_model)
        want = sum(s.encode_user(hist) @ s.item_vectors().T for s in singles)  # (B, N)
        torch.testing.assert_close(user @ vectors.T, want, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(singles[0].item_vectors(), singles[1].item_vectors())  # two tables
        cands = torch.randint(2, cfg.n_items, (6, 5), generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(model.retrieval_items(cands), vectors[cands])


def test_each_retrieval_tower_trains_on_its_own_next_item_softmax() -> None:
    """Training two towers is training two retrieval encoders independently: `forward`'s loss adds each
    tower's own next-item loss, and each tower's gradients are those of its one-tower model's next-item
    loss (the ranker's own tables and the detached retrieval score keep the CTR loss off both)."""
    cfg = dataclasses.replace(CONFIGS["retrieval_towers"], ranker_items="own", dropout=0.0)
    torch.manual_seed(0)
    model = BST(cfg).train()
    singles = one_tower_models(model)
    hist = random_history(cfg, B=6, T=cfg.retrieval_len, gen=torch.Generator().manual_seed(1), min_len=2)
    windows = hist.items[:, -cfg.retrieval_len :]
    nxt = windows.roll(-1, dims=1) * (windows > 0)  # (B, T) the next item at each position
    batch = dict(zip(History._fields, hist, strict=True)) | {"target": hist.items[:, -1].clamp(min=2)}
    batch |= {"label": (torch.arange(6) % 2).float(), "next_items": windows, "next_targets": nxt}
    model(batch)[1].backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    for tower, single in enumerate(singles):
        single.train().next_item_loss(single.encode_sequence(windows), nxt).backward()
        for name, p in single.named_parameters():
            prefix = next((q for q in TOWER_KEYS if name.startswith(q)), None)
            if prefix is None:
                continue  # not a retrieval encoder's weight
            mine = TOWER_KEYS[prefix] + name.removeprefix(prefix) if tower else name
            torch.testing.assert_close(grads[mine], p.grad, atol=1e-6, rtol=1e-5)


def test_config_rejects_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(n_items=10, d_model=30, n_heads=8)
    with pytest.raises(ValueError, match="retrieval_heads=3"):
        ModelConfig(n_items=10, retrieval_heads=3)
    with pytest.raises(ValueError, match="retrieval_towers=0 must be >= 1"):
        ModelConfig(n_items=10, retrieval_towers=0)
    with pytest.raises(ValueError, match="retrieval_len"):
        ModelConfig(n_items=10, max_len=30, retrieval_len=20)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=f"retrieval_label_smoothing={bad}"):
            ModelConfig(n_items=10, retrieval_label_smoothing=bad)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_next_item_loss_is_cross_entropy_over_real_items_with_the_smoothing_spread_over_them(smoothing: float) -> None:
    """-(1 - s) log p(target) - s * mean over real items of log p(item), p a softmax over items 2..N-1
    (padding and unknown are never predicted, nor smoothed towards); positions with target 0 or 1 take
    no loss. Computed here in float64 numpy from the definition."""
    gen = torch.Generator().manual_seed(3)
    hidden, vectors = torch.randn(4, 6, 8, generator=gen), torch.randn(30, 8, generator=gen)
    targets = torch.randint(0, 30, (4, 6), generator=gen)
    targets[0, :3] = torch.tensor([0, 1, 0])  # no loss at these
    got = next_item_loss(hidden, targets, vectors, temperature=0.5, label_smoothing=smoothing).item()
    h, v, t = hidden.double().numpy(), vectors.double().numpy(), targets.numpy()
    losses = []
    for s_, p_ in zip(*np.nonzero(t > 1), strict=True):
        z = h[s_, p_] @ v[2:].T / 0.5  # scores of the real items
        logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
        losses.append(-(1 - smoothing) * logp[t[s_, p_] - 2] - smoothing * logp.mean())
    assert got == pytest.approx(float(np.mean(losses)), rel=1e-5)
    # the SASRec baseline trains with the BST's setting, so bench.quality compares like with like
    assert (
        SASRecConfig.from_model(ModelConfig(n_items=10, retrieval_label_smoothing=smoothing)).label_smoothing
        == smoothing
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-(2**40), 2**40), max_size=200), st.integers(1, 5))
def test_dense_ranks_equal_numpys_unique_inverse(values: list[int], spread: int) -> None:
    """`training.dataset.dense_ranks` (the history groups of an epoch) equals numpy's
    `unique(return_inverse=True)` on any keys, repeated ones included."""
    key = np.array(values * spread, dtype=np.int64)
    np.testing.assert_array_equal(dense_ranks(key), np.unique(key, return_inverse=True)[1].reshape(-1))


def test_concat_returns_a_single_filled_part_itself_and_concatenates_several() -> None:
    """`Examples.concat` (the training split: positives, then the log's shown-not-clicked rows) does not
    copy a part when every other part is empty: on a click-only log of 20 million events that copy had
    doubled `leave_one_out`'s peak (README, Large logs). Several filled parts are concatenated in order."""

    def rows(n: int, first: int) -> Examples:
        r = np.arange(first, first + n, dtype=np.int64)
        return Examples(r % 3, r + 1, r + 2, np.ones(n, np.float32), r * 10.0)

    part, empty, other = rows(4, 0), rows(0, 0), rows(2, 100)
    assert Examples.concat([part, empty]) is part
    assert Examples.concat([empty, part]) is part
    both = Examples.concat([part, empty, other])
    for f in Examples.FIELDS:
        np.testing.assert_array_equal(getattr(both, f), np.concatenate([getattr(part, f), getattr(other, f)]))
    assert len(Examples.concat([empty, empty])) == 0


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 2**40))
def test_narrow_keeps_every_index_in_the_smallest_integer_type_that_holds_it(n: int) -> None:
    """`training.dataset.narrow` (the encoded log's per-event arrays and the training split's rows): the
    same values, in int8 up to 128 distinct indices, int16 up to 32,768, int32 up to 2^31, else int64."""
    indices = np.array([0, n // 2, n - 1], np.int64)
    got = narrow(indices, n)
    np.testing.assert_array_equal(got, indices)
    want = np.int8 if n <= 2**7 else np.int16 if n <= 2**15 else np.int32 if n <= 2**31 else np.int64
    assert got.dtype == want
