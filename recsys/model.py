"""Behavior Sequence Transformer (BST, Chen et al. 2019) with a retrieval head.

Read top to bottom: config, the item embedding, one Transformer block, the BST ranker, the retrieval
encoder, then `BST` which ties them together:

- `encode_user(history) -> (B, R)`: the user vector in the item-embedding space; FAISS searches it
  (R = d_model, or retrieval_towers * d_model for an ensemble of retrieval encoders).
- `score(history, candidates) -> (B, C)`: the BST ranker's logits (the reference computation).
- `forward(batch) -> (logits, loss)`: training; CTR log loss plus the next-item objective.

The model sees tensors only. Id mapping, padding (index 0), unknown ids (index 1), time-gap bucketing
and the context features are made by the data layer (`recsys.batch`).

Deviations from the paper, each deliberate:
- Item id and side-feature embeddings are *summed* into one d-wide vector (the paper concatenates), so
  every item is one point in a space FAISS can index. By default the ranker and the retrieval head
  share those tables; `ranker_items="own"` gives the ranker tables of its own, so the CTR loss never
  moves the space retrieval searches.
- The position embedding (bucketised time gap) is added to the token, as in the Transformer.
- The MLP reads the target position's output (`pooling="target"`) by default rather than all positions
  flattened: with one block this is exactly what makes the single-pass candidate scorer exact (each
  candidate attends to the history and to itself only). `pooling="flatten"` is the paper's variant.
- The MLP also reads the retrieval head's score for the candidate (`retrieval_feature`, detached so the
  ranker cannot degrade retrieval): the served ranker orders retrieval's candidates, all plausible, and
  without it a pointwise ranker ordered them worse than retrieval itself (measured on the demo log).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ModelConfig:
    n_items: int  # item vocabulary size, padding (0) and unknown (1) included
    side_sizes: tuple[int, ...] = ()  # vocabulary size of each categorical item column (category, brand, ...)
    side_widths: tuple[int, ...] = ()  # values per item of each column (>1 for multi-valued attributes)
    user_sizes: tuple[int, ...] = ()  # vocabulary size of each user profile column
    n_events: int = 3  # event-type vocabulary (click, cart, ...); behaviors carry their event type
    max_len: int = 20  # behaviors the ranker attends to (the paper uses 20)
    retrieval_len: int = 50  # behaviors the retrieval encoder reads; >= max_len
    d_model: int = 64  # width of every token; the FAISS vectors have this width
    n_heads: int = 8  # the paper's 8 heads
    n_blocks: int = 1  # the paper found one block best
    ffn_mult: int = 4  # feed-forward width = ffn_mult * d_model
    dropout: float = 0.2  # on embeddings, residual branches and the MLP
    attn_dropout: float = 0.0  # on attention weights; off by default: it forces SDPA's slow path on CPU
    position: Literal["time", "ordinal"] = "time"  # time-gap buckets, or steps back when logs lack time
    n_positions: int = 64  # position vocabulary: 0 pad, 1 the target, 2.. gap buckets
    d_feature: int = 16  # width of each user-profile and context embedding
    mlp_dims: tuple[int, ...] = (1024, 512, 256)  # the paper's MLP
    pooling: Literal["target", "flatten"] = "target"  # MLP input: target output, or all outputs flattened
    history_sees_target: bool = True  # behaviors attend to the target (the paper); False isolates candidates,
    # which makes single-pass candidate scoring (recsys.fast) exact for any number of blocks
    retrieval_feature: bool = True  # the MLP also reads the retrieval head's user . item score (detached)
    ranker_items: Literal["shared", "own"] = "shared"  # "own": the ranker embeds items (ids and side values)
    # with tables of its own, so its gradients never move the item space that retrieval and FAISS use
    retrieval_blocks: int = 2  # causal blocks of the retrieval encoder
    retrieval_heads: int = 0  # attention heads of the retrieval encoder; 0 = n_heads (SASRec uses 1 or 2)
    retrieval_towers: int = 1  # independent retrieval encoders, each with item tables of its own and trained
    # on its own next-item softmax: the retrieval vector is their concatenation, so the inner product FAISS
    # takes is the sum of their scores, an ensemble served by one index (vectors retrieval_towers * d_model wide)
    retrieval_weight: float = 1.0  # weight of the next-item loss beside the CTR log loss
    retrieval_temperature: float = 1.0  # softmax temperature of the next-item objective
    retrieval_label_smoothing: float = 0.0  # share of the next-item target spread over the whole catalog
    # (`F.cross_entropy`'s label_smoothing): a regulariser against over-confident item scores; 0 = off
    listwise_weight: float = 0.0  # weight of the listwise ranker loss beside the log loss: each positive
    # against the negatives that share its history (the trainer's `group`), softmax over that group

    def __post_init__(self) -> None:
        if self.n_heads < 1 or self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads} (>= 1)")
        if self.retrieval_heads < 0 or (self.retrieval_heads and self.d_model % self.retrieval_heads):
            raise ValueError(
                f"d_model={self.d_model} must be divisible by retrieval_heads={self.retrieval_heads} (0 = n_heads)"
            )
        if self.retrieval_towers < 1:
            raise ValueError(f"retrieval_towers={self.retrieval_towers} must be >= 1 (1 = one retrieval encoder)")
        if len(self.side_sizes) != len(self.side_widths):
            raise ValueError("side_sizes and side_widths must have one entry per item column")
        if self.retrieval_len < self.max_len:
            raise ValueError(f"retrieval_len={self.retrieval_len} must be >= max_len={self.max_len}")
        if not 0 <= self.retrieval_label_smoothing < 1:
            raise ValueError(
                f"retrieval_label_smoothing={self.retrieval_label_smoothing} must be in [0, 1) (0 = off, e.g. 0.1)"
            )
        if self.listwise_weight < 0:
            raise ValueError(f"listwise_weight={self.listwise_weight} must be >= 0 (0 = log loss alone)")
        if self.position == "ordinal" and self.n_positions < self.retrieval_len + 2:
            raise ValueError(f"ordinal positions need n_positions >= retrieval_len + 2 = {self.retrieval_len + 2}")


class History(NamedTuple):
    """A batch of user histories, left-padded so the newest behavior is last. All int64."""

    items: Tensor  # (B, T) item indices, 0 = padding
    positions: Tensor  # (B, T) gap buckets relative to the request (target) time, 0 = padding
    events: Tensor  # (B, T) event-type indices, 0 = padding
    user: Tensor  # (B, U) user profile indices
    context: Tensor  # (B, 2) hour-of-day + 1 and day-of-week + 1 of the request, 0 = unknown


# ---------------------------------------------------------------------------------------------------
# Item embedding: id + side features (multi-valued columns are mean-pooled, padding excluded)


TOKEN_INIT_STD = 0.02  # every table summed into a token (item, side features, position, event, slot)


def token_embedding(n: int, d: int, padding_idx: int | None = 0) -> nn.Embedding:
    """A table whose rows are summed into a token, drawn from N(0, 0.02) as in BERT and SASRec, the
    padding row zero. All parts of a token must start at one scale: PyTorch's default N(0, 1) had made
    the positions 50 times the size of the item embeddings they are added to, and the encoders learnt
    the items slowly (Amazon Beauty, retrieval head trained alone for 6 minutes, validation NDCG@10
    0.0345 against 0.0752 with every table at 0.02; an ad-hoc script, not committed; README, The model)."""
    emb = nn.Embedding(n, d, padding_idx=padding_idx)
    nn.init.normal_(emb.weight, std=TOKEN_INIT_STD)
    if padding_idx is not None:
        with torch.no_grad():
            emb.weight[padding_idx].zero_()
    return emb


class ItemEmbedding(nn.Module):
    tables: ItemEmbedding | None

    def __init__(self, cfg: ModelConfig, tables: ItemEmbedding | None = None):
        """`tables`: another ItemEmbedding whose item -> side-value tables this one reads (the ranker's own
        embedding reads the retrieval embedding's, so the artifact holds each table once)."""
        super().__init__()
        self.ids = token_embedding(cfg.n_items, cfg.d_model)
        self.sides = nn.ModuleList([token_embedding(n, cfg.d_model) for n in cfg.side_sizes])
        object.__setattr__(self, "tables", tables)  # a reference, not a submodule: no second copy of its state
        if tables is None:
            for j, width in enumerate(cfg.side_widths):
                # the item -> side-feature table, filled from the saved vocabulary (see recsys.batch)
                self.register_buffer(f"side_table_{j}", torch.zeros(cfg.n_items, width, dtype=torch.long))

    def side_table(self, j: int) -> Tensor:
        if self.tables is not None:
            return self.tables.side_table(j)
        table: Tensor = getattr(self, f"side_table_{j}")
        return table

    def forward(self, items: Tensor) -> Tensor:  # (...,) -> (..., d)
        return self.embed(items, [self.side_table(j)[items] for j in range(len(self.sides))])

    def embed(self, items: Tensor, sides: list[Tensor]) -> Tensor:  # (...,), per column (..., W) -> (..., d)
        """Id embedding + the mean of each column's value embeddings. `forward` reads the values from
        the side tables; an item added after training passes its own (with the unknown-item id)."""
        out = self.ids(items)
        for emb, values in zip(self.sides, sides, strict=True):
            present = (values > 0).unsqueeze(-1).to(out.dtype)  # (..., W, 1)
            pooled = (emb(values) * present).sum(-2) / present.sum(-2).clamp(min=1.0)  # (..., d)
            out = out + pooled
        return out


# ---------------------------------------------------------------------------------------------------
# One Transformer block: multi-head self-attention, LeakyReLU feed-forward, residuals, post-LayerNorm


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, n_heads: int = 0):
        super().__init__()
        d = cfg.d_model
        self.n_heads = n_heads or cfg.n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_mult * d), nn.LeakyReLU(), nn.Linear(cfg.ffn_mult * d, d))
        self.ln2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.p_attn = cfg.attn_dropout

    def heads(self, x: Tensor) -> Tensor:  # (B, T, d) -> (B, h, T, d/h)
        B, T, d = x.shape
        return x.view(B, T, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, h, T, hd)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """q (B, h, Tq, hd), k/v (B, h, Tk, hd), mask (B, 1, Tq, Tk) True = may attend -> (B, Tq, d)."""
        p = self.p_attn if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, h, Tq, hd)
        B, h, Tq, hd = out.shape
        return out.transpose(1, 2).reshape(B, Tq, h * hd)  # (B, Tq, d)

    def finish(self, x: Tensor, attended: Tensor) -> Tensor:
        x = self.ln1(x + self.drop(self.proj(attended)))
        return self.ln2(x + self.drop(self.ffn(x)))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # (B, T, d), (B, 1, T, T) -> (B, T, d)
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, T, d)
        return self.finish(x, self.attend(self.heads(q), self.heads(k), self.heads(v), mask))

    def forward_last(self, x: Tensor, mask: Tensor) -> Tensor:  # (B, T, d), (B, 1, 1, T) -> (B, 1, d)
        """`forward(x, full_mask)[:, -1:]`, computing the newest position's query, attention and
        feed-forward alone (the other positions contribute keys and values only)."""
        d = x.shape[-1]
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, -1:], w[:d], b[:d])  # (B, 1, d)
        k, v = F.linear(x, w[d:], b[d:]).chunk(2, dim=-1)  # 2 x (B, T, d)
        return self.finish(x[:, -1:], self.attend(self.heads(q), self.heads(k), self.heads(v), mask))


def key_mask(valid: Tensor, causal: bool) -> Tensor:
    """(B, T) valid keys -> (B, 1, T, T) attention mask. A token always sees itself, so a padding
    query never has an empty row (which would make softmax NaN)."""
    B, T = valid.shape
    eye = torch.eye(T, dtype=torch.bool, device=valid.device)
    mask = valid[:, None, :].expand(B, T, T) | eye  # (B, Tq, Tk)
    if causal:
        mask = mask & torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    return mask.unsqueeze(1)  # (B, 1, T, T)


# ---------------------------------------------------------------------------------------------------
# A retrieval tower beyond the first (`retrieval_towers`)


class RetrievalTower(nn.Module):
    """Item tables, slot embedding, causal blocks and norm of its own, like the BST's first retrieval
    encoder; it reads that encoder's item -> side-value tables (`ItemEmbedding`'s `tables`)."""

    def __init__(self, cfg: ModelConfig, tables: ItemEmbedding):
        super().__init__()
        self.items = ItemEmbedding(cfg, tables=tables)
        self.slot = token_embedding(cfg.retrieval_len, cfg.d_model, padding_idx=None)
        self.blocks = nn.ModuleList(Block(cfg, cfg.retrieval_heads) for _ in range(cfg.retrieval_blocks))
        self.norm = nn.LayerNorm(cfg.d_model)


# ---------------------------------------------------------------------------------------------------
# The model


class BST(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.items = ItemEmbedding(cfg)
        # ranker: behaviors + target -> blocks -> MLP; its item tables are the retrieval space's unless "own"
        self.ranker_embedding = ItemEmbedding(cfg, tables=self.items) if cfg.ranker_items == "own" else None
        self.position = token_embedding(cfg.n_positions, d)
        self.event = token_embedding(cfg.n_events, d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_blocks))
        self.user = nn.ModuleList(nn.Embedding(n, cfg.d_feature, padding_idx=0) for n in cfg.user_sizes)
        self.hour = nn.Embedding(25, cfg.d_feature, padding_idx=0)
        self.weekday = nn.Embedding(8, cfg.d_feature, padding_idx=0)
        seq_width = d * (cfg.max_len + 1) if cfg.pooling == "flatten" else d
        # + target item + profile + context (+ the retrieval score)
        width = seq_width + d + cfg.d_feature * (len(cfg.user_sizes) + 2) + int(cfg.retrieval_feature)
        layers: list[nn.Module] = []
        for out in cfg.mlp_dims:
            layers += [nn.Linear(width, out), nn.LeakyReLU(), nn.Dropout(cfg.dropout)]
            width = out
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))
        # retrieval: a causal encoder over the last `retrieval_len` behaviors, in the item space
        self.slot = token_embedding(cfg.retrieval_len, d, padding_idx=None)
        self.retrieval_blocks = nn.ModuleList(Block(cfg, cfg.retrieval_heads) for _ in range(cfg.retrieval_blocks))
        self.retrieval_norm = nn.LayerNorm(d)
        self.towers = nn.ModuleList(RetrievalTower(cfg, tables=self.items) for _ in range(cfg.retrieval_towers - 1))
        self.drop = nn.Dropout(cfg.dropout)

    # -- ranking ------------------------------------------------------------------------------------

    @property
    def ranker_items(self) -> ItemEmbedding:
        """The item embedding the ranker reads (behaviors and candidates)."""
        return self.items if self.ranker_embedding is None else self.ranker_embedding

    @property
    def ranks_in_retrieval_space(self) -> bool:
        """Whether the ranker's item embedding is the retrieval vector itself (shared tables, one tower)."""
        return self.ranker_embedding is None and self.cfg.retrieval_towers == 1

    def request_features(self, history: History) -> Tensor:
        """Everything the MLP reads that does not depend on the candidate. (B, F)."""
        parts = [emb(history.user[:, j]) for j, emb in enumerate(self.user)]
        parts += [self.hour(history.context[:, 0]), self.weekday(history.context[:, 1])]
        return torch.cat(parts, dim=-1)

    def behavior_tokens(self, history: History) -> Tensor:
        """The last `max_len` behaviors as tokens. (B, L, d)."""
        L = self.cfg.max_len
        items, pos, ev = history.items[:, -L:], history.positions[:, -L:], history.events[:, -L:]
        return self.ranker_items(items) + self.position(pos) + self.event(ev)

    def score(
        self, history: History, candidates: Tensor, user: Tensor | None = None, every_position: bool = True
    ) -> Tensor:
        """The reference BST ranker: every candidate gets its own pass over [behaviors; candidate].
        history: B users, candidates (B, C) item indices -> logits (B, C). `user` (B, R) is the
        retrieval user vector when the caller already has it (it is recomputed otherwise).
        `every_position=False` (training): under target pooling, the last block computes the target's
        query alone, since only the target's output is read; the same numbers, with one block about a
        twentieth of the attention and feed-forward work. The default is the paper's computation, every
        block over every position: the plain reference the fast scorer and the naive baseline are."""
        B, C = candidates.shape
        behaviors = self.behavior_tokens(history)  # (B, L, d)
        L = behaviors.shape[1]
        target_raw = self.ranker_items(candidates)  # (B, C, d)
        target = target_raw + self.position.weight[1]  # position 1 marks the target
        tokens = torch.cat([behaviors.unsqueeze(1).expand(B, C, L, -1), target.unsqueeze(2)], dim=2)
        tokens = self.drop(tokens.reshape(B * C, L + 1, -1))  # (B*C, L+1, d)
        valid = torch.cat([history.items[:, -L:] > 0, torch.ones_like(candidates[:, :1], dtype=torch.bool)], 1)
        valid = valid.repeat_interleave(C, dim=0)  # (B*C, L+1)
        blocks = cast(list[Block], list(self.blocks))
        n_full = len(blocks) - 1 if self.cfg.pooling == "target" and not every_position else len(blocks)
        if n_full:
            mask = key_mask(valid, causal=False)  # (B*C, 1, L+1, L+1)
            if not self.cfg.history_sees_target:  # behaviors (queries 0..L-1) never read the target (key L)
                mask[:, :, :L, L] = False
            for block in blocks[:n_full]:
                tokens = block(tokens, mask)
        if n_full < len(blocks):  # the target's row: every real behavior and itself
            tokens = blocks[-1].forward_last(tokens, valid[:, None, None, :])  # (B*C, 1, d)
        if self.cfg.pooling == "target":
            seq = tokens[:, -1]  # (B*C, d)
        else:
            seq = tokens.reshape(B * C, -1)  # (B*C, (L+1)*d)
        seq = seq.view(B, C, -1)  # (B, C, S)
        request = self.request_features(history).unsqueeze(1).expand(B, C, -1)  # (B, C, F)
        parts = [seq, target_raw, request]
        if self.cfg.retrieval_feature:  # the ranker refines retrieval rather than relearning it
            if user is None:
                with torch.no_grad():
                    user = self.encode_user(history)  # (B, R)
            vectors = target_raw if self.ranks_in_retrieval_space else self.retrieval_items(candidates)  # (B, C, R)
            parts.append((vectors.detach() * user.detach().unsqueeze(1)).sum(-1, keepdim=True))  # (B, C, 1)
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)  # (B, C)

    # -- retrieval ----------------------------------------------------------------------------------

    @property
    def retrieval_dim(self) -> int:
        """Width R of the retrieval space: every tower's d_model wide vector, concatenated."""
        return self.cfg.d_model * self.cfg.retrieval_towers

    def tower_items(self, t: int) -> ItemEmbedding:
        """Retrieval tower t's item embedding (0: the BST's own)."""
        return self.items if t == 0 else cast(RetrievalTower, self.towers[t - 1]).items

    def tower(self, t: int) -> tuple[ItemEmbedding, nn.Embedding, list[Block], nn.LayerNorm]:
        """Retrieval tower t's item embedding, slot embedding, blocks and norm (0: the BST's own)."""
        if t == 0:
            return self.items, self.slot, cast(list[Block], list(self.retrieval_blocks)), self.retrieval_norm
        extra = cast(RetrievalTower, self.towers[t - 1])
        return extra.items, extra.slot, cast(list[Block], list(extra.blocks)), extra.norm

    def encode_sequence(self, items: Tensor, last_only: bool = False, tower: int = 0) -> Tensor:
        """Causal encoder of one tower: output t summarises items[:, :t+1]. (B, T) -> (B, T, d),
        T <= retrieval_len. `last_only`: the newest position alone, (B, 1, d); its last block computes
        one query per row (the same numbers, about 40% fewer FLOPs with two blocks)."""
        embedding, slot, blocks, norm = self.tower(tower)
        T = items.shape[1]
        slots = torch.arange(self.cfg.retrieval_len - T, self.cfg.retrieval_len, device=items.device)
        x = self.drop(embedding(items) + slot(slots))  # (B, T, d)
        mask = key_mask(items > 0, causal=True)  # (B, 1, T, T)
        for j, block in enumerate(blocks):
            x = block.forward_last(x, mask[:, :, -1:]) if last_only and j == len(blocks) - 1 else block(x, mask)
        if last_only:
            x = x[:, -1:]  # (B, 1, d); already so after a last block
        return norm(x)

    def encode_last(self, items: Tensor) -> Tensor:
        """Every tower's newest position, concatenated. (B, T) -> (B, R)."""
        return side_by_side([self.encode_sequence(items, True, t)[:, -1] for t in range(self.cfg.retrieval_towers)])

    def encode_user(self, history: History) -> Tensor:
        """The user vector for FAISS: the causal encoders' newest position. (B, R)."""
        return self.encode_last(history.items[:, -self.cfg.retrieval_len :])

    def retrieval_items(self, items: Tensor) -> Tensor:
        """Items' vectors in the retrieval space: every tower's embedding, concatenated. (...,) -> (..., R)."""
        return side_by_side([self.tower_items(t)(items) for t in range(self.cfg.retrieval_towers)])

    def embed_retrieval(self, items: Tensor, sides: list[Tensor]) -> Tensor:
        """`retrieval_items` from side values the caller passes (`ItemEmbedding.embed`). (n,) -> (n, R)."""
        return side_by_side([self.tower_items(t).embed(items, sides) for t in range(self.cfg.retrieval_towers)])

    def item_vectors(self) -> Tensor:
        """Every item's vector in the retrieval space (rows 0 and 1 are padding and unknown). (N, R)."""
        return self.retrieval_items(torch.arange(self.cfg.n_items, device=self.items.ids.weight.device))

    # -- training -----------------------------------------------------------------------------------

    @property
    def sequence_len(self) -> int:
        """Length of the next-item training windows (`training.dataset.next_item_windows`)."""
        return self.cfg.retrieval_len

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """batch: the History fields, `target` (B,) and `label` (B,) float for the ranker, and for the
        retrieval head `next_items`/`next_targets` (S, T): windows of users' positives and the next item
        at each position (0 = no loss), SASRec-style. Without them the positive rows' own histories
        train it (every position of each), in training mode only. With `group` (B,) (rows sharing a
        history share an id) and `listwise_weight` > 0 the ranker also takes `listwise_loss`, over the
        positives that `listwise` (B,) bool marks (all when absent). Returns
        the CTR logits (B,) and the loss: log loss + listwise_weight * listwise loss +
        retrieval_weight * next-item loss."""
        history = History(*(batch[name] for name in History._fields))
        items = history.items[:, -self.cfg.retrieval_len :]  # (B, T)
        user = self.served_user(items) if self.cfg.retrieval_feature else None
        logits = self.score(history, batch["target"].unsqueeze(1), user, every_position=False).squeeze(1)  # (B,)
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"])
        if self.cfg.listwise_weight > 0 and "group" in batch:
            listed = batch.get("listwise")
            loss = loss + self.cfg.listwise_weight * listwise_loss(logits, batch["label"], batch["group"], listed)
        # in eval mode without windows (evaluation reads the logits) the next-item term is skipped: over a
        # large catalog its (B*T, N) score matrix is gigabytes (20 GB for 1,024 rows and 100k items)
        if self.cfg.retrieval_weight > 0 and (self.training or "next_items" in batch):
            if "next_items" in batch:
                seq, nxt = batch["next_items"], batch["next_targets"]  # (S, T) each
            else:
                keep = batch["label"] > 0.5
                seq = items[keep]  # (P, T)
                nxt = torch.cat([seq[:, 1:], batch["target"][keep].unsqueeze(1)], dim=1) * (seq > 0)  # (P, T)
            # each tower its own softmax: the gradients an independently trained encoder would get
            for t in range(self.cfg.retrieval_towers):
                next_loss = self.next_item_loss(self.encode_sequence(seq, tower=t), nxt, t)
                loss = loss + self.cfg.retrieval_weight * next_loss
        return logits, loss

    @torch.no_grad()
    def served_user(self, items: Tensor) -> Tensor:
        """The user vector as the server computes it (no dropout, no gradients): the ranker's retrieval-
        score input while training. (B, T) -> (B, R)."""
        was_training = self.training
        self.train(False)
        try:
            # a positive and its negatives share a history (the trainer keeps them in one batch): encode
            # each distinct history once
            unique, inverse = torch.unique(items, dim=0, return_inverse=True)  # (U, T), (B,)
            return self.encode_last(unique)[inverse]  # (B, R)
        finally:
            self.train(was_training)

    def next_item_loss(self, hidden: Tensor, targets: Tensor, tower: int = 0) -> Tensor:
        """One retrieval tower's objective over the catalog; see `next_item_loss`."""
        cfg = self.cfg
        vectors = self.tower_items(tower)(torch.arange(cfg.n_items, device=hidden.device))  # (N, d)
        return next_item_loss(hidden, targets, vectors, cfg.retrieval_temperature, cfg.retrieval_label_smoothing)


def side_by_side(parts: list[Tensor]) -> Tensor:
    """Each retrieval tower's (..., d) -> (..., R), concatenated on the last axis (one tower: itself, uncopied)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def listwise_loss(logits: Tensor, labels: Tensor, group: Tensor, listed: Tensor | None = None) -> Tensor:
    """The ranker's listwise objective: each positive against the negatives of its group (the rows that
    share its history: its sampled and retrieval-mined negatives), -log softmax of the positive over
    [positive; group's negatives] = softplus(logsumexp(negatives) - positive). This is the task the
    served ranker faces, ordering retrieval's candidates for one history, where the log loss scores
    each row alone. Positives whose group has no negative in the batch take no loss, nor those that
    `listed` (B,) bool leaves out (the trainer's: outside retrieval's top pool).
    logits (B,), labels (B,) 1/0, group (B,) ids in [0, G) -> scalar."""
    neg = labels < 0.5
    n_groups = int(group.max()) + 1 if len(group) else 0
    top = torch.full((n_groups,), float("-inf"), dtype=logits.dtype, device=logits.device)
    top = top.scatter_reduce(0, group[neg], logits[neg].detach(), "amax")  # (G,) max negative logit
    has_neg = torch.isfinite(top)
    shift = torch.where(has_neg, top, torch.zeros_like(top))  # (G,)
    total = torch.zeros_like(top).index_add(0, group[neg], torch.exp(logits[neg] - shift[group[neg]]))  # (G,)
    neg_lse = torch.log(total.clamp(min=torch.finfo(total.dtype).tiny)) + shift  # (G,)
    pos = ~neg & has_neg[group]
    if listed is not None:
        pos = pos & listed
    if not bool(pos.any()):
        return logits.sum() * 0.0
    return F.softplus(neg_lse[group[pos]] - logits[pos]).mean()


def next_item_loss(
    hidden: Tensor, targets: Tensor, vectors: Tensor, temperature: float = 1.0, label_smoothing: float = 0.0
) -> Tensor:
    """Full-softmax cross-entropy over the catalog: position t of an encoder's output predicts
    targets[:, t] (0 = no loss; unknown items are not predicted either). `label_smoothing` spreads that
    share of the target over the real items (padding and unknown, never predicted, get none).
    hidden (S, T, d), targets (S, T), vectors (N, d) -> scalar."""
    valid = targets > 1  # a known next item
    if not bool(valid.any()):
        return hidden.sum() * 0.0
    logits = hidden[valid] @ vectors[2:].T / temperature  # (M, N-2): padding and unknown are never predicted
    return F.cross_entropy(logits, targets[valid] - 2, label_smoothing=label_smoothing)
