"""The baselines of the BST paper's comparison (Chen et al. 2019, table 2), on the BST's own inputs (the
`History` tensors) and trained by the same loop (`training.trainer.fit`):

- `WideDeep` (WDL): target item + user profile + context -> MLP, plus a wide linear part. No sequence.
- `WideDeepSeq` (WDL(+Seq)): WDL plus the mean of the behaviours' embeddings.
- `DIN`: target attention over the behaviours (the DIN activation unit, no softmax) -> MLP.
- `SASRec`: next-item retrieval, a causal Transformer trained with full-softmax cross-entropy at every
  position: the BST's retrieval head trained alone.
- `MostPopular` and `ItemKNN`: non-neural scorers of the whole catalogue, fitted on training clicks.

Read top to bottom: configs, shared parts, the three CTR models, SASRec, the non-neural scorers, then
the adapters that turn any of them into the `(B, N)` scorer `training.evaluate.score_ranks` ranks.

Every neural baseline has `score(history, candidates) -> (B, C)` and `forward(batch) -> (logits, loss)`.
Item embeddings are `recsys.model.ItemEmbedding` (id + side features), sized from the BST's
`ModelConfig`, so a comparison changes the architecture only. The CTR baselines read what the paper's
baselines read: no time-gap positions and no event types (those are the BST's additions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp  # scikit-learn's dependency; training.evaluate already needs scikit-learn
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.index import FIRST_ITEM
from recsys.model import Block, History, ItemEmbedding, ModelConfig, key_mask, next_item_loss, token_embedding
from training.dataset import EncodedLog, Examples, Split

# ---------------------------------------------------------------------------------------------------
# Configs


@dataclass(frozen=True)
class CTRConfig:
    """WDL, WDL(+Seq) and DIN. `from_model` copies the BST's vocabularies and widths."""

    n_items: int  # item vocabulary size, padding (0) and unknown (1) included
    side_sizes: tuple[int, ...] = ()  # vocabulary size of each categorical item column
    side_widths: tuple[int, ...] = ()  # values per item of each column (>1 for multi-valued attributes)
    user_sizes: tuple[int, ...] = ()  # vocabulary size of each user profile column
    max_len: int = 20  # behaviours read: the BST ranker's window, so every model sees the same history
    d_model: int = 64  # item embedding width: the BST's, so the item tables are the same size
    d_feature: int = 16  # width of each profile and context embedding: the BST's
    mlp_dims: tuple[int, ...] = (1024, 512, 256)  # the BST's (and the paper's) MLP
    attention_dims: tuple[int, ...] = (80, 40)  # DIN only: the activation unit's hidden layers (DIN paper)
    dropout: float = 0.2  # on the MLP's hidden layers

    @classmethod
    def from_model(cls, cfg: ModelConfig, **changes: Any) -> CTRConfig:
        base = cls(
            n_items=cfg.n_items,
            side_sizes=cfg.side_sizes,
            side_widths=cfg.side_widths,
            user_sizes=cfg.user_sizes,
            max_len=cfg.max_len,
            d_model=cfg.d_model,
            d_feature=cfg.d_feature,
            mlp_dims=cfg.mlp_dims,
            dropout=cfg.dropout,
        )
        return dataclasses.replace(base, **changes)

    def item_config(self) -> ModelConfig:
        """The fields `recsys.model.ItemEmbedding` reads."""
        return ModelConfig(
            n_items=self.n_items,
            side_sizes=self.side_sizes,
            side_widths=self.side_widths,
            d_model=self.d_model,
            n_heads=1,
        )


@dataclass(frozen=True)
class SASRecConfig:
    """SASRec (Kang & McAuley 2018) with the BST retrieval head's sizes and objective."""

    n_items: int  # item vocabulary size, padding (0) and unknown (1) included
    side_sizes: tuple[int, ...] = ()  # vocabulary size of each categorical item column
    side_widths: tuple[int, ...] = ()  # values per item of each column
    max_len: int = 50  # behaviours read: the BST retrieval encoder's window (`retrieval_len`)
    d_model: int = 64  # token and item-vector width
    n_heads: int = 8  # attention heads (the BST's)
    n_blocks: int = 2  # causal blocks (the BST's `retrieval_blocks`; SASRec's own default is 2 too)
    ffn_mult: int = 4  # feed-forward width = ffn_mult * d_model
    dropout: float = 0.2  # on embeddings and residual branches
    temperature: float = 1.0  # softmax temperature of the next-item objective
    label_smoothing: float = 0.0  # of the next-item objective (the BST's `retrieval_label_smoothing`)
    side_features: bool = True  # item vectors sum side features as the BST's do (SASRec itself: ids only)

    @classmethod
    def from_model(cls, cfg: ModelConfig, **changes: Any) -> SASRecConfig:
        base = cls(
            n_items=cfg.n_items,
            side_sizes=cfg.side_sizes,
            side_widths=cfg.side_widths,
            max_len=cfg.retrieval_len,
            d_model=cfg.d_model,
            n_heads=cfg.n_heads,
            n_blocks=cfg.retrieval_blocks,
            ffn_mult=cfg.ffn_mult,
            dropout=cfg.dropout,
            temperature=cfg.retrieval_temperature,
            label_smoothing=cfg.retrieval_label_smoothing,
        )
        return dataclasses.replace(base, **changes)

    def block_config(self) -> ModelConfig:
        """The fields `ItemEmbedding` and `Block` read."""
        sides = self.side_features
        return ModelConfig(
            n_items=self.n_items,
            side_sizes=self.side_sizes if sides else (),
            side_widths=self.side_widths if sides else (),
            d_model=self.d_model,
            n_heads=self.n_heads,
            ffn_mult=self.ffn_mult,
            dropout=self.dropout,
        )


# ---------------------------------------------------------------------------------------------------
# Shared parts


def mlp(width: int, dims: Sequence[int], dropout: float, act: type[nn.Module] = nn.LeakyReLU) -> nn.Sequential:
    """width -> dims... -> 1, with `act` and dropout after each hidden layer (as the BST's MLP)."""
    layers: list[nn.Module] = []
    for out in dims:
        layers += [nn.Linear(width, out), act(), nn.Dropout(dropout)]
        width = out
    return nn.Sequential(*layers, nn.Linear(width, 1))


class RequestFeatures(nn.Module):
    """User profile and context (hour, weekday) embeddings, concatenated as the BST's. (B, F)."""

    def __init__(self, user_sizes: Sequence[int], d: int):
        super().__init__()
        self.user = nn.ModuleList(nn.Embedding(n, d, padding_idx=0) for n in user_sizes)
        self.hour = nn.Embedding(25, d, padding_idx=0)
        self.weekday = nn.Embedding(8, d, padding_idx=0)
        self.width = d * (len(user_sizes) + 2)

    def forward(self, history: History) -> Tensor:
        parts = [emb(history.user[:, j]) for j, emb in enumerate(self.user)]
        parts += [self.hour(history.context[:, 0]), self.weekday(history.context[:, 1])]
        return torch.cat(parts, dim=-1)


class Wide(nn.Module):
    """WDL's wide part: a linear model over the sparse ids, one learned weight per id of each field
    (target item, its side features, profile columns, hour, weekday), summed. Starts at zero, so an
    untrained WDL is its deep part."""

    def __init__(self, cfg: CTRConfig):
        super().__init__()
        self.item = nn.Embedding(cfg.n_items, 1, padding_idx=0)
        self.sides = nn.ModuleList(nn.Embedding(n, 1, padding_idx=0) for n in cfg.side_sizes)
        self.request = RequestFeatures(cfg.user_sizes, 1)
        self.bias = nn.Parameter(torch.zeros(()))
        for p in self.parameters():
            nn.init.zeros_(p)

    def forward(self, history: History, candidates: Tensor, items: ItemEmbedding) -> Tensor:  # -> (B, C)
        out = self.item(candidates).squeeze(-1)  # (B, C)
        for j, emb in enumerate(self.sides):
            values = items.side_table(j)[candidates]  # (B, C, W)
            present = (values > 0).to(out.dtype)
            out = out + (emb(values).squeeze(-1) * present).sum(-1) / present.sum(-1).clamp(min=1.0)
        return out + self.request(history).sum(-1, keepdim=True) + self.bias  # (B, C)


# ---------------------------------------------------------------------------------------------------
# The CTR baselines: what they read about the behaviours is all that differs


class CTRModel(nn.Module):
    """Item embedding, profile and context, an MLP and a log loss. Subclasses define `behaviours`, the
    (B, C, seq_width) features of the history for each candidate."""

    def __init__(self, cfg: CTRConfig, seq_width: int = 0):
        super().__init__()
        self.cfg = cfg
        self.items = ItemEmbedding(cfg.item_config())
        self.request = RequestFeatures(cfg.user_sizes, cfg.d_feature)
        self.mlp = mlp(seq_width + cfg.d_model + self.request.width, cfg.mlp_dims, cfg.dropout)

    def behaviours(self, history: History, target: Tensor) -> Tensor:  # target (B, C, d) -> (B, C, S)
        B, C, _ = target.shape
        return target.new_zeros(B, C, 0)

    def score(self, history: History, candidates: Tensor) -> Tensor:
        """history: B users, candidates (B, C) item indices -> logits (B, C). Each candidate is scored on
        its own (no candidate reads another)."""
        B, C = candidates.shape
        target = self.items(candidates)  # (B, C, d)
        request = self.request(history).unsqueeze(1).expand(B, C, -1)  # (B, C, F)
        x = torch.cat([self.behaviours(history, target), target, request], dim=-1)  # (B, C, S + d + F)
        return self.mlp(x).squeeze(-1)  # (B, C)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The History fields, `target` (B,), `label` (B,) -> CTR logits (B,) and their log loss."""
        history = History(*(batch[name] for name in History._fields))
        logits = self.score(history, batch["target"].unsqueeze(1)).squeeze(1)  # (B,)
        return logits, F.binary_cross_entropy_with_logits(logits, batch["label"])


class WideDeep(CTRModel):
    """WDL (Cheng et al. 2016): no behaviour sequence; deep MLP plus the wide linear part."""

    def __init__(self, cfg: CTRConfig, seq_width: int = 0):
        super().__init__(cfg, seq_width)
        self.wide = Wide(cfg)

    def score(self, history: History, candidates: Tensor) -> Tensor:
        return super().score(history, candidates) + self.wide(history, candidates, self.items)


class WideDeepSeq(WideDeep):
    """WDL(+Seq): WDL plus the mean of the newest `max_len` behaviours' embeddings (padding excluded)."""

    def __init__(self, cfg: CTRConfig):
        super().__init__(cfg, seq_width=cfg.d_model)

    def behaviours(self, history: History, target: Tensor) -> Tensor:
        items = history.items[:, -self.cfg.max_len :]  # (B, L)
        present = (items > 0).unsqueeze(-1).to(target.dtype)  # (B, L, 1)
        mean = (self.items(items) * present).sum(1) / present.sum(1).clamp(min=1.0)  # (B, d)
        return mean.unsqueeze(1).expand_as(target)  # (B, C, d)


class DIN(CTRModel):
    """DIN (Zhou et al. 2018): each behaviour is weighted by the activation unit, an MLP on
    [e_i, e_t, e_i - e_t, e_i * e_t]; weights are not softmax-normalised (the paper keeps the intensity
    of interest); padding gets weight 0. The weighted sum is the MLP's sequence feature."""

    def __init__(self, cfg: CTRConfig):
        super().__init__(cfg, seq_width=cfg.d_model)
        self.attention = mlp(4 * cfg.d_model, cfg.attention_dims, 0.0, act=nn.PReLU)

    def behaviours(self, history: History, target: Tensor) -> Tensor:
        items = history.items[:, -self.cfg.max_len :]  # (B, L)
        keys = self.items(items)  # (B, L, d)
        B, C, d = target.shape
        L = keys.shape[1]
        k = keys.unsqueeze(1).expand(B, C, L, d)  # (B, C, L, d)
        q = target.unsqueeze(2).expand(B, C, L, d)  # (B, C, L, d)
        w = self.attention(torch.cat([k, q, k - q, k * q], dim=-1)).squeeze(-1)  # (B, C, L)
        w = w * (items > 0).unsqueeze(1).to(w.dtype)  # padding masked
        return torch.einsum("bcl,bld->bcd", w, keys)  # (B, C, d)


# ---------------------------------------------------------------------------------------------------
# SASRec: the retrieval baseline


class SASRec(nn.Module):
    """A causal Transformer over the newest `max_len` behaviours with learned positions (counted back
    from the newest, so left padding changes nothing); scores are user . item dot products."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        block_cfg = cfg.block_config()
        self.items = ItemEmbedding(block_cfg)
        self.slot = token_embedding(cfg.max_len, cfg.d_model, padding_idx=None)
        self.blocks = nn.ModuleList(Block(block_cfg) for _ in range(cfg.n_blocks))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def encode_sequence(self, items: Tensor) -> Tensor:
        """Output t summarises items[:, :t+1]. (B, T) -> (B, T, d), T <= max_len."""
        T = items.shape[1]
        slots = torch.arange(self.cfg.max_len - T, self.cfg.max_len, device=items.device)
        x = self.drop(self.items(items) + self.slot(slots))  # (B, T, d)
        mask = key_mask(items > 0, causal=True)  # (B, 1, T, T)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def encode_user(self, history: History) -> Tensor:
        """The newest position's output. (B, d)."""
        return self.encode_sequence(history.items[:, -self.cfg.max_len :])[:, -1]

    def item_vectors(self) -> Tensor:
        """(N, d), rows 0 and 1 padding and unknown."""
        return self.items(torch.arange(self.cfg.n_items, device=self.slot.weight.device))

    def score(self, history: History, candidates: Tensor) -> Tensor:
        """(B, C) dot products of the user vector with the candidates' vectors."""
        user = self.encode_user(history)  # (B, d)
        return (self.items(candidates) * user.unsqueeze(1)).sum(-1)  # (B, C)

    @property
    def sequence_len(self) -> int:
        """Length of the next-item training windows (`training.dataset.next_item_windows`)."""
        return self.cfg.max_len

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Logits (B,): user . target (uncalibrated: the loss never sees them as probabilities). Loss: the
        next-item cross-entropy over the batch's `next_items` windows, as the BST's retrieval head
        (without them, over the positive rows' own histories while training; none in eval mode)."""
        items = batch["items"][:, -self.cfg.max_len :]  # (B, T)
        if not self.training and "next_items" not in batch:  # evaluation reads the logits (see BST.forward)
            user = self.encode_sequence(items)[:, -1]  # (B, d)
            logits = (user * self.items(batch["target"])).sum(-1)  # (B,)
            return logits, logits.new_zeros(())
        if "next_items" in batch:
            seq, nxt = batch["next_items"], batch["next_targets"]  # (S, T)
            with torch.no_grad():
                user = self.encode_sequence(items)[:, -1]  # (B, d)
            hidden = self.encode_sequence(seq)  # (S, T, d)
        else:
            keep = batch["label"] > 0.5
            seq = items[keep]  # (P, T)
            nxt = torch.cat([seq[:, 1:], batch["target"][keep].unsqueeze(1)], dim=1) * (seq > 0)  # (P, T)
            full = self.encode_sequence(items)  # (B, T, d)
            user, hidden = full[:, -1], full[keep]
        logits = (user * self.items(batch["target"])).sum(-1)  # (B,)
        return logits, next_item_loss(hidden, nxt, self.item_vectors(), self.cfg.temperature, self.cfg.label_smoothing)


# ---------------------------------------------------------------------------------------------------
# Non-neural scorers, fitted on training clicks only


def training_rows(data: EncodedLog, split: Split) -> np.ndarray:
    """Flat indices of the positives a model may learn from: all but the held-out validation and test
    positives (`EncodedLog.popularity` counts those too, so it is not used here)."""
    keep = np.ones(len(data.items), dtype=bool)
    keep[split.valid.end] = False  # a held-out example's `end` is its own flat index
    keep[split.test.end] = False
    return np.flatnonzero(keep)


class MostPopular:
    """Every user gets the training click counts."""

    def __init__(self, counts: np.ndarray):
        self.counts = torch.from_numpy(counts.astype(np.float32))  # (N,)

    @classmethod
    def fit(cls, data: EncodedLog, split: Split) -> MostPopular:
        return cls(np.bincount(data.items[training_rows(data, split)], minlength=data.n_items))

    def scores(self, history_items: Tensor) -> Tensor:  # (B, T) -> (B, N)
        return self.counts.expand(history_items.shape[0], -1)


@dataclass(frozen=True)
class ItemKNNConfig:
    neighbours: int | None = 100  # most similar items kept per item (None: all); bounds memory and noise
    pair_window: int | None = None  # items co-occur when at most this many clicks apart (None: anywhere)
    last: int | None = None  # newest history items that vote (None: the whole history window)
    decay: float = 1.0  # the k-th newest item votes with weight decay**k (1.0: no recency weighting)


class ItemKNN:
    """Item-to-item collaborative filtering: two items are similar when they co-occur in users' training
    sequences, cosine-normalised (co(i, j) / sqrt(n(i) n(j))); a user's score for item j is the sum of
    sim(i, j) over the history items i, each weighted by recency."""

    def __init__(self, similarity: sp.csr_matrix, cfg: ItemKNNConfig):
        self.similarity = similarity  # (N, N), row i: the neighbours item i votes for
        self.cfg = cfg

    @classmethod
    def fit(cls, data: EncodedLog, split: Split, cfg: ItemKNNConfig | None = None) -> ItemKNN:
        cfg = cfg or ItemKNNConfig()
        rows = training_rows(data, split)
        items = data.items[rows]
        users = np.searchsorted(data.stop, rows, side="right")  # user row of each click
        N = data.n_items
        if cfg.pair_window is None:  # binary user x item: co = X^T X, n(i) = users who clicked i
            x = sp.csr_matrix((np.ones(len(items), np.float32), (users, items)), shape=(len(data.start), N))
            x.data[:] = 1.0  # repeated clicks count once
            co = (x.T @ x).tocoo()
            n = np.asarray(x.sum(0)).ravel()
        else:  # pairs at most `pair_window` clicks apart, counted; n(i) = clicks of i
            a, b = [], []
            for k in range(1, cfg.pair_window + 1):
                same = users[k:] == users[:-k]
                a.append(items[:-k][same])
                b.append(items[k:][same])
            src, dst = np.concatenate([*a, *b]), np.concatenate([*b, *a])
            co = sp.coo_matrix((np.ones(len(src), np.float32), (src, dst)), shape=(N, N))
            co.sum_duplicates()
            n = np.bincount(items, minlength=N).astype(np.float32)
        keep = co.row != co.col  # an item is not its own neighbour
        r, c = co.row[keep], co.col[keep]
        v = co.data[keep] / np.sqrt(n[r] * n[c])
        if cfg.neighbours is not None and len(v):  # keep each row's `neighbours` largest
            order = np.lexsort((-v, r))
            r, c, v = r[order], c[order], v[order]
            first = np.searchsorted(r, r, side="left")
            top = np.arange(len(r)) - first < cfg.neighbours
            r, c, v = r[top], c[top], v[top]
        return cls(sp.csr_matrix((v.astype(np.float32), (r, c)), shape=(N, N)), cfg)

    def scores(self, history_items: Tensor) -> Tensor:
        """(B, T) left-padded history item indices -> (B, N) scores."""
        items = history_items.cpu().numpy()
        B, T = items.shape
        back = np.broadcast_to(np.arange(T - 1, -1, -1), (B, T))  # 0 for the newest slot
        weight = np.power(self.cfg.decay, back, dtype=np.float64)
        use = items >= FIRST_ITEM
        if self.cfg.last is not None:
            use &= back < self.cfg.last
        b, t = np.nonzero(use)
        query = sp.csr_matrix((weight[b, t].astype(np.float32), (b, items[b, t])), shape=(B, self.similarity.shape[0]))
        return torch.from_numpy(np.asarray((query @ self.similarity).todense(), dtype=np.float32))


# ---------------------------------------------------------------------------------------------------
# Adapters: any model as a scorer of the whole catalogue, for `training.evaluate.score_ranks`


def history_of(data: EncodedLog, ex: Examples) -> History:
    batch = data.batch(ex)
    return History(*(batch[name] for name in History._fields))


def catalogue_scorer(model: nn.Module, data: EncodedLog, max_pairs: int = 1 << 16) -> Callable[[Examples], Tensor]:
    """A model with `score(history, candidates)` -> scorer of every item, (B, N), computed in chunks of at
    most `max_pairs` (user, item) pairs so a wide MLP over a large catalogue fits in memory."""

    @torch.inference_mode()
    def scorer(ex: Examples) -> Tensor:
        model.eval()
        hist = history_of(data, ex)
        step = max(1, max_pairs // max(1, len(ex)))
        parts = []
        for lo in range(0, data.n_items, step):
            candidates = torch.arange(lo, min(data.n_items, lo + step)).expand(len(ex), -1)  # (B, c)
            parts.append(model.score(hist, candidates))
        return torch.cat(parts, dim=1)  # (B, N)

    return scorer


def items_scorer(scores: Callable[[Tensor], Tensor], data: EncodedLog) -> Callable[[Examples], Tensor]:
    """A non-neural `scores(history_items) -> (B, N)` as a scorer of examples."""
    return lambda ex: scores(data.batch(ex)["items"])
