"""Contractions and attention: ``matmul``, ``einsum`` and the attention functions.

A contraction mixes what its contracted dims carry and keeps the rest: over a feature dim it mixes
features, never space. Attention's query token sees itself and every key it attends to: all tokens
of its window (a window's tokens sit in their own dims), or those a constant mask lets through
(``is_causal``: the earlier ones). A mask whose values the trace cannot see counts every key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial

import numpy as np
import torch

from torchprobe.rf.axis import AxisMap
from torchprobe.rf.rules.core import RuleContext, RuleResult, first_unknown, merge, reduce_dims, register_rf_rule
from torchprobe.rf.state import RFState, TensorRF, UnknownRF

MASK_NOTE = ("the attention mask's values are not known here (the meta device): every key is counted, "
             "an over-estimate where the mask hides some")
MASK_VARIES_NOTE = ("the attention mask differs across batch or heads: each query counts the keys "
                    "any of them lets through")


def contract(ctx: RuleContext, operands: Sequence[tuple[torch.Tensor, str]], output: str) -> RuleResult:
    """``einsum`` semantics: operand ``t`` has one letter per dim; letters missing from ``output``
    are contracted (each output unit reads all of them), the others line up by letter."""
    out_shape = ctx.out_shape
    states, like_out = [], []
    for tensor, letters in operands:
        if len(set(letters)) != len(letters):
            return UnknownRF("einsum with a repeated index in one operand (a diagonal)", "")
        state = ctx.state_of(tensor)
        n = tensor.dim()
        summed = [i - n for i, letter in enumerate(letters) if letter not in output]
        reduced = reduce_dims(state, tuple(tensor.shape), summed, keepdim=True)
        if isinstance(reduced, TensorRF):
            def to_output(d: int, letters: str = letters, n: int = n) -> int:
                letter = letters[d + n]
                return output.index(letter) - len(output) if letter in output else d - len(output)

            reduced = reduced.moved(to_output)
        states.append(reduced)
        sizes = dict(zip(letters, tensor.shape))
        like_out.append(torch.empty([sizes.get(letter, 1) for letter in output], device="meta"))
    return merge(like_out, states, out_shape)


@register_rf_rule("matmul", "mm", "bmm")
def matmul(ctx: RuleContext) -> RuleResult:
    """``a @ b`` as the einsum ``...ik,...kj->...ij`` (a 1-D operand has only ``k``)."""
    a, b = ctx.tensors[:2]
    n = max(a.dim(), b.dim(), 2) - 2
    batch = "".join(chr(ord("a") + i) for i in range(n))
    la = "k" if a.dim() == 1 else batch[n - (a.dim() - 2):] + "ik"
    lb = "k" if b.dim() == 1 else batch[n - (b.dim() - 2):] + "kj"
    return contract(ctx, [(a, la), (b, lb)], batch + ("i" if a.dim() > 1 else "") + ("j" if b.dim() > 1 else ""))


@register_rf_rule("einsum")
def einsum(ctx: RuleContext) -> RuleResult:
    equation = ctx.args[0].replace(" ", "")
    operands = ctx.args[1:] if len(ctx.args) > 2 or isinstance(ctx.args[1], torch.Tensor) else ctx.args[1]
    tensors = [t for t in operands if isinstance(t, torch.Tensor)]
    inputs, arrow, output = equation.partition("->")
    terms = inputs.split(",")
    if not arrow:  # implicit output: the letters seen once, in order
        letters = [c for c in re.sub(r"\.\.\.", "", inputs) if c.isalpha()]
        output = ("..." if "..." in inputs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    ellipsis = max((t.dim() - len(term.replace("...", "")) for t, term in zip(tensors, terms) if "..." in term),
                   default=0)
    fill = "".join(chr(ord("A") + i) for i in range(ellipsis))  # capitals stand for the dims "..." covers

    def spelled(term: str, ndim: int) -> str:
        if "..." not in term:
            return term
        own = ndim - len(term.replace("...", ""))
        return term.replace("...", fill[len(fill) - own:])

    pairs = [(t, spelled(term, t.dim())) for t, term in zip(tensors, terms)]
    return contract(ctx, pairs, spelled(output, ellipsis + len(output.replace("...", ""))))


def allowed_keys(mask: torch.Tensor | None, causal: bool, queries: int, keys: int, hides: bool,
                 ctx: RuleContext) -> np.ndarray | None:
    """``allowed[i, j]``: may query ``i`` attend to key ``j``; None when every key is allowed.
    ``hides``: a boolean mask is True where attention is *not* allowed (``nn.MultiheadAttention``)."""
    allowed = np.tril(np.ones((queries, keys), dtype=bool)) if causal else None
    if mask is None:
        return allowed
    if mask.device.type == "meta":
        if not causal:  # is_causal says the mask is the causal one: trusted, as PyTorch does
            ctx.note(MASK_NOTE)
        return allowed
    values = mask.detach().cpu()
    lets = (~values if hides else values) if values.dtype == torch.bool else values > float("-inf")
    lets = lets.reshape(-1, *lets.shape[-2:]) if lets.dim() > 2 else lets[None]
    if (lets != lets[:1]).any():
        ctx.note(MASK_VARIES_NOTE)
    through = np.broadcast_to(lets.any(dim=0).numpy(), (queries, keys))
    return through if allowed is None else allowed & through


def attend(ctx: RuleContext, query: torch.Tensor, keys: Sequence[torch.Tensor], seq_dim: int,
           allowed: np.ndarray | None, out_shape: Sequence[int]) -> RFState | None:
    """Output token ``i`` (dim ``seq_dim`` of ``query``, whose last dim is features) sees query
    token ``i`` and the keys ``allowed[i]`` (all when None) of every key/value tensor."""
    states: list[RFState | None] = [reduce_dims(ctx.state_of(query), tuple(query.shape), [-1], keepdim=True)]
    queries = query.shape[seq_dim]
    for key in keys:
        state = reduce_dims(ctx.state_of(key), tuple(key.shape), [-1], keepdim=True)
        if isinstance(state, TensorRF):
            if allowed is None or allowed.all():
                state = state.reduced_over([seq_dim], tuple(key.shape))
            else:
                rows = [np.flatnonzero(row).tolist() for row in allowed]
                shape = list(key.shape)
                shape[seq_dim] = queries
                causal = all(row == list(range(i + 1)) for i, row in enumerate(rows))
                prefix = causal and queries == key.shape[seq_dim]
                state = state.along(seq_dim, (tuple(key.shape), tuple(shape)), partial(list, rows),
                                    AxisMap.cumulative if prefix else None)
        states.append(state)
    unknown = first_unknown(states)
    if unknown:
        return unknown
    like_out = [torch.empty((*query.shape[:-1], 1), device="meta")] * len(states)
    return merge(like_out, states, out_shape)


@register_rf_rule("scaled_dot_product_attention")
def scaled_dot_product_attention(ctx: RuleContext) -> RuleResult:
    query, key, value = ctx.args[:3]
    mask, causal = ctx.arg(3, "attn_mask"), bool(ctx.arg(5, "is_causal", False))
    allowed = allowed_keys(mask, causal, query.shape[-2], key.shape[-2], hides=False, ctx=ctx)
    return attend(ctx, query, [key, value], -2, allowed, ctx.out_shape)


@register_rf_rule("multi_head_attention_forward")
def multi_head_attention(ctx: RuleContext) -> RuleResult:
    """Inputs are (L, N, E) or unbatched (L, E); returns the output and the attention weights."""
    query, key, value = ctx.args[:3]
    batched = query.dim() == 3
    seq = -3 if batched else -2
    mask, padding = ctx.arg(16, "attn_mask"), ctx.arg(14, "key_padding_mask")
    causal = bool(ctx.arg(24, "is_causal", False))
    allowed = allowed_keys(mask, causal, query.shape[0], key.shape[0], hides=True, ctx=ctx)
    if padding is not None:
        allowed = _padding_applied(allowed, padding, query.shape[0], key.shape[0], ctx)
    output = attend(ctx, query, [key, value], seq, allowed, tuple(ctx.output[0].shape))
    weights = ctx.output[1]
    if weights is None or not isinstance(output, TensorRF):
        return [output, None if weights is None else output]
    swapped = output.moved(lambda d: {-3: -2, -2: -3}.get(d, d) if batched else d)  # (L, N, E) -> (N, L, S)
    return [output, swapped]


def _padding_applied(allowed: np.ndarray | None, padding: torch.Tensor, queries: int, keys: int,
                     ctx: RuleContext) -> np.ndarray | None:
    """``key_padding_mask`` (N, S), True at padding: those keys are nobody's."""
    if padding.device.type == "meta":
        ctx.note(MASK_NOTE)
        return allowed
    kept = ~padding.detach().cpu().bool().reshape(-1, keys).all(dim=0).numpy()
    base = np.ones((queries, keys), dtype=bool) if allowed is None else allowed
    return base & kept[None, :]
