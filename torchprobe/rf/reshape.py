"""How a view (``view``, ``reshape``, ``flatten``, ``unflatten``, ``squeeze``, ...) moves the input
axes: the same flat memory read with new dims.

Dims are grouped into blocks of equal running products, as ``Tensor.view`` does. Inside a block
the unit of an axis is a function of the block's flat index; the new dims address it if that
function is a sum of one table per new dim (a flatten of rows and columns into tokens, a split of
an axis into windows and offsets, pixels folded into channels by space-to-depth always are).
Every element keeps its own span: a dim that holds channels and pixels tells them apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from torchprobe.rf.axis import AxisMap
from torchprobe.rf.placement import Placement, separated
from torchprobe.rf.state import TensorRF, combined

Block = tuple[list[int], list[int]]  # input dims, output dims (non-negative)

TANGLED_NOTE = ("{op} splits a group of dims where no new dim alone addresses an input axis: "
                "the units of that group are counted as their union, an over-estimate")
SPELLED_OUT_LIMIT = 1 << 15  # indices an axis may be spelled out over before a tangled view combines them


def view_blocks(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[Block] | None:
    """Groups of input and output dims with equal products, in order; None if the sizes differ."""
    blocks: list[Block] = []
    i = j = 0
    n_in, n_out = len(in_shape), len(out_shape)
    while i < n_in or j < n_out:
        dims_in, dims_out, p_in, p_out = [], [], 1, 1
        if i < n_in:
            dims_in, p_in, i = [i], in_shape[i], i + 1
        if j < n_out:
            dims_out, p_out, j = [j], out_shape[j], j + 1
        while p_in != p_out:
            if p_in < p_out and i < n_in:
                dims_in, p_in, i = dims_in + [i], p_in * in_shape[i], i + 1
            elif p_out < p_in and j < n_out:
                dims_out, p_out, j = dims_out + [j], p_out * out_shape[j], j + 1
            else:
                return None
        blocks.append((dims_in, dims_out))
    return blocks


def viewed(state: TensorRF, in_shape: Sequence[int], out_shape: Sequence[int], op: str) -> tuple[TensorRF, list[str]]:
    """The state of ``x.view(out_shape)`` and the notes that it needed."""
    blocks = view_blocks(in_shape, out_shape)
    if blocks is None:
        raise ValueError(f"cannot view {tuple(in_shape)} as {tuple(out_shape)}")
    n_in, n_out = len(in_shape), len(out_shape)
    notes: list[str] = []
    # first: an axis that a block cannot hand on to the new dims is combined over that block
    handed: dict[tuple[int, int], tuple[Placement, list[np.ndarray]]] = {}  # (block, axis): tables, for the pass below
    for b, (dims_in, dims_out) in enumerate(blocks):
        neg_in = [d - n_in for d in dims_in]
        sizes = [out_shape[d] for d in _carrying(dims_out, out_shape)]
        for a, place in enumerate(state.places):
            own = _restricted(place, neg_in)
            tables = separated(own.grid(neg_in, in_shape).reshape(sizes)) if own.dims and sizes else None
            if tables is not None:
                handed[b, a] = place, tables
            if own.dims and tables is None:
                axes, places = list(state.axes), list(state.places)
                spelled = sorted(set(place.dims) | {d for d in neg_in if in_shape[d] > 1})
                if sizes and math.prod(in_shape[d] for d in spelled) <= SPELLED_OUT_LIMIT:
                    axes[a], places[a] = _one_unit_per_index(state.axes[a], place, spelled, in_shape)
                else:
                    axes[a], places[a] = combined(state.axes[a], place, own.dims, in_shape)
                    if math.prod(sizes) > 1:
                        notes.append(TANGLED_NOTE.format(op=op))
                state = TensorRF(tuple(axes), tuple(places), state.aligned)
    # then every block hands its tables on
    pairs: list[list[tuple[int, np.ndarray]]] = [[] for _ in state.axes]
    for b, (dims_in, dims_out) in enumerate(blocks):
        neg_in = [d - n_in for d in dims_in]
        carrying = _carrying(dims_out, out_shape)
        for a, place in enumerate(state.places):
            own = _restricted(place, neg_in)
            if own.dims:
                known = handed.get((b, a))
                tables = known[1] if known is not None and known[0] is place else \
                    separated(own.grid(neg_in, in_shape).reshape([out_shape[d] for d in carrying]))
                assert tables is not None  # blocks that do not separate were combined above
                pairs[a] += [(d - n_out, t) for d, t in zip(carrying, tables)]
    return TensorRF(state.axes, tuple(Placement.of(p) for p in pairs), state.aligned), notes


def _one_unit_per_index(
    m: AxisMap, place: Placement, dims: list[int], shape: Sequence[int]
) -> tuple[AxisMap, Placement]:
    """The axis with a unit of its own at every index of ``dims`` (row-major): any view of them
    then separates (block attention's columns, one unit per block, split again by a grid)."""
    units = place.grid(dims, shape).reshape(-1)
    return m.selected(units), Placement.grid_of(dims, shape)


def _carrying(dims_out: list[int], out_shape: Sequence[int]) -> list[int]:
    """The new dims of a block that can carry its units: those of size > 1, or else its first dim
    (one unit stays on a dim of size 1, so that a later ``cat`` along it keeps it apart)."""
    big = [d for d in dims_out if out_shape[d] > 1]
    return big or dims_out[:1]


def _restricted(place: Placement, dims: Sequence[int]) -> Placement:
    return Placement.of([(d, t) for d, t in zip(place.dims, place.tables) if d in dims])
