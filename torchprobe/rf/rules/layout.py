"""Layout ops: views, permutations, basic indexing, splits, ``roll`` and cumulative ops."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from torchprobe.engine.torch_utils import tensors_in
from torchprobe.rf.axis import AxisMap
from torchprobe.rf.rules.core import RuleContext, RuleResult, register_rf_rule
from torchprobe.rf.state import RFState, TensorRF, UnknownRF


def view_groups(in_shape: Sequence[int], out_shape: Sequence[int]) -> dict[int, int] | None:
    """Input dims that survive a view unchanged -> their output dim (both as negative indices).

    Dims are grouped by equal running products, as ``Tensor.view`` does; a group keeps a dim only
    when it holds exactly one dim of size > 1 on each side. Others are merged or split.
    """
    kept: dict[int, int] = {}
    i = j = 0
    n_in, n_out = len(in_shape), len(out_shape)
    while i < n_in or j < n_out:
        gi, gj = [i], [j]
        p_in = in_shape[i] if i < n_in else 1
        p_out = out_shape[j] if j < n_out else 1
        i, j = i + 1, j + 1
        while p_in != p_out:
            if p_in < p_out and i < n_in:
                p_in *= in_shape[i]
                gi.append(i)
                i += 1
            elif j < n_out:
                p_out *= out_shape[j]
                gj.append(j)
                j += 1
            else:
                return None
        big_in = [d for d in gi if d < n_in and in_shape[d] > 1]
        big_out = [d for d in gj if d < n_out and out_shape[d] > 1]
        if len(big_in) == 1 and len(big_out) == 1:
            kept[big_in[0] - n_in] = big_out[0] - n_out
    return kept


@register_rf_rule("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel")
def view(ctx: RuleContext) -> RuleResult:
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    in_shape = tuple(ctx.input.shape)
    groups = view_groups(in_shape, ctx.out_shape)
    if groups is None:
        return UnknownRF(ctx.name, "")
    if math.prod(ctx.out_shape[1:]) and len(ctx.out_shape) > len(in_shape) and any(
        d is not None and d not in groups and in_shape[d] > 1 for d in state.dims
    ):
        ctx.note(f"{ctx.name} splits a spatial dim into several (windows, patches): "
                 "the axis is treated as reduced, an over-estimate")
    return state.with_dims(groups.get)


def _permutation(ctx: RuleContext) -> list[int]:
    """``perm`` with output dim ``j`` = input dim ``perm[j]`` (non-negative)."""
    ndim = ctx.input.dim()
    if ctx.name == "permute":
        dims = ctx.args[1:] if len(ctx.args) > 2 or isinstance(ctx.arg(1, "dims"), int) else ctx.arg(1, "dims")
        return [d % ndim for d in dims]
    perm = list(range(ndim))
    if ctx.name in ("T", "t"):
        return perm[::-1]
    if ctx.name == "mT":
        perm[-2], perm[-1] = perm[-1], perm[-2]
        return perm
    a, b = ctx.arg(1, "dim0"), ctx.arg(2, "dim1")
    if ctx.name in ("movedim", "moveaxis"):
        sources = [a] if isinstance(a, int) else list(a)
        targets = [b] if isinstance(b, int) else list(b)
        sources, targets = [s % ndim for s in sources], [t % ndim for t in targets]
        rest = [d for d in perm if d not in sources]
        out: list[int | None] = [None] * ndim
        for s, t in zip(sources, targets):
            out[t] = s
        it = iter(rest)
        return [d if d is not None else next(it) for d in out]
    a, b = a % ndim, b % ndim
    perm[a], perm[b] = perm[b], perm[a]
    return perm


@register_rf_rule("permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "T", "mT")
def permute(ctx: RuleContext) -> RuleResult:
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    ndim = ctx.input.dim()
    perm = _permutation(ctx)
    return state.with_dims(lambda d: perm.index(d + ndim) - ndim)


@register_rf_rule("getitem")
def getitem(ctx: RuleContext) -> RuleResult:
    """Basic indexing: slices crop and stride an axis, an integer picks one unit of it."""
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    x = ctx.input
    index = ctx.args[1] if isinstance(ctx.args[1], tuple) else (ctx.args[1],)
    if any(isinstance(i, (torch.Tensor, list, bool)) for i in index):
        return UnknownRF("getitem with tensor indices", "")
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for i in index:
        expanded += [slice(None)] * (x.dim() - n_real) if i is Ellipsis else [i]
    expanded += [slice(None)] * (x.dim() - sum(1 for i in expanded if i is not None))
    axes, dims = list(state.axes), list(state.dims)
    in_dim = out_dim = 0
    out_ndim = len(ctx.out_shape)
    new_dims: dict[int, int | None] = {}
    for item in expanded:
        if item is None:
            out_dim += 1
            continue
        neg_in = in_dim - x.dim()
        if isinstance(item, slice):
            new_dims[neg_in] = out_dim - out_ndim
            if neg_in in dims:
                a = dims.index(neg_in)
                picked = range(*item.indices(x.shape[neg_in]))
                axes[a] = axes[a].sliding(1, picked.step, -picked.start, 1, len(picked))
            out_dim += 1
        else:  # an integer: the dim disappears, the axis keeps that unit's span
            new_dims[neg_in] = None
            if neg_in in dims:
                a = dims.index(neg_in)
                axes[a] = axes[a].picked(int(item) % x.shape[neg_in])
        in_dim += 1
    return TensorRF(tuple(axes), tuple(None if d is None else new_dims.get(d) for d in dims), state.aligned)


Geometry = Callable[[AxisMap, int, int], AxisMap]  # (map, in_units, out_units) -> map


def _along(ctx: RuleContext, steps: Sequence[tuple[int, Geometry]]) -> RuleResult:
    """Apply each ``geometry(map, in_units, out_units)`` to the axis its tensor dim carries."""
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    x, out_shape = ctx.input, ctx.out_shape
    for dim, geometry in steps:
        neg = dim - x.dim() if dim >= 0 else dim

        def move(a: int, m: AxisMap, d: int | None, neg: int = neg, geometry: Geometry = geometry) -> tuple:
            return (geometry(m, x.shape[d], out_shape[d]), d) if d == neg and d is not None else (m, d)

        state = state.map_axes(move)
    return state


def _int_args(ctx: RuleContext, index: int, name: str) -> list[int]:
    """``x.flip(2, 3)``, ``x.flip((2, 3))`` or ``torch.flip(x, dims=[2, 3])`` -> ``[2, 3]``."""
    value = ctx.arg(index, name)
    if len(ctx.args) > index + 1 or isinstance(value, int):
        return [int(v) for v in ctx.args[index:]]
    return [int(v) for v in value]


@register_rf_rule("chunk", "split", "split_with_sizes", "tensor_split", "unbind")
def split(ctx: RuleContext) -> RuleResult:
    """Pieces along a dim: along a spatial axis each piece is a crop of it (unbind: one unit)."""
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    x = ctx.input
    pieces = tensors_in(ctx.output)
    dim = ctx.arg(1, "dim", 0) if ctx.name == "unbind" else ctx.arg(2, "dim", 0)
    neg = dim - x.dim() if dim >= 0 else dim
    if neg not in state.dims:
        return [state] * len(pieces)
    axis = state.dims.index(neg)
    results: list[RFState | None] = []
    offset = 0
    for piece in pieces:
        m = state.axes[axis]
        if ctx.name == "unbind":
            new, dim_out = m.picked(offset), None
            offset += 1
        else:
            new, dim_out = m.sliding(1, 1, -offset, 1, piece.shape[neg]), neg
            offset += piece.shape[neg]
        axes, dims = list(state.axes), list(state.dims)
        axes[axis], dims[axis] = new, dim_out
        if dim_out is None:  # the dim is gone: dims to its left move one closer to the end
            dims = [d if d is None or d > neg else d + 1 for d in dims]
            dims[axis] = None
        results.append(TensorRF(tuple(axes), tuple(dims), state.aligned))
    return results


@register_rf_rule("roll")
def roll(ctx: RuleContext) -> RuleResult:
    """Circular shift: unit ``o`` holds what unit ``o - shift`` held (mod the size)."""
    shifts, dims = ctx.arg(1, "shifts"), ctx.arg(2, "dims")
    if dims is None:
        return UnknownRF("roll without dims (flattened)", "")
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)

    def rolled(k: int) -> Geometry:
        return lambda m, n, _out: m.gathered([[(o - k) % n] for o in range(n)])

    return _along(ctx, [(dim, rolled(shift)) for shift, dim in zip(shifts, dims)])


@register_rf_rule("cumsum", "cumprod", "cummax", "cummin", "logcumsumexp")
def cumulative(ctx: RuleContext) -> RuleResult:
    """Unit ``o`` along ``dim`` depends on units ``0 .. o``."""
    return _along(ctx, [(ctx.arg(1, "dim"), lambda m, _in, _out: m.cumulative())])


@register_rf_rule("flip", "fliplr", "flipud")
def flip(ctx: RuleContext) -> RuleResult:
    """Unit ``o`` of a flipped dim of ``n`` units is unit ``n - 1 - o``."""
    dims = {"fliplr": [1], "flipud": [0]}.get(ctx.name) or _int_args(ctx, 1, "dims")
    return _along(ctx, [(d, lambda m, n, _out: m.gathered([[n - 1 - o] for o in range(n)])) for d in dims])


@register_rf_rule("narrow")
def narrow(ctx: RuleContext) -> RuleResult:
    """``length`` units from ``start`` on (a negative start counts from the end)."""
    dim, start, length = ctx.arg(1, "dim"), int(ctx.arg(2, "start")), int(ctx.arg(3, "length"))
    return _along(ctx, [(dim, lambda m, n, _out: m.sliding(1, 1, -(start % n), 1, length))])


@register_rf_rule("repeat", "tile")
def repeat(ctx: RuleContext) -> RuleResult:
    """``x.repeat(*sizes)`` / ``x.tile(dims)``: unit ``o`` of a dim repeated ``r`` times is unit
    ``o mod n``; new leading dims (``sizes`` longer than ``x.dim()``) carry no axis."""
    counts = _int_args(ctx, 1, "repeats" if ctx.name == "repeat" else "dims")
    counts = [1] * (ctx.input.dim() - len(counts)) + counts  # tile pads at the front, repeat never needs to
    tiled = [(d, lambda m, n, out: m.gathered([[o % n] for o in range(out)]))
             for d in range(-1, -ctx.input.dim() - 1, -1) if counts[d] != 1]
    return _along(ctx, tiled)


@register_rf_rule("repeat_interleave")
def repeat_interleave(ctx: RuleContext) -> RuleResult:
    """Each unit ``r`` times in a row: unit ``o`` is unit ``o // r``."""
    repeats, dim = ctx.arg(1, "repeats"), ctx.arg(2, "dim")
    if isinstance(repeats, torch.Tensor) and repeats.numel() == 1 and repeats.device.type != "meta":
        repeats = int(repeats)
    if dim is None:
        return UnknownRF("repeat_interleave without dim (flattened)", "")
    if not isinstance(repeats, int):
        return UnknownRF("repeat_interleave with a repeat count per unit", "")
    return _along(ctx, [(dim, lambda m, n, out: m.gathered([[o // repeats] for o in range(out)]))])
