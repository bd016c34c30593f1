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
import math
import warnings
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.errors import InvalidArgument
from recsys.model import BST, Block, History, key_mask


class UnsupportedConfig(InvalidArgument):
    """The model's configuration would make the fast path an approximation."""


@dataclass(frozen=True)
class UserState:
    """Everything per request that does not depend on the candidates: cacheable per user."""

    keys: tuple[Tensor, ...]  # per block, (B, h, L, hd) the behaviors' keys
    values: tuple[Tensor, ...]  # per block, (B, h, L, hd)
    valid: Tensor  # (B, L) real behaviors
    request: Tensor  # (B, H1) the first MLP layer's candidate-independent part, bias included
    user: Tensor | None  # (B, d) retrieval user vector, when the MLP reads the retrieval score


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
        self.int8 = int8
        d = self.cfg.d_model
        first = model.mlp[0]
        assert isinstance(first, nn.Linear)
        # split the first MLP layer's weight by input: [seq (d), target item (d), request (F), retrieval (0/1)]
        n_request = first.in_features - 2 * d - int(self.cfg.retrieval_feature)
        # the candidate part, [seq; target item] (2d) -> H1, as one matmul
        self.candidate = nn.Linear(2 * d, first.out_features, bias=False).to(first.weight.dtype)
        self.candidate.weight = nn.Parameter(first.weight[:, : 2 * d].detach().clone(), requires_grad=False)
        self.w_request = first.weight[:, 2 * d : 2 * d + n_request]
        self.w_retrieval = first.weight[:, 2 * d + n_request :]
        self.bias = first.bias
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
    def score_prepared(self, state: UserState, candidates: Tensor, item: Tensor | None = None) -> Tensor:
        """`item`: the candidates' embeddings (B, C, d) when given (items added after training, see
        `ItemEmbedding.embed`); else looked up from `candidates`."""
        m = self.model
        item = m.items(candidates) if item is None else item.to(self.bias.dtype)  # (B, C, d)
        t = item + m.position.weight[1]  # (B, C, d) the candidate token
        for block, k_h, v_h in zip(self.blocks, state.keys, state.values, strict=True):
            t = block.finish(t, self._attend(block, t, k_h, v_h, state.valid))
        h = state.request.unsqueeze(1) + self.candidate(torch.cat([t, item], dim=-1))  # (B, C, H1)
        if state.user is not None:
            h = h + (item * state.user.unsqueeze(1)).sum(-1, keepdim=True) * self.w_retrieval[:, 0]
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
