"""In-place writes into part of a tensor (``copy_``, ``fill_``, ``zero_``, slice assignment):
``canvas[..., :h, :w].copy_(x)`` (torchvision's detection batching), ``x[:, :, 2:5] = y``. The
written part is a *box* of the whole tensor: each of its dims walks one dim of the whole with a
fixed step, every other dim of the whole stays at one index. The whole then holds the part's
state inside the box and its own state outside it, exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from torchprobe.rf.placement import NO_UNIT, Columns, Placement
from torchprobe.rf.rules.core import RuleContext, RuleResult, merge, reduce_dims, register_rf_rule
from torchprobe.rf.state import RFState, TensorRF, UnknownRF, compacted

SCATTERED_NOTE = ("a write through an index that is not a box of the tensor (a tensor or boolean index, "
                  "a strided view) is counted as reaching every unit, an over-estimate")


@dataclass(frozen=True)
class Box:
    """``indices[b]``: the indices of dim ``b`` of the whole that the part covers (negative dims);
    ``source[b]``: the part's dim (negative) that walks them, None for a dim held at one index."""

    shape: tuple[int, ...]
    indices: dict[int, np.ndarray]
    source: dict[int, int | None]


def box_of(part: torch.Tensor, whole: torch.Tensor) -> Box | None:
    """Where ``part`` (a view sharing ``whole``'s storage) lies in ``whole``, if it is a box of a
    contiguous ``whole`` (None otherwise: a view of a transposed tensor, a diagonal)."""
    if not whole.is_contiguous() or part.numel() == 0:
        return None
    shape, strides, n = tuple(whole.shape), whole.stride(), whole.dim()
    offset = part.storage_offset() - whole.storage_offset()
    if not 0 <= offset < max(whole.numel(), 1):
        return None
    origin = [int(c) for c in np.unravel_index(int(offset), shape)] if n else []
    source: dict[int, int | None] = {b - n: None for b in range(n)}
    indices = {b - n: np.array([origin[b]]) for b in range(n)}
    for k, (size, stride) in enumerate(zip(part.shape, part.stride())):
        if size == 1:
            continue
        b = next((b for b in range(n) if shape[b] > 1 and strides[b] <= stride
                  and stride % strides[b] == 0 and (b == 0 or stride < strides[b - 1])), None)
        if b is None or source[b - n] is not None:
            return None
        step = stride // strides[b]
        if origin[b] + step * (size - 1) >= shape[b]:
            return None
        source[b - n] = k - part.dim()
        indices[b - n] = origin[b] + step * np.arange(size)
    return Box(shape, indices, source)


def placed(box: Box, part: TensorRF, part_shape: Sequence[int]) -> TensorRF:
    """The part's state on the whole's dims: its units inside the box, no unit outside it."""
    walked = set(box.source.values())
    carried = {d for p in part.places for d in p.dims}
    # the units outside the box along a dim are marked "no unit" on one axis: on the axes of
    # that dim when it carries some, else on the first axis
    unmarked = [b for b, i in box.indices.items() if len(i) < box.shape[b] and box.source[b] not in carried]

    def on_whole(a: int, p: Placement) -> Placement:
        # a dim of size 1 that the part keeps but the box does not walk adds its one entry
        constant = sum(int(t[0]) for k, t in zip(p.dims, p.tables) if k not in walked)
        tables: dict[int, np.ndarray] = {}
        for b, k in box.source.items():
            table = p.table(k) if k is not None else None
            holds_constant = bool(constant) and b == min(box.source)  # the constant needs a dim to sit on
            if table is None and not (a == 0 and b in unmarked) and not holds_constant:
                continue
            whole = np.full(box.shape[b], NO_UNIT, dtype=np.int64)
            whole[box.indices[b]] = 0 if table is None or k is None else np.broadcast_to(table, (part_shape[k],))
            tables[b] = whole
        if constant:
            b = min(tables)
            tables[b] = np.where(tables[b] == NO_UNIT, NO_UNIT, tables[b] + constant)
        return Placement.of(sorted(tables.items()))

    return TensorRF(part.axes, tuple(on_whole(a, p) for a, p in enumerate(part.places)), part.aligned)


def overwritten(box: Box, old: TensorRF, new: TensorRF | None) -> TensorRF:
    """The whole's state when the box now holds ``new`` (placed on the whole's dims; None: a
    constant) and the rest still holds ``old``: spelled out on the distinct columns of both
    placements and of the box, then compacted."""
    covered = [b for b, i in box.indices.items() if len(i) < box.shape[b]]
    inside = [Placement((b,), (np.isin(np.arange(box.shape[b]), box.indices[b]).astype(np.int64),)) for b in covered]
    axes, places = [], []
    for a, (m_old, p_old) in enumerate(zip(old.axes, old.places)):
        m_new, p_new = (new.axes[a], new.places[a]) if new is not None else (m_old, Placement.nowhere())
        dims = sorted(set(p_old.dims) | set(p_new.dims) | set(covered))
        columns = Columns.of([p_old, p_new, *inside], dims, box.shape)
        grids = [p.grid(dims, columns.sizes).reshape(-1) for p in columns.places]
        within = np.logical_and.reduce([g == 1 for g in grids[2:]]) if inside else np.ones(len(grids[0]), bool)
        reads_old = [[int(u)] if not w and u != NO_UNIT else [] for u, w in zip(grids[0], within)]
        reads_new = [[int(u)] if w and u != NO_UNIT and new is not None else [] for u, w in zip(grids[1], within)]
        union = m_old.gathered(reads_old).union(m_new.gathered(reads_new), len(within))
        m, p = compacted(union, np.arange(len(within)).reshape([columns.sizes[d] for d in dims]), dims)
        axes.append(m)
        places.append(columns.expanded(p))
    return TensorRF(tuple(axes), tuple(places), old.aligned and (new is None or new.aligned))


def into(whole: torch.Tensor, old: RFState | None, part: torch.Tensor, state: RFState | None,
         box: Box | None, notes: list[str]) -> RFState | None:
    """The state of ``whole`` once its part ``part`` (at ``box``, None: somewhere unknown) holds
    ``state``; the note of an over-estimate goes to ``notes``."""
    if isinstance(old, UnknownRF) or isinstance(state, UnknownRF):
        return old if isinstance(old, UnknownRF) else state
    if box is None:
        if state is None:
            return old
        notes.append(SCATTERED_NOTE)
        everything = reduce_dims(state, tuple(part.shape), list(range(-part.dim(), 0)), keepdim=False)
        return merge([whole, whole], [old, everything], tuple(whole.shape))
    new = placed(box, state, tuple(part.shape)) if state is not None else None
    if old is None or all(len(i) == box.shape[b] for b, i in box.indices.items()):
        return new
    return overwritten(box, old, new)


@register_rf_rule("copy")
def copy(ctx: RuleContext) -> RuleResult:
    """``dst.copy_(src)``: ``dst`` now holds ``src``, broadcast to its shape."""
    dst, src = ctx.args[0], ctx.arg(1, "src")
    return merge([src], [ctx.state_of(src)], tuple(dst.shape))


@register_rf_rule("zero")
def zero(ctx: RuleContext) -> RuleResult:
    return None


@register_rf_rule("fill")
def fill(ctx: RuleContext) -> RuleResult:
    """``x.fill_(value)``: a tensor value (one element) reaches every unit."""
    x, value = ctx.args[0], ctx.arg(1, "value")
    if not isinstance(value, torch.Tensor):
        return None
    return merge([value], [ctx.state_of(value)], tuple(x.shape))


@register_rf_rule("setitem")
def setitem(ctx: RuleContext) -> RuleResult:
    """``x[index] = value``: the units ``index`` picks hold ``value``, broadcast to them."""
    x, index, value = ctx.args[0], ctx.args[1], ctx.args[2]
    part = x[index]
    state = merge([value], [ctx.state_of(value)], tuple(part.shape)) if isinstance(value, torch.Tensor) else None
    items = index if isinstance(index, tuple) else (index,)
    basic = not any(isinstance(i, (torch.Tensor, list, bool)) for i in items)  # else a copy, not a view
    return into(x, ctx.state_of(x), part, state, box_of(part, x) if basic else None, ctx.notes)


@register_rf_rule("index_put", "index_add", "index_copy", "index_fill", "index_reduce", "scatter", "scatter_add",
                  "scatter_reduce", "masked_scatter", "put")
def scattered(ctx: RuleContext) -> RuleResult:
    """Writes at indices held in a tensor (``x[idx] = v`` through ``index_put_``, ``scatter_``):
    every unit of ``x`` may now hold any written value, an over-estimate that is noted."""
    x = ctx.input
    sources = [t for t in ctx.tensors[1:] if t.is_floating_point() or t.is_complex()]  # the values, not the indices
    written = [reduce_dims(ctx.state_of(t), tuple(t.shape), list(range(-t.dim(), 0)), keepdim=False)
               for t in sources if ctx.state_of(t) is not None]
    if written:
        ctx.note(SCATTERED_NOTE)
    return merge([x] * (1 + len(written)), [ctx.state_of(x), *written], ctx.out_shape)
