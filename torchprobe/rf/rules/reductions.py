"""Reductions and contractions: sums and norms over dims, softmax along a dim, Linear, matmul, attention."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torchprobe.rf.rules.core import (
    RuleContext,
    RuleResult,
    merge,
    normalise_dims,
    pointwise,
    reduce_dims,
    register_rf_rule,
)
from torchprobe.rf.state import UnknownRF


@register_rf_rule(
    "mean", "sum", "nansum", "nanmean", "amax", "amin", "prod", "std", "var", "logsumexp", "median",
    "nanmedian", "all", "any", "argmax", "argmin", "count_nonzero", "max", "min", "norm", "std_mean", "var_mean",
)
def reduction(ctx: RuleContext) -> RuleResult:
    tensors = ctx.tensors
    if ctx.name in ("max", "min") and len(tensors) > 1:  # torch.max(a, b) is elementwise
        return pointwise(ctx)
    x = ctx.input
    dim = ctx.arg(2 if ctx.name == "norm" else 1, "dim")
    if not isinstance(dim, (int, tuple, list, type(None))):  # e.g. norm's p given positionally
        dim = None
    keepdim = len(ctx.out_shape) == x.dim() and x.dim() > 0
    return reduce_dims(ctx.input_state, tuple(x.shape), normalise_dims(dim, x.dim()), keepdim)


@register_rf_rule("softmax", "log_softmax", "softmin", "normalize")
def along_dim(ctx: RuleContext) -> RuleResult:
    """Each unit depends on every unit along ``dim``, and the dim stays."""
    x = ctx.input
    dim = ctx.arg(2 if ctx.name == "normalize" else 1, "dim", 1 if ctx.name == "normalize" else None)
    dims = normalise_dims(dim, x.dim())
    return reduce_dims(ctx.input_state, tuple(x.shape), dims, keepdim=True)


@register_rf_rule("linear", "bilinear")
def linear(ctx: RuleContext) -> RuleResult:
    """A Linear contracts the last dim: an axis there becomes global; the others are untouched."""
    states = [reduce_dims(ctx.state_of(t), tuple(t.shape), [-1], keepdim=True) for t in ctx.tensors]
    return merge(ctx.tensors, states, ctx.out_shape)


@register_rf_rule("matmul", "mm", "bmm")
def matmul(ctx: RuleContext) -> RuleResult:
    a, b = ctx.tensors[:2]
    if a.dim() < 2 or b.dim() < 2:
        return UnknownRF(f"{ctx.name} of a 1-D operand", "")
    sa = reduce_dims(ctx.state_of(a), tuple(a.shape), [-1], keepdim=True)
    sb = reduce_dims(ctx.state_of(b), tuple(b.shape), [-2], keepdim=True)
    out = ctx.out_shape
    like_out = [a[..., :1].expand(*a.shape[:-1], out[-1]), b[..., :1, :].expand(*b.shape[:-2], out[-2], b.shape[-1])]
    return merge(like_out, [sa, sb], out)


def _attention(ctx: RuleContext, query: torch.Tensor, keys: Sequence[torch.Tensor], seq_dim: int) -> RuleResult:
    """Each output token sees its query token and every key/value token."""
    reduced = [reduce_dims(ctx.state_of(k), tuple(k.shape), [seq_dim], keepdim=True) for k in keys]
    states = [ctx.state_of(query), *reduced]
    like_query = [query] + [query for _ in keys]  # keys reduced to a constant: broadcast as the query
    return merge(like_query, states, ctx.out_shape)


@register_rf_rule("multi_head_attention_forward")
def multi_head_attention(ctx: RuleContext) -> RuleResult:
    query, key, value = ctx.args[:3]
    return _attention(ctx, query, [key, value], -3 if query.dim() == 3 else -2)


@register_rf_rule("scaled_dot_product_attention")
def scaled_dot_product_attention(ctx: RuleContext) -> RuleResult:
    query, key, value = ctx.args[:3]
    return _attention(ctx, query, [key, value], -2)
