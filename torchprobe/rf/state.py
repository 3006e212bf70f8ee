"""What the RF probe knows about one tensor: a span map per input spatial axis, and where in the
tensor each axis's units are (:mod:`torchprobe.rf.placement`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache

import numpy as np

from torchprobe.rf.axis import AxisMap
from torchprobe.rf.placement import NO_UNIT, Columns, Placement
from torchprobe.rf.support import Support, fused

Rows = Sequence[Sequence[int]]


@dataclass(frozen=True)
class TensorRF:
    """Receptive field of every unit of a tensor, per input spatial axis.

    ``places[a]`` says which tensor dims (negative, so that broadcasting lines up) address the
    units of ``axes[a]``; a reduced axis (pooled globally, contracted by a Linear) is nowhere and
    has one unit. ``aligned`` turns False for good once two branches whose unit grids disagree
    were merged.
    """

    axes: tuple[AxisMap, ...]
    places: tuple[Placement, ...]
    aligned: bool = True

    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def _hash(self) -> int:
        """Worked out once: states key the rule results of a pass (:mod:`torchprobe.rf.memo`)."""
        return hash((self.axes, self.places, self.aligned))

    @classmethod
    def of_input(cls, shape: Sequence[int], spatial: Sequence[int]) -> TensorRF:
        """The input (batch first): axis ``a`` is dim ``spatial[a]``, unit ``i`` pixel ``i``."""
        n = len(shape)
        return cls(
            tuple(AxisMap.identity(shape[d]) for d in spatial),
            tuple(Placement.on(d - n, shape[d]) for d in spatial),
        )

    def map_axes(self, fn: Callable[[int, AxisMap, Placement], tuple[AxisMap, Placement]]) -> TensorRF:
        """Apply ``fn(axis, map, placement) -> (map, placement)`` to every axis."""
        pairs = [fn(a, m, p) for a, (m, p) in enumerate(zip(self.axes, self.places))]
        return replace(self, axes=tuple(p[0] for p in pairs), places=tuple(p[1] for p in pairs))

    @cached_property
    def factors(self) -> tuple[tuple[Support, ...], ...]:
        """The support as terms: ``factors[t][a]`` (see :mod:`torchprobe.rf.support`)."""
        return tuple(zip(*(m.terms for m in self.axes)))

    def fused(self) -> TensorRF:
        """The same state with its support in fewest terms, and each axis that several dims (or
        a table other than one unit per index) address in its fewest units."""
        one_term = all(len(m.terms) == 1 and m.terms[0].reaches().any() for m in self.axes)
        if one_term and all(not p.dims or p.dim is not None for p in self.places):
            return self  # one term per axis, each axis on its own dim (or nowhere): fewest already
        state = self
        if not one_term:
            terms = fused(self.factors)
            state = replace(self, axes=tuple(m.with_terms(t[a] for t in terms) for a, m in enumerate(self.axes)))
        return state.map_axes(lambda _a, m, p: (m, p) if not p.dims or p.dim is not None else _fewest_units(m, p))

    def unit_dims(self) -> tuple[int, ...]:
        """The (negative) dims that address some axis: those that tell units apart."""
        return tuple(sorted({d for p in self.places for d in p.dims}))

    def moved(self, remap: Callable[[int], int]) -> TensorRF:
        """Every dim renamed by ``remap`` (negative to negative): a permutation, or the shift of an
        added or removed dim that carries no axis."""
        return replace(self, places=tuple(p.moved(remap) for p in self.places))

    def reduced_over(self, dims: Sequence[int], shape: Sequence[int]) -> TensorRF:
        """Units combined along ``dims`` (they stay, with one index): each unit now reads every
        unit that differs from it only there."""
        return self.map_axes(lambda _a, m, p: combined(m, p, dims, shape))

    def along(
        self,
        dim: int,
        shapes: tuple[Sequence[int], Sequence[int]],
        rows: Callable[[], Rows],
        geometry: Callable[[AxisMap], AxisMap] | None = None,
    ) -> TensorRF:
        """Index ``j`` of ``dim`` now reads indices ``rows()[j]`` of it (``shapes``: the tensor's
        shape before and after). An axis that ``dim`` alone carries takes ``geometry`` when given
        (it keeps the RF convention past the edges, and is periodic where rows are not)."""

        def step(_a: int, m: AxisMap, p: Placement) -> tuple[AxisMap, Placement]:
            if dim not in p.dims:
                return m, p
            if p.dim == dim:  # the conv-net case: the axis is this dim, unit i at index i
                return (geometry(m) if geometry else m.gathered(rows())), Placement.on(dim, shapes[1][dim])
            marks = [(d, t) for d, t in zip(p.dims, p.tables) if d != dim]
            if all(np.isin(t, (0, NO_UNIT)).all() for _, t in marks):  # the other dims only mark "no unit"
                m, _ = sole(m, Placement.of([(dim, p.tables[p.dims.index(dim)])]))
                m = geometry(m) if geometry else m.gathered(rows())
                return m, Placement.of([(dim, np.arange(shapes[1][dim])), *marks])
            return along_shared(m, p, dim, shapes, rows())

        return self.map_axes(step)


def sole(m: AxisMap, p: Placement) -> tuple[AxisMap, Placement]:
    """An axis on one dim, re-indexed so that index ``i`` is unit ``i`` (a view that repeated or
    reordered its units, e.g. nearest upsampling by ``expand``)."""
    if p.dim is not None:
        return m, p
    table = p.tables[0]
    return m.selected(table), Placement.on(p.dims[0], len(table))


def reindexed(
    m: AxisMap, units: np.ndarray, dims: Sequence[int], shape: Sequence[int] | Mapping[int, int]
) -> tuple[AxisMap, Placement]:
    """The axis re-numbered over ``dims``: the unit at each index is old unit ``units[index]``
    (NO_UNIT: none), in the fewest units that tell the indices apart (see :func:`compacted`)."""
    return compacted(m, units.reshape([shape[d] for d in dims]), dims)


@lru_cache(maxsize=256)
def _fewest_units(m: AxisMap, p: Placement) -> tuple[AxisMap, Placement]:
    """:func:`compacted_on` an axis as it is; cached, since the pointwise ops between two layout
    ops hand the same axis on unchanged."""
    return compacted_on(m, p, {d: len(t) for d, t in zip(p.dims, p.tables)})


def compacted_on(m: AxisMap, p: Placement, shape: Sequence[int] | Mapping[int, int]) -> tuple[AxisMap, Placement]:
    """:func:`compacted` of the axis on placement ``p``, worked out on the distinct columns of its
    tables (see :class:`~torchprobe.rf.placement.Columns`); ``(m, p)`` when no units merge."""
    columns = Columns.of([p], p.dims, shape)
    reduced = columns.places[0]
    m_new, p_new = compacted(m, reduced.grid(p.dims, columns.sizes), p.dims, unchanged=reduced)
    return (m, p) if p_new is reduced else (m_new, columns.expanded(p_new))


def compacted(
    m: AxisMap, units: np.ndarray, dims: Sequence[int], unchanged: Placement | None = None
) -> tuple[AxisMap, Placement]:
    """The placement with the fewest units that gives every index of ``dims`` the spans and
    support of old unit ``units[index]``: along each dim, indices that behave alike for every
    index of the other dims become one (a window index in the batch dim keeps only the window's
    row for the row axis). ``unchanged`` is returned with ``m`` when no indices are alike."""
    signature = _signature(m)
    missing = np.full((1, signature.shape[1]), -2, dtype=np.int64)
    grid = np.concatenate([signature, missing])[np.where(units == NO_UNIT, len(signature), units)]
    classes, firsts, counts = [], [], []
    for k in range(len(dims)):
        rows = np.moveaxis(grid, k, 0).reshape(units.shape[k], -1)
        first, inverse = _row_classes(rows)
        order = np.argsort(first)  # classes numbered by first appearance, so that order is kept
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        classes.append(rank[inverse.reshape(-1)])
        firsts.append(first[order])
        counts.append(len(order))
    if unchanged is not None and counts == list(units.shape) and len(np.unique(units[units != NO_UNIT])) == m.units:
        return m, unchanged  # no two indices alike and every unit used: already the fewest units
    strides = [int(np.prod(counts[k + 1 :])) for k in range(len(dims))]
    old_units = units[np.ix_(*firsts)].reshape(-1)  # each combination of classes, row-major: its old unit
    lost = [np.moveaxis(units == NO_UNIT, k, 0).reshape(units.shape[k], -1).all(axis=1) for k in range(len(dims))]
    pairs = [(d, np.where(gone, NO_UNIT, c * stride)) for d, c, stride, gone in zip(dims, classes, strides, lost)]
    return m.selected(old_units), Placement.of(pairs)


def _row_classes(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(rows, axis=0, return_index=True, return_inverse=True)`` without the sorted
    values, on a byte view of each row (much faster than the structured view numpy makes)."""
    rows = np.ascontiguousarray(rows)
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).reshape(-1)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, inverse


def _signature(m: AxisMap) -> np.ndarray:
    """Per unit: its span by the RF convention and its interval in every support term."""
    u = np.arange(m.units)
    q, r = np.divmod(u, m.period)
    columns = []
    for bound in (m.lo, m.hi):
        base = np.array([-3 if b is None else b for b in bound], dtype=np.int64)[r]
        columns.append(np.where(base == -3, -3, base + q * m.shift))
    for term in m.terms:
        columns += [np.broadcast_to(term.lo, (m.units,)), np.broadcast_to(term.hi, (m.units,))]
    return np.stack(columns, axis=1)


def combined(m: AxisMap, p: Placement, dims: Sequence[int], shape: Sequence[int]) -> tuple[AxisMap, Placement]:
    """One axis, its units combined along ``dims`` (see :meth:`TensorRF.reduced_over`). The dims
    left keep their tables, renumbered densely: unit ``(r_1, ..., r_k)`` of their distinct values
    reads every old unit those values and any index of ``dims`` give."""
    gone = [d for d in p.dims if d in dims]
    if not gone:
        return m, p
    rest = [d for d in p.dims if d not in dims]
    if not rest:
        return m.reduced(), Placement.nowhere()
    table = dict(zip(p.dims, p.tables))
    values = [np.unique(table[d][table[d] != NO_UNIT]) for d in rest]
    counts = [len(v) for v in values]
    strides = [math.prod(counts[k + 1 :]) for k in range(len(rest))]
    offsets = Placement.of([(d, table[d]) for d in gone]).grid(gone, shape).reshape(-1)
    offsets = offsets[offsets != NO_UNIT]
    rows = []
    for combo in np.ndindex(*counts):
        base = sum(int(v[c]) for v, c in zip(values, combo))
        rows.append(np.unique(base + offsets).tolist())
    ranks = [np.where(table[d] == NO_UNIT, NO_UNIT, np.searchsorted(v, table[d])) for d, v in zip(rest, values)]
    return compacted_on(m.gathered(rows), Placement.of([(d, r * s) for d, r, s in zip(rest, ranks, strides)]), shape)


def picked(m: AxisMap, p: Placement, dim: int, index: int, shape: Sequence[int]) -> tuple[AxisMap, Placement]:
    """One axis once index ``index`` of ``dim`` is taken (the dim goes away; dims keep their names)."""
    if dim not in p.dims:
        return m, p
    if p.dim == dim:
        return m.picked(index), Placement.nowhere()
    rest = [d for d in p.dims if d != dim]
    grid = np.take(p.grid(list(p.dims), shape), index, axis=list(p.dims).index(dim))
    if not rest:
        unit = int(grid)
        return (m.picked(unit) if unit != NO_UNIT else m.gathered([[]])), Placement.nowhere()
    return reindexed(m, grid, rest, shape)


def along_shared(
    m: AxisMap, p: Placement, dim: int, shapes: tuple[Sequence[int], Sequence[int]], rows: Rows
) -> tuple[AxisMap, Placement]:
    """:meth:`TensorRF.along` for an axis that other dims carry too: spelled out per unit."""
    before, after = shapes
    dims = list(p.dims)
    at = dims.index(dim)
    grid = np.moveaxis(p.grid(dims, before), at, 0)  # (index along dim, the other carrying dims...)
    sizes = [after[d] for d in dims]
    out_rows: list[list[int]] = []
    for index in np.ndindex(*sizes):
        rest = index[:at] + index[at + 1 :]
        taps = list(rows[index[at]])
        read = grid[(taps,) + rest] if taps else np.empty(0, dtype=np.int64)
        out_rows.append(np.unique(read[read != NO_UNIT]).tolist())
    return reindexed(m.gathered(out_rows), np.arange(len(out_rows)).reshape(sizes), dims, after)


@dataclass(frozen=True)
class UnknownRF:
    """No rule covers an op on the path from the input, or its rule failed (``error``):
    everything downstream is unknown."""

    op: str
    where: str
    error: str = ""

    @property
    def reason(self) -> str:
        where = self.where or "<root>"
        if self.error:
            return f"rule for op {self.op!r} failed (called in {where}): {self.error}"
        return f"no receptive-field rule for op {self.op!r} (called in {where})"


RFState = TensorRF | UnknownRF
