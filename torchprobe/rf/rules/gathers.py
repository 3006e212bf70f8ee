"""Reads at indices held in a tensor: ``index_select``, ``gather``, ``take_along_dim``, indexing
with index tensors (basic indexing is a layout op), ``grid_sample``. Exact where the index is a
constant the pass can see (real tensors, not computed from the input); otherwise every unit along
the indexed dims is counted, with a note that the output depends on the index's values.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from torchprobe.rf.reshape import viewed
from torchprobe.rf.rules.core import RuleContext, RuleResult, merge, reduce_dims, register_rf_rule
from torchprobe.rf.rules.layout import basic_getitem, read_along, sliced
from torchprobe.rf.state import RFState, TensorRF

DEPENDS_NOTE = ("{op} reads where the values of its {what} say ({why}): every unit along the dims it "
                "indexes is counted")
UNION_NOTE = ("{op}'s index differs along the other dims: each index along the gathered dim is counted as "
              "reading the union of what it picks anywhere, an over-estimate")


def visible(ctx: RuleContext, index: torch.Tensor) -> bool:
    """The index's values are known and the same for every input: a constant of a real pass."""
    return index.device.type != "meta" and ctx.state_of(index) is None


def depends(ctx: RuleContext, state: TensorRF, dims: Sequence[int], shape: Sequence[int], what: str,
            index: torch.Tensor) -> TensorRF:
    """Every unit along ``dims`` (negative) reads every index of them."""
    why = "computed from the input" if ctx.state_of(index) is not None else "not visible on the meta device"
    ctx.note(DEPENDS_NOTE.format(op=ctx.name, what=what, why=why))
    return state.reduced_over(list(dims), shape)


def _values(index: torch.Tensor) -> np.ndarray:
    return index.detach().to("cpu", torch.int64).numpy()


@register_rf_rule("index_select")
def index_select(ctx: RuleContext) -> RuleResult:
    """Index ``j`` of ``dim`` is input index ``index[j]``."""
    state, x, index = ctx.input_state, ctx.input, ctx.arg(2, "index")
    if not isinstance(state, TensorRF):
        return state
    dim = ctx.arg(1, "dim") % x.dim() - x.dim()
    if not visible(ctx, index):
        return depends(ctx, state, [dim], tuple(x.shape), "index", index)
    picks = _values(index).reshape(-1) % x.shape[dim]
    return read_along(ctx, [(dim, lambda _n, _out: [[int(i)] for i in picks], None)])


def _picked_along(ctx: RuleContext, state: TensorRF, shape: tuple[int, ...], dim: int, index: torch.Tensor,
                  out_shape: tuple[int, ...]) -> TensorRF:
    """``gather`` semantics (index broadcast to ``out_shape``): index ``j`` of ``dim`` reads
    ``index[..., j, ...]``, exactly when that is the same at every index of the other dims."""
    if not visible(ctx, index):
        return depends(ctx, state, [dim], shape, "index", index)
    values = np.broadcast_to(_values(index), out_shape) % shape[dim]
    lines = np.moveaxis(values, dim, -1).reshape(-1, out_shape[dim])
    if not (lines == lines[:1]).all():
        ctx.note(UNION_NOTE.format(op=ctx.name))
    rows = [np.unique(lines[:, j]).tolist() for j in range(out_shape[dim])]
    after = list(shape)
    after[dim] = out_shape[dim]
    return state.along(dim, (shape, tuple(after)), lambda: rows)


@register_rf_rule("gather")
def gather(ctx: RuleContext) -> RuleResult:
    """``out[..., j, ...] = x[..., index[..., j, ...], ...]``; the other dims are cropped to the index's."""
    state, x, index = ctx.input_state, ctx.input, ctx.arg(2, "index")
    if not isinstance(state, TensorRF):
        return state
    dim = ctx.arg(1, "dim") % x.dim() - x.dim()
    shape = list(x.shape)
    for d in range(-x.dim(), 0):
        if d != dim and index.shape[d] < shape[d]:
            state = sliced(state, d, slice(0, index.shape[d]), shape)
            shape[d] = index.shape[d]
    return _picked_along(ctx, state, tuple(shape), dim, index, ctx.out_shape)


@register_rf_rule("take_along_dim")
def take_along_dim(ctx: RuleContext) -> RuleResult:
    """``gather`` with the index broadcast against ``x``; without ``dim``, on the flattened ``x``."""
    state, x, index = ctx.input_state, ctx.input, ctx.arg(1, "indices")
    if not isinstance(state, TensorRF):
        return state
    dim = ctx.arg(2, "dim")
    if dim is None:
        state, notes = viewed(state, tuple(x.shape), (x.numel(),), "flatten")
        for note in notes:
            ctx.note(note)
        return _picked_along(ctx, state, (x.numel(),), -1, index.reshape(-1), ctx.out_shape)
    dim = dim % x.dim() - x.dim()
    shape = tuple(s if d == dim else o for d, (s, o) in enumerate(zip(x.shape, ctx.out_shape), -x.dim()))
    state = merge([x], [state], shape)  # x broadcast against the index first
    return _picked_along(ctx, state, shape, dim, index, ctx.out_shape) if isinstance(state, TensorRF) else state


def _is_index_tensor(item: Any) -> bool:
    return isinstance(item, (torch.Tensor, list))


@register_rf_rule("getitem")
def getitem(ctx: RuleContext) -> RuleResult:
    """Indexing: basic (slices, integers, None) as a layout op, or with index tensors."""
    items = ctx.args[1] if isinstance(ctx.args[1], tuple) else (ctx.args[1],)
    state = ctx.input_state
    if not any(_is_index_tensor(i) or isinstance(i, bool) for i in items) or not isinstance(state, TensorRF):
        return basic_getitem(ctx)
    return advanced_getitem(ctx, state, items)


def advanced_getitem(ctx: RuleContext, state: TensorRF, items: tuple[Any, ...]) -> TensorRF:
    """``x[..., idx, ...]`` with one integer or boolean tensor (or list) on one dim and slices
    elsewhere: basic slicing, then ``index_select`` along that dim. Anything else (several index
    tensors, a multi-dim mask): every unit along the indexed dims, with a note."""
    x = ctx.input
    expanded: list[Any] = []
    for item in items:
        expanded += [slice(None)] * (x.dim() - len(items) + 1) if item is Ellipsis else [item]
    expanded += [slice(None)] * (x.dim() - len(expanded))
    shape = list(x.shape)
    tensors = [d for d, item in enumerate(expanded) if _is_index_tensor(item)]
    simple = (len(tensors) == 1 and len(expanded) == x.dim()
              and all(isinstance(i, slice) for d, i in enumerate(expanded) if d not in tensors))
    index = torch.as_tensor(expanded[tensors[0]]) if tensors else None
    if not simple or index is None or (index.dtype != torch.bool and index.dim() != 1) or index.dim() > 1:
        state = state.reduced_over(list(range(-x.dim(), 0)), shape)
        ctx.note(DEPENDS_NOTE.format(op="indexing", what="index tensors", why="an index this rule cannot follow"))
        return state
    for d, item in enumerate(expanded):
        if d not in tensors:
            neg = d - x.dim()
            state = sliced(state, neg, item, shape)
            shape[neg] = len(range(*item.indices(shape[neg])))
    dim = tensors[0] - x.dim()
    if not visible(ctx, index):
        return depends(ctx, state, [dim], shape, "index", index)
    picks = np.flatnonzero(_values(index)) if index.dtype == torch.bool else _values(index) % shape[dim]
    after = list(shape)
    after[dim] = len(picks)
    return state.along(dim, (tuple(shape), tuple(after)), lambda: [[int(i)] for i in picks])


@register_rf_rule("grid_sample")
def grid_sample(ctx: RuleContext) -> RuleResult:
    """Each output unit reads the input pixels around the point its grid entry names (exact for
    a constant grid the pass can see, per axis as the union over the other output axes), and
    whatever the grid entry itself reads."""
    x, grid = ctx.args[0], ctx.arg(1, "grid")
    n = grid.shape[-1]
    out_shape = ctx.out_shape
    parts: list[tuple[torch.Tensor, RFState | None]] = []
    state = ctx.state_of(x)
    if isinstance(state, TensorRF):
        shape = tuple(x.shape)
        if visible(ctx, grid):
            state = _sampled(ctx, state, shape, grid, out_shape)
        else:
            state = depends(ctx, state, list(range(-n, 0)), shape, "grid", grid)
        parts.append((torch.empty(out_shape, device="meta"), state))
    elif state is not None:
        return state
    grid_state = ctx.state_of(grid)
    if grid_state is not None:
        # (N, *out, n) -> (N, 1, *out): the coordinate dim read whole, a channel dim broadcast
        coords = reduce_dims(grid_state, tuple(grid.shape), [-1], keepdim=False)
        if isinstance(coords, TensorRF):
            coords = coords.moved(lambda d: d - 1 if d < -n else d)
        parts.append((torch.empty((grid.shape[0], 1, *grid.shape[1:-1]), device="meta"), coords))
    return merge([t for t, _ in parts], [s for _, s in parts], out_shape)


def _sampled(ctx: RuleContext, state: TensorRF, shape: tuple[int, ...], grid: torch.Tensor,
             out_shape: tuple[int, ...]) -> TensorRF:
    n = grid.shape[-1]
    mode = ctx.arg(2, "mode", "bilinear")
    padding = ctx.arg(3, "padding_mode", "zeros")
    align = bool(ctx.arg(4, "align_corners", False))
    coords = grid.detach().to("cpu", torch.float64)
    after = list(shape)
    for axis in range(n):  # grid's last dim is (x, y[, z]): x addresses the last dim
        dim = -1 - axis
        size = shape[dim]
        taps = _taps(coords[..., axis], size, mode, padding, align)  # (..., k): -1 for none
        # per output index along dim (the tap dim is last): its taps at every other output index
        lines = np.moveaxis(taps, dim - 1, 0).reshape(out_shape[dim], -1, taps.shape[-1])
        if not (lines == lines[:, :1]).all():
            ctx.note(UNION_NOTE.format(op=ctx.name))
        rows = [np.unique(line[line >= 0]).tolist() for line in lines]
        before = tuple(after)
        after[dim] = out_shape[dim]
        state = state.along(dim, (before, tuple(after)), partial(list, rows))
    return state


def _taps(coord: torch.Tensor, size: int, mode: str, padding: str, align: bool) -> np.ndarray:
    """The input indices each sample reads with a non-zero weight (-1 pads the list)."""
    pos = (coord + 1) / 2 * (size - 1) if align else ((coord + 1) * size - 1) / 2
    if padding == "reflection":
        low, high = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
        span = high - low
        if span > 0:
            folded = torch.remainder(pos - low, 2 * span)
            pos = low + torch.where(folded > span, 2 * span - folded, folded)
        pos = pos.clamp(0, size - 1)
    elif padding == "border":
        pos = pos.clamp(0, size - 1)
    if mode == "nearest":
        taps = torch.round(pos).long()[..., None]
        valid = torch.ones_like(taps, dtype=torch.bool)
    else:
        base = torch.floor(pos)
        still = (pos == base)[..., None]  # on a pixel: only that pixel has a non-zero weight
        offsets = torch.tensor([0, 1]) if mode == "bilinear" else torch.tensor([-1, 0, 1, 2])
        taps = base.long()[..., None] + offsets
        valid = ~still | (offsets == 0)
        if padding != "zeros":  # border and reflection read the edge pixel for taps beyond it
            taps = taps.clamp(0, size - 1)
    valid &= (taps >= 0) & (taps < size)
    return np.where(valid.numpy(), taps.numpy(), -1)
