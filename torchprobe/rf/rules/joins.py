"""Joins: ``cat`` along a spatial axis (units one operand after the other) or any other dim, ``stack``."""

from __future__ import annotations

import torch

from torchprobe.rf.axis import AxisMap
from torchprobe.rf.rules.core import RuleContext, RuleResult, first_unknown, merge, register_rf_rule
from torchprobe.rf.state import RFState, TensorRF


@register_rf_rule("cat", "concat", "concatenate")
def cat(ctx: RuleContext) -> RuleResult:
    tensors = [t for t in ctx.arg(0, "tensors") if isinstance(t, torch.Tensor)]
    states = [ctx.state_of(t) for t in tensors]
    out_shape = ctx.out_shape
    dim = ctx.arg(1, "dim", 0)
    dim = dim - len(out_shape) if dim >= 0 else dim
    carried = [s for s in states if isinstance(s, TensorRF)]
    if not carried or dim not in carried[0].dims:
        return merge(tensors, states, out_shape)
    unknown = first_unknown(states)
    if unknown:
        return unknown
    # concatenation along a spatial axis: units come from one operand after the other
    axis = carried[0].dims.index(dim)
    parts = [(s.axes[axis] if isinstance(s, TensorRF) else None, t.shape[dim]) for t, s in zip(tensors, states)]
    new_axis = AxisMap.concatenated(parts, carried[0].axes[axis].size)
    others = merge(tensors, [s if s is None else _without_axis(s, axis) for s in states], out_shape)
    base = others if isinstance(others, TensorRF) else carried[0]
    # every part's support terms, in the order the new axis lists them
    axes = [
        new_axis if b == axis else m.with_terms(term.broadcast(m.units) for s in carried for term in s.axes[b].terms)
        for b, m in enumerate(base.axes)
    ]
    return TensorRF(tuple(axes), base.dims[:axis] + (dim,) + base.dims[axis + 1 :], base.aligned)


def _without_axis(state: RFState, axis: int) -> RFState:
    """The same state with ``axis`` reduced and detached from its dim, so that the other axes merge
    as usual (the caller replaces this axis's map by the concatenated one)."""
    if not isinstance(state, TensorRF):
        return state
    axes, dims = list(state.axes), list(state.dims)
    axes[axis], dims[axis] = state.reduced(axis)
    return TensorRF(tuple(axes), tuple(dims), state.aligned)


@register_rf_rule("stack")
def stack(ctx: RuleContext) -> RuleResult:
    tensors = [t for t in ctx.arg(0, "tensors") if isinstance(t, torch.Tensor)]
    states = [ctx.state_of(t) for t in tensors]
    ndim = tensors[0].dim()
    dim = ctx.arg(1, "dim", 0)
    dim = dim + ndim + 1 if dim < 0 else dim
    def shift(d: int) -> int:  # negative dims: those after the new dim keep theirs, those before move left
        return d if ndim + d >= dim else d - 1

    moved = [s.with_dims(shift) if isinstance(s, TensorRF) else s for s in states]
    return merge([t.unsqueeze(dim) for t in tensors], moved, ctx.out_shape)
