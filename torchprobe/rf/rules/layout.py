"""Layout ops: views, permutations, basic indexing, splits, ``roll`` and cumulative ops."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from torchprobe.engine.torch_utils import tensors_in
from torchprobe.rf.axis import AxisMap
from torchprobe.rf.placement import Placement
from torchprobe.rf.reshape import viewed
from torchprobe.rf.rules.core import RuleContext, RuleResult, register_rf_rule
from torchprobe.rf.state import RFState, TensorRF, UnknownRF, picked, reindexed


@register_rf_rule("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel")
def view(ctx: RuleContext) -> RuleResult:
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    viewed_state, notes = viewed(state, tuple(ctx.input.shape), ctx.out_shape, ctx.name)
    for note in dict.fromkeys(notes):
        ctx.note(note)
    return viewed_state


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
    return state.moved(lambda d: perm.index(d + ndim) - ndim)


def sliced(state: TensorRF, dim: int, index: slice, shape: Sequence[int]) -> TensorRF:
    """Indices ``index`` of ``dim`` (negative): a crop and stride of each axis it carries."""
    picked_range = range(*index.indices(shape[dim]))

    def crop(_a: int, m: AxisMap, p: Placement) -> tuple[AxisMap, Placement]:
        if dim not in p.dims:
            return m, p
        if p.dim == dim:
            return m.sliding(1, picked_range.step, -picked_range.start, 1, len(picked_range)), \
                Placement.on(dim, len(picked_range))
        return m, p.sliced(dim, index)

    return state.map_axes(crop)


def _shifted_left_of(at: int) -> Callable[[int], int]:
    """Dims (negative) left of ``at`` move one further left: a new dim was inserted before ``at``."""
    return lambda d: d - 1 if d < at else d


def taken(state: TensorRF, dim: int, index: int, shape: Sequence[int]) -> TensorRF:
    """Index ``index`` of ``dim`` (negative) taken: the dim disappears, dims before it move right."""
    state = state.map_axes(lambda _a, m, p: picked(m, p, dim, index, shape))
    return state.moved(lambda d: d + 1 if d < dim else d)


def basic_getitem(ctx: RuleContext) -> RuleResult:
    """Basic indexing: slices crop and stride an axis, an integer picks one unit of it."""
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    x = ctx.input
    index = ctx.args[1] if isinstance(ctx.args[1], tuple) else (ctx.args[1],)
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for i in index:
        expanded += [slice(None)] * (x.dim() - n_real) if i is Ellipsis else [i]
    expanded += [slice(None)] * (x.dim() - sum(1 for i in expanded if i is not None))
    shape = list(x.shape)
    dim = -len(shape)  # the dim of the next index, in the shape as it is so far
    for item in expanded:
        if item is None:  # a new dim of size 1 before this one
            state = state.moved(_shifted_left_of(dim))
            shape.insert(len(shape) + dim, 1)
        elif isinstance(item, slice):
            state = sliced(state, dim, item, shape)
            shape[dim] = len(range(*item.indices(shape[dim])))
            dim += 1
        else:
            state = taken(state, dim, int(item) % shape[dim], shape)
            del shape[dim]
            dim += 1
    return state


Rows = Callable[[int, int], list[list[int]]]  # (in_units, out_units) -> indices each output index reads
Geometry = Callable[[AxisMap, int, int], AxisMap]  # the same on a span map: (map, in_units, out_units) -> map


def read_along(ctx: RuleContext, steps: Sequence[tuple[int, Rows, Geometry | None]]) -> RuleResult:
    """Each ``(dim, rows, geometry)`` in turn: index ``j`` of ``dim`` reads indices ``rows(n_in, n_out)[j]``
    (``geometry`` does it on an axis that ``dim`` alone carries, keeping the RF convention)."""
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    x, out_shape = ctx.input, ctx.out_shape
    shape = list(x.shape)
    for dim, rows, geometry in steps:
        neg = dim - x.dim() if dim >= 0 else dim
        before, n_in, n_out = tuple(shape), shape[neg], out_shape[neg]
        shape[neg] = n_out
        state = state.along(neg, (before, tuple(shape)), partial(rows, n_in, n_out),
                            None if geometry is None else partial(_on_map, geometry, n_in, n_out))
    return state


def _on_map(geometry: Geometry, n_in: int, n_out: int, m: AxisMap) -> AxisMap:
    return geometry(m, n_in, n_out)


def _int_args(ctx: RuleContext, index: int, name: str) -> list[int]:
    """``x.flip(2, 3)``, ``x.flip((2, 3))`` or ``torch.flip(x, dims=[2, 3])`` -> ``[2, 3]``."""
    value = ctx.arg(index, name)
    if len(ctx.args) > index + 1 or isinstance(value, int):
        return [int(v) for v in ctx.args[index:]]
    return [int(v) for v in value]


@register_rf_rule("chunk", "split", "split_with_sizes", "tensor_split", "unbind")
def split(ctx: RuleContext) -> RuleResult:
    """Pieces along a dim: each piece is a crop of the axes it carries (unbind: one index)."""
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    x = ctx.input
    shape = tuple(x.shape)
    pieces = tensors_in(ctx.output)
    dim = ctx.arg(1, "dim", 0) if ctx.name == "unbind" else ctx.arg(2, "dim", 0)
    neg = dim - x.dim() if dim >= 0 else dim
    if ctx.name == "unbind":
        return [taken(state, neg, i, shape) for i in range(len(pieces))]
    results: list[RFState | None] = []
    offset = 0
    for piece in pieces:
        results.append(sliced(state, neg, slice(offset, offset + piece.shape[neg]), shape))
        offset += piece.shape[neg]
    return results


def windows(ctx: RuleContext) -> RuleResult:
    """``x.unfold(dim, size, step)``: index ``(w, k)`` (window ``w`` of ``dim``, ``k`` in the new last
    dim) is index ``w * step + k``; an axis that ``dim`` alone carries keeps its map."""
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    x = ctx.input
    dim, size, step = ctx.arg(1, "dimension") % x.dim() - x.dim() - 1, ctx.arg(2, "size"), ctx.arg(3, "step")
    shape = (*x.shape, size)
    count = ctx.out_shape[dim]
    start = np.arange(count) * step

    def split(_a: int, m: AxisMap, p: Placement) -> tuple[AxisMap, Placement]:
        if dim not in p.dims:
            return m, p
        if p.dims == (dim,):
            table = p.tables[0]
            if np.array_equal(table, np.arange(len(table))):
                return m, Placement.of([(dim, start), (-1, np.arange(size))])
        grid = np.moveaxis(p.grid(p.dims, shape), list(p.dims).index(dim), -1)
        taken = grid[..., start[:, None] + np.arange(size)]  # (..., window, offset)
        dims = [d for d in p.dims if d != dim] + [dim, -1]
        order = sorted(range(len(dims)), key=lambda k: dims[k])
        return reindexed(m, np.transpose(taken, order), sorted(dims), {**dict(enumerate(shape, -len(shape))),
                                                                      dim: count})

    return state.moved(lambda d: d - 1).map_axes(split)


def _rotated(state: TensorRF, k: int, dims: tuple[int, int], shape: Sequence[int]) -> TensorRF:
    """``torch.rot90``: ``k = 1`` is a flip of the second dim, then a swap of the two."""
    first, second = dims

    def flipped(state: TensorRF, dim: int, shape: Sequence[int]) -> TensorRF:
        return state.along(dim, (shape, shape), lambda: [[shape[dim] - 1 - o] for o in range(shape[dim])])

    def swapped(d: int) -> int:
        return second if d == first else first if d == second else d

    swapped_shape = [shape[swapped(d)] for d in range(-len(shape), 0)]
    if k == 2:
        return flipped(flipped(state, first, shape), second, shape)
    if k == 1:
        return flipped(state, second, shape).moved(swapped)
    return flipped(state.moved(swapped), second, swapped_shape)


@register_rf_rule("rot90")
def rot90(ctx: RuleContext) -> RuleResult:
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    x = ctx.input
    k = ctx.arg(1, "k", 1) % 4
    dims = ctx.arg(2, "dims", [0, 1])
    first, second = (d % x.dim() - x.dim() for d in dims)
    return state if k == 0 else _rotated(state, k, (first, second), tuple(x.shape))


@register_rf_rule("roll")
def roll(ctx: RuleContext) -> RuleResult:
    """Circular shift: index ``o`` holds what index ``o - shift`` held (mod the size)."""
    shifts, dims = ctx.arg(1, "shifts"), ctx.arg(2, "dims")
    if dims is None:
        return UnknownRF("roll without dims (flattened)", "")
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)

    def rolled(k: int) -> Rows:
        return lambda n, _out: [[(o - k) % n] for o in range(n)]

    return read_along(ctx, [(dim, rolled(shift), None) for shift, dim in zip(shifts, dims)])


@register_rf_rule("cumsum", "cumprod", "cummax", "cummin", "logcumsumexp")
def cumulative(ctx: RuleContext) -> RuleResult:
    """Unit ``o`` along ``dim`` depends on units ``0 .. o``."""
    return read_along(ctx, [(ctx.arg(1, "dim"), lambda n, _out: [list(range(o + 1)) for o in range(n)],
                         lambda m, _in, _out: m.cumulative())])


@register_rf_rule("flip", "fliplr", "flipud")
def flip(ctx: RuleContext) -> RuleResult:
    """Unit ``o`` of a flipped dim of ``n`` units is unit ``n - 1 - o``."""
    dims = {"fliplr": [1], "flipud": [0]}.get(ctx.name) or _int_args(ctx, 1, "dims")
    return read_along(ctx, [(d, lambda n, _out: [[n - 1 - o] for o in range(n)], None) for d in dims])


@register_rf_rule("narrow")
def narrow(ctx: RuleContext) -> RuleResult:
    """``length`` units from ``start`` on (a negative start counts from the end)."""
    dim, start, length = ctx.arg(1, "dim"), int(ctx.arg(2, "start")), int(ctx.arg(3, "length"))
    return read_along(ctx, [(dim, lambda n, _out: [[start % n + o] for o in range(length)],
                         lambda m, n, _out: m.sliding(1, 1, -(start % n), 1, length))])


@register_rf_rule("repeat", "tile")
def repeat(ctx: RuleContext) -> RuleResult:
    """``x.repeat(*sizes)`` / ``x.tile(dims)``: unit ``o`` of a dim repeated ``r`` times is unit
    ``o mod n``; new leading dims (``sizes`` longer than ``x.dim()``) carry no axis."""
    counts = _int_args(ctx, 1, "repeats" if ctx.name == "repeat" else "dims")
    counts = [1] * (ctx.input.dim() - len(counts)) + counts  # tile pads at the front, repeat never needs to
    tiled = [(d, lambda n, out: [[o % n] for o in range(out)], None)
             for d in range(-1, -ctx.input.dim() - 1, -1) if counts[d] != 1]
    return read_along(ctx, tiled)


COUNTS_NOTE = ("repeat_interleave repeats each unit as many times as a tensor of counts says, and those are "
               "not visible (meta device, or computed from the input): every unit along the dim is counted")


@register_rf_rule("repeat_interleave")
def repeat_interleave(ctx: RuleContext) -> RuleResult:
    """Each unit ``r`` times in a row: unit ``o`` is unit ``o // r``; with a count per unit, the
    unit whose run holds ``o``."""
    repeats, dim = ctx.arg(1, "repeats"), ctx.arg(2, "dim")
    if isinstance(repeats, torch.Tensor) and repeats.numel() == 1 and repeats.device.type != "meta":
        repeats = int(repeats)
    if dim is None:
        return UnknownRF("repeat_interleave without dim (flattened)", "")
    if isinstance(repeats, int):
        return read_along(ctx, [(dim, lambda _n, out: [[o // repeats] for o in range(out)], None)])
    state = ctx.input_state
    if repeats.device.type == "meta" or ctx.state_of(repeats) is not None:
        if isinstance(state, TensorRF):
            ctx.note(COUNTS_NOTE)
            return state.reduced_over([dim % ctx.input.dim() - ctx.input.dim()], tuple(ctx.input.shape))
        return state
    counts = repeats.detach().cpu().long().numpy()
    owners = np.repeat(np.arange(len(counts)), counts)  # the unit each output index repeats
    return read_along(ctx, [(dim, lambda _n, _out: [[int(u)] for u in owners], None)])
