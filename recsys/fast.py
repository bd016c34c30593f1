"""Single-pass candidate scoring: the fast path beside the reference `BST.score`.

The reference gives every candidate its own pass over [behaviors; candidate]. Here, per request, the
behaviors' embeddings, keys and values are computed once (`prepare`), and each candidate is one token
that attends to the history and to itself (`score_prepared`). The first MLP layer is split: the part
that does not depend on the candidate (profile, context) is computed once per request.

Exact, not approximate: it equals the reference whenever no behavior's representation depends on the
candidate, i.e. `pooling="target"` and either one block (the paper's default: the history's outputs
are never read) or `history_sees_target=False` (candidate isolation, trained that way). Any other
configuration is refused with `UnsupportedConfig`; there is no silent approximation.
`tests/test_fast.py` holds fast == reference (fp32, atol 1e-5) over random configurations and inputs.

`int8=True` is a deliberate, measured approximation, as an option: the MLP's hidden layers after the
first (1024->512->256 at the paper's sizes, about 83% of the per-candidate FLOPs) run as dynamically
quantized int8 linears (int8 weights with a scale per output unit, activations quantized per call),
about 2x faster than fp32 on an AVX2 CPU without native bf16 (`python -m bench.rank`). The first
layer's candidate part (its input mixes the attention output and the raw item embedding, whose scales
differ) and the output unit stay fp32: quantizing them doubled the score error on the test model for
17% of the FLOPs. Quality parity on real logs: `python -m bench.quality --int8` (served and AUC beside
fp32).
"""

from __future__ import annotations

import copy
import ctypes
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.errors import InvalidArgument
from recsys.model import BST, Block, History, ModelConfig, key_mask


class UnsupportedConfig(InvalidArgument):
    """The model's configuration would make the fast path an approximation."""


@dataclass(frozen=True)
class UserState:
    """Everything per request that does not depend on the candidates: cacheable per user."""

    keys: tuple[Tensor, ...]  # per block, (B, h, L, hd) the behaviors' keys
    values: tuple[Tensor, ...]  # per block, (B, h, L, hd)
    valid: Tensor  # (B, L) real behaviors
    request: Tensor  # (B, H1) the first MLP layer's candidate-independent part, bias included
    user: Tensor | None  # (B, R) retrieval user vector, when the MLP reads the retrieval score


def check_supported(model: BST) -> None:
    cfg = model.cfg
    if cfg.pooling != "target":
        raise UnsupportedConfig(
            f"model.pooling={cfg.pooling!r}: every behavior output depends on the candidate, so single-pass "
            "scoring would be an approximation; fix: serve with the reference scorer or train with pooling=target"
        )
    if cfg.n_blocks > 1 and cfg.history_sees_target:
        raise UnsupportedConfig(
            f"model.n_blocks={cfg.n_blocks} with history_sees_target=true: behaviors read the candidate in block 1, "
            "so later blocks differ per candidate; fix: train with model.history_sees_target=false or serve "
            "with the reference scorer"
        )


def candidate_flops(cfg: ModelConfig, history: int | None = None) -> float:
    """Matmul FLOPs of the fast path for one candidate (2 x multiply-adds): the candidate token's q/k/v,
    its attention over `history` behaviors (default `cfg.max_len`) and itself, the output projection and
    feed-forward per block, and the MLP from its first layer's candidate part to the output unit."""
    d, L = cfg.d_model, cfg.max_len if history is None else history
    block = 3 * d * d + 2 * (L + 1) * d + d * d + 2 * cfg.ffn_mult * d * d  # qkv, attention, proj, ffn
    dims = [*cfg.mlp_dims, 1]
    mlp = (2 * d + int(cfg.retrieval_feature)) * dims[0] + sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))
    return 2.0 * (cfg.n_blocks * block + mlp)


def keep_freed_memory() -> bool:
    """Stop glibc from handing large freed blocks back to the OS, process-wide; True if applied.

    By default glibc serves big allocations with fresh mmaps and trims the heap's free top, so each
    request's (C, 1024) activations fault their pages in anew: measured here, 745 page faults and
    2 ms of kernel time per 500-candidate request, about a quarter of the ranking time. With blocks up
    to 32 MB taken from the heap and the heap trimmed only past 1 GB free, a warm server allocates
    without faults (1 per request). No-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(libc.mallopt(m_mmap_threshold, 32 << 20))
    except (OSError, AttributeError):
        return False


def quantize_int8(module: nn.Module) -> nn.Module:
    """A copy of `module` whose `nn.Linear`s are dynamically quantized int8 (fbgemm/x86 kernels).

    torch.ao's eager dynamic quantization is deprecated in favour of torchao, but it is in the pinned
    torch and its CPU kernels are what make int8 fast here; the deprecation warnings are expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        wrapped = nn.Sequential(copy.deepcopy(module))  # quantize_dynamic swaps children, never the root
        torch.ao.quantization.quantize_dynamic(
            wrapped,
            {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},  # a scale per output unit
            dtype=torch.qint8,
            inplace=True,
        )
        return wrapped[0]


class FastScorer:
    """`score(history, candidates) -> (B, C)` logits, equal to `model.score` in eval mode (with
    `int8=False`; see the module docstring for `int8=True`)."""

    def __init__(self, model: BST, int8: bool = False):
        check_supported(model)
        if int8 and next(model.parameters()).dtype != torch.float32:
            raise InvalidArgument("int8=True quantizes an fp32 model; fix: pass the fp32 model")
        self.model = model
        self.cfg = model.cfg
        d = self.cfg.d_model
        first = model.mlp[0]
        assert isinstance(first, nn.Linear)
        # split the first MLP layer's weight by input: [seq (d), target item (d), request (F), retrieval (0/1)]
        n_request = first.in_features - 2 * d - int(self.cfg.retrieval_feature)
        # the candidate part [seq; target item; retrieval score] (2d + 0/1) -> H1 as one matmul, which also adds
        # the per-request part: no extra pass over the (B, C, H1) activations
        w = first.weight.detach()
        self.w_candidate = torch.cat([w[:, : 2 * d], w[:, 2 * d + n_request :]], dim=1).T.contiguous()  # (2d+r, H1)
        self.w_request = w[:, 2 * d : 2 * d + n_request]
        self.bias = first.bias.detach()
        self.mlp_rest = cast(nn.Sequential, model.mlp[1:])
        if int8:  # the hidden layers after the first; the output unit stays fp32 (module docstring)
            layers = list(self.mlp_rest)
            linears = [j for j, layer in enumerate(layers) if isinstance(layer, nn.Linear)]
            self.mlp_rest = nn.Sequential(
                *(quantize_int8(layer) if j in linears[:-1] else layer for j, layer in enumerate(layers))
            )
        self.blocks = cast(list[Block], list(model.blocks))

    @torch.inference_mode()
    def prepare(self, history: History, user: Tensor | None = None) -> UserState:
        m = self.model
        x = m.behavior_tokens(history)  # (B, L, d)
        L = x.shape[1]
        valid = history.items[:, -L:] > 0  # (B, L)
        keys, values = [], []
        for j, block in enumerate(self.blocks):
            q, k, v = block.qkv(x).chunk(3, dim=-1)  # 3 x (B, L, d)
            keys.append(block.heads(k))
            values.append(block.heads(v))
            if j + 1 < len(self.blocks):  # behaviors attend to behaviors only (candidate isolation)
                x = block.finish(x, block.attend(block.heads(q), keys[-1], values[-1], key_mask(valid, causal=False)))
        request = F.linear(m.request_features(history), self.w_request, self.bias)  # (B, H1)
        if self.cfg.retrieval_feature and user is None:
            user = m.encode_user(history)
        return UserState(tuple(keys), tuple(values), valid, request, user if self.cfg.retrieval_feature else None)

    @torch.inference_mode()
    def score_prepared(
        self, state: UserState, candidates: Tensor, item: Tensor | None = None, vector: Tensor | None = None
    ) -> Tensor:
        """`item`: the candidates' ranker embeddings (B, C, d) when given (items added after training, see
        `ItemEmbedding.embed`), else looked up from `candidates`; `vector`: likewise their retrieval
        vectors, needed beside `item` only when the ranker has its own item tables (`ranker_items="own"`)."""
        m = self.model
        if not m.ranks_in_retrieval_space and (item is None) != (vector is None):
            raise ValueError("a ranker with its own item tables needs both `item` and `vector`, or neither")
        item = m.ranker_items(candidates) if item is None else item.to(self.bias.dtype)  # (B, C, d)
        t = item + m.position.weight[1]  # (B, C, d) the candidate token
        for block, k_h, v_h in zip(self.blocks, state.keys, state.values, strict=True):
            t = block.finish(t, self._attend(block, t, k_h, v_h, state.valid))
        parts = [t, item]
        if state.user is not None:  # the retrieval score, one more input of the first layer
            if m.ranks_in_retrieval_space:
                vector = item
            else:  # the score is in the retrieval space, not the ranker's
                vector = m.retrieval_items(candidates) if vector is None else vector.to(self.bias.dtype)  # (B, C, R)
            parts.append((vector * state.user.unsqueeze(1)).sum(-1, keepdim=True))  # (B, C, 1)
        x = torch.cat(parts, dim=-1)  # (B, C, 2d + r)
        B, C = candidates.shape
        if B == 1:  # one request: the per-request part is the matmul's bias
            h = torch.addmm(state.request[0], x[0], self.w_candidate).unsqueeze(0)  # (1, C, H1)
        else:  # in place: no second (B, C, H1) buffer
            h = (x.reshape(B * C, -1) @ self.w_candidate).view(B, C, -1).add_(state.request.unsqueeze(1))  # (B, C, H1)
        return self.mlp_rest(h).squeeze(-1)  # (B, C)

    @staticmethod
    def _attend(block: Block, t: Tensor, k_h: Tensor, v_h: Tensor, valid: Tensor) -> Tensor:
        """Each candidate token attends to the history's keys/values and to its own. -> (B, C, d)."""
        B, C, d = t.shape
        h = block.n_heads
        q, k, v = block.qkv(t).chunk(3, dim=-1)  # 3 x (B, C, d)
        q, k, v = (x.view(B, C, h, d // h).transpose(1, 2) for x in (q, k, v))  # (B, h, C, hd)
        scale = 1.0 / math.sqrt(d // h)
        hist = (q @ k_h.transpose(-1, -2)) * scale  # (B, h, C, L)
        hist = hist.masked_fill(~valid[:, None, None, :], float("-inf"))
        own = (q * k).sum(-1, keepdim=True) * scale  # (B, h, C, 1)
        p = torch.softmax(torch.cat([hist, own], dim=-1), dim=-1)  # (B, h, C, L+1)
        out = p[..., :-1] @ v_h + p[..., -1:] * v  # (B, h, C, hd)
        return out.transpose(1, 2).reshape(B, C, d)  # (B, C, d)

    def score(self, history: History, candidates: Tensor, user: Tensor | None = None) -> Tensor:
        return self.score_prepared(self.prepare(history, user), candidates)


@dataclass(frozen=True)
class _Row:
    user: Tensor  # (R,) retrieval user vector
    keys: tuple[Tensor, ...]  # per block, (h, n, hd): the n real behaviors only
    values: tuple[Tensor, ...]
    request: Tensor  # (H1,)


class StateCache:
    """Per-user state of the fast path (the retrieval user vector and `UserState`), LRU-bounded.

    Keyed by the encoded history row itself (items, time-gap buckets, event types, profile, context),
    not by a user id: a hit is exact by construction. A recorded event changes the row, so that user's
    next request misses (the old entry ages out); the gap buckets and the hour of day move with the
    request time, so an entry serves a user's repeated requests within minutes (refreshes, pages),
    not across days. The cache belongs to one `Recommender`, so a new model version starts empty.
    Thread-safe (the server may call the model from several threads)."""

    def __init__(self, size: int):
        self.size = size
        self._rows: OrderedDict[bytes, _Row] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    @staticmethod
    def key(hist: History, b: int) -> bytes:
        """Row b of a left-padded batch, leading padding dropped: the same history in batches of other
        widths has the same key."""
        n = int((hist.items[b] > 0).sum())
        parts = [np.array([n])] + [f[b, f.shape[1] - n :].numpy() for f in (hist.items, hist.positions, hist.events)]
        parts += [hist.user[b].numpy(), hist.context[b].numpy()]
        return np.concatenate([p.astype(np.int64) for p in parts]).tobytes()

    def get(self, key: bytes) -> _Row | None:
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                self.misses += 1
                return None
            self._rows.move_to_end(key)
            self.hits += 1
            return row

    def put(self, key: bytes, row: _Row) -> None:
        with self._lock:
            self._rows[key] = row
            self._rows.move_to_end(key)
            while len(self._rows) > self.size:
                self._rows.popitem(last=False)


def _prepare(scorer: FastScorer, encode_user: Callable[[History], Tensor], hist: History) -> tuple[Tensor, UserState]:
    with torch.inference_mode():
        user = encode_user(hist)  # (B, R)
        return user, scorer.prepare(hist, user.to(scorer.bias.dtype) if scorer.cfg.retrieval_feature else None)


def prepare_cached(
    scorer: FastScorer, encode_user: Callable[[History], Tensor], hist: History, cache: StateCache | None
) -> tuple[Tensor, UserState]:
    """The retrieval user vectors (B, R) and the ranking state of `hist`, computing only the rows
    `cache` does not hold; equal to `encode_user(hist)` and `scorer.prepare(hist, user)` (a cached
    row's keys and values are re-padded on the left, where the attention masks them out)."""
    if cache is None:
        return _prepare(scorer, encode_user, hist)
    B = hist.items.shape[0]
    keys = [StateCache.key(hist, b) for b in range(B)]
    rows: list[_Row | None] = [cache.get(k) for k in keys]
    missing = [b for b, r in enumerate(rows) if r is None]
    if missing:
        user, state = _prepare(scorer, encode_user, History(*(f[missing] for f in hist)))
        for i, b in enumerate(missing):
            n = int(state.valid[i].sum())
            L = state.valid.shape[1]
            row = _Row(
                user[i].clone(),
                tuple(k[i, :, L - n :].clone() for k in state.keys),
                tuple(v[i, :, L - n :].clone() for v in state.values),
                state.request[i].clone(),
            )
            rows[b] = row
            cache.put(keys[b], row)
        if len(missing) == B:  # all computed just now, in the batch's own padding
            return user, state
    full = [r for r in rows if r is not None]
    lengths = [r.keys[0].shape[1] if r.keys else 0 for r in full]  # real behaviors per row
    L = max(1, *lengths)
    n_blocks = len(full[0].keys)
    out_keys, out_values = [], []
    for j in range(n_blocks):
        h, _, hd = full[0].keys[j].shape
        k = full[0].keys[j].new_zeros(B, h, L, hd)  # (B, h, L, hd)
        v = full[0].values[j].new_zeros(B, h, L, hd)
        for b, r in enumerate(full):
            n = r.keys[j].shape[1]
            k[b, :, L - n :] = r.keys[j]
            v[b, :, L - n :] = r.values[j]
        out_keys.append(k)
        out_values.append(v)
    valid = torch.zeros(B, L, dtype=torch.bool)
    for b, n in enumerate(lengths):
        valid[b, L - n :] = True
    user = torch.stack([r.user for r in full])  # (B, R)
    request = torch.stack([r.request for r in full])  # (B, H1)
    ranker_user = user.to(scorer.bias.dtype) if scorer.cfg.retrieval_feature else None
    return user, UserState(tuple(out_keys), tuple(out_values), valid, request, ranker_user)
