"""Reductions: sums and norms over dims, softmax along a dim, FFTs over their dims, and the Linear
that contracts the last dim."""

from __future__ import annotations

from torchprobe.rf.rules.core import (
    RuleContext,
    RuleResult,
    merge,
    normalise_dims,
    pointwise,
    reduce_dims,
    register_rf_rule,
)
from torchprobe.rf.state import TensorRF


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


FFTS = ("fft", "ifft", "rfft", "irfft", "hfft", "ihfft")


@register_rf_rule(*(f"fft_{name}{suffix}" for name in FFTS for suffix in ("", "2", "n")))
def fft(ctx: RuleContext) -> RuleResult:
    """Every frequency reads every unit along the transformed dims (``dim``, else the last one, two,
    or as many as ``s`` names; all of them for an ``n`` transform without either)."""
    x = ctx.input
    suffix = ctx.name[-1]
    dim, s = ctx.arg(2, "dim"), ctx.arg(1, "s" if suffix in "2n" else "n")
    if dim is None:
        count = {"2": 2, "n": len(s) if isinstance(s, (tuple, list)) else x.dim()}.get(suffix, 1)
        dims = list(range(-count, 0))
    else:
        dims = normalise_dims(dim, x.dim())
    return reduce_dims(ctx.input_state, tuple(x.shape), dims, keepdim=True)


@register_rf_rule("view_as_real")
def view_as_real(ctx: RuleContext) -> RuleResult:
    """A new last dim (real, imaginary) that carries no axis."""
    state = ctx.input_state
    return state.moved(lambda d: d - 1) if isinstance(state, TensorRF) else state


@register_rf_rule("view_as_complex")
def view_as_complex(ctx: RuleContext) -> RuleResult:
    """The last dim (real, imaginary) read whole and gone."""
    return reduce_dims(ctx.input_state, tuple(ctx.input.shape), [-1], keepdim=False)
