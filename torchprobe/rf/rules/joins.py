"""Joins: ``cat`` along a dim that carries input axes (units one operand after the other) or any
other dim (a merge, as for channels), and ``stack``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from torchprobe.rf.axis import AxisMap
from torchprobe.rf.placement import NO_UNIT, Placement
from torchprobe.rf.rules.core import RuleContext, RuleResult, first_unknown, merge, register_rf_rule
from torchprobe.rf.state import RFState, TensorRF
from torchprobe.rf.support import Support

SHARED_CAT_NOTE = ("cat along a dim that shares an input axis with other dims: the parts are "
                   "merged as if on channels, an over-estimate")


@register_rf_rule("cat", "concat", "concatenate")
def cat(ctx: RuleContext) -> RuleResult:
    tensors = [t for t in ctx.arg(0, "tensors") if isinstance(t, torch.Tensor)]
    states = [ctx.state_of(t) for t in tensors]
    out_shape = ctx.out_shape
    dim = ctx.arg(1, "dim", 0)
    dim = dim - len(out_shape) if dim >= 0 else dim
    unknown = first_unknown(states)
    if unknown:
        return unknown
    carried = [s for s in states if isinstance(s, TensorRF)]
    along = [a for a in range(len(carried[0].axes)) if any(dim in s.places[a].dims for s in carried)] if carried else []
    if any(len(s.places[a].dims) > 1 for s in carried for a in along):
        ctx.note(SHARED_CAT_NOTE)
        along = []
    if not along:
        return _marked(merge(tensors, states, out_shape), tensors, states, dim)
    # the other axes merge as usual; the axes along ``dim`` list the operands' units one after the other
    rest = merge(tensors, [_detached(s, along) if isinstance(s, TensorRF) else s for s in states], out_shape)
    assert isinstance(rest, TensorRF)  # carried is not empty and nothing is unknown
    axes, places = list(rest.axes), list(rest.places)
    for a in along:
        axes[a], places[a] = _concatenated(tensors, states, a, dim)
    for b in range(len(axes)):
        if b not in along:  # every operand's support terms, in the order the concatenated axes list them
            axes[b] = axes[b].with_terms(
                t for s in carried for t in _terms_as(s, b, places[b], out_shape, axes[b].units))
    return TensorRF(tuple(axes), tuple(places), rest.aligned)


def _concatenated(
    tensors: Sequence[torch.Tensor], states: Sequence[RFState | None], axis: int, dim: int
) -> tuple[AxisMap, Placement]:
    parts: list[tuple[AxisMap | None, int]] = []
    tables = []
    offset = 0
    for t, s in zip(tensors, states):
        n = t.shape[dim]
        if not isinstance(s, TensorRF):
            tables.append(np.full(n, NO_UNIT))
            continue
        m, p = s.axes[axis], s.places[axis]
        table = p.tables[0] if p.dims else np.zeros(n, dtype=np.int64)
        tables.append(np.where(table >= 0, table + offset, NO_UNIT))
        parts.append((m, m.units))
        offset += m.units
    size = next(m.size for m, _ in parts if m is not None)
    return AxisMap.concatenated(parts, size), Placement.of([(dim, np.concatenate(tables))])


def _marked(state: RFState | None, tensors: Sequence[torch.Tensor], states: Sequence[RFState | None],
            dim: int) -> RFState | None:
    """A merge along the batch dim in which some parts read nothing (the second frame of an
    optical-flow pair batched with the first): their indices hold no unit of any axis."""
    if not isinstance(state, TensorRF) or all(s is not None for s in states) or dim != -tensors[0].dim():
        return state  # channels are not told apart one by one: a part that reads nothing merges
    mark = np.concatenate([np.full(t.shape[dim], 0 if s is not None else NO_UNIT) for t, s in zip(tensors, states)])
    return state.map_axes(lambda _a, m, p: (m, Placement.of([*zip(p.dims, p.tables), (dim, mark)])))


def _detached(state: TensorRF, axes: Sequence[int]) -> TensorRF:
    """``axes`` reduced and taken off their dims, so that the other axes merge as usual (the
    caller puts the concatenated maps in their place)."""
    return replace(state, axes=tuple(m.reduced() if a in axes else m for a, m in enumerate(state.axes)),
                   places=tuple(Placement.nowhere() if a in axes else p for a, p in enumerate(state.places)))


def _terms_as(state: TensorRF, axis: int, place: Placement, out_shape: Sequence[int], units: int) -> list[Support]:
    """An operand's support terms along ``axis``, on the merged placement (their hull where the
    operand's units are numbered otherwise)."""
    m, p = state.axes[axis], state.places[axis]
    same = p.broadcast(out_shape) == place if p.dims else True
    return [t.broadcast(units) if same and len(t) in (1, units) else t.reduced().broadcast(units) for t in m.terms]


@register_rf_rule("stack")
def stack(ctx: RuleContext) -> RuleResult:
    tensors = [t for t in ctx.arg(0, "tensors") if isinstance(t, torch.Tensor)]
    states = [ctx.state_of(t) for t in tensors]
    ndim = tensors[0].dim()
    dim = ctx.arg(1, "dim", 0)
    dim = dim + ndim + 1 if dim < 0 else dim

    def shift(d: int) -> int:  # negative dims: those after the new dim keep theirs, those before move left
        return d if ndim + d >= dim else d - 1

    moved = [s.moved(shift) if isinstance(s, TensorRF) else s for s in states]
    return merge([t.unsqueeze(dim) for t in tensors], moved, ctx.out_shape)
