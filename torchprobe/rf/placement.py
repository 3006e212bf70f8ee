"""Which tensor dims address the units of one input axis.

A conv net keeps each input axis on one tensor dim: unit ``i`` of that dim is unit ``i`` of the
axis. Transformers move axes around: a ViT's token dim holds both image axes (token ``t`` is row
``t // 14``, column ``t % 14``), Swin puts the window index into the batch dim and the offset in
the window into a dim of its own, space-to-depth folds pixels into channels. A
:class:`Placement` describes all of these alike: the axis's unit at a tensor index is the sum over
the carrying dims of ``tables[k][index along dims[k]]`` (a negative entry: no unit, e.g. the
class token prepended to the patch tokens). Views and permutations only rewrite the tables; the
axis's span map stays as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

NO_UNIT = -1


@dataclass(frozen=True, eq=False)
class Placement:
    """``dims`` (negative, ascending) carry the axis; ``tables[k]`` is one entry per index of ``dims[k]``."""

    dims: tuple[int, ...]
    tables: tuple[np.ndarray, ...]

    @classmethod
    def on(cls, dim: int, units: int) -> Placement:
        """The axis on one dim, unit ``i`` at index ``i`` (the conv-net case): one shared object per
        ``(dim, units)``, so that the placements of a conv net's operands compare by identity."""
        return _on(dim, units)

    @classmethod
    def nowhere(cls) -> Placement:
        """A reduced axis: every index of the tensor is its single unit."""
        return cls((), ())

    @classmethod
    def grid_of(cls, dims: Sequence[int], shape: Sequence[int]) -> Placement:
        """Units numbered row-major over ``dims`` (sizes from ``shape``): the first dim is the most
        significant. Dims of size 1 carry nothing."""
        kept = sorted(d for d in dims if shape[d] > 1)
        sizes = [shape[d] for d in kept]
        strides = [math.prod(sizes[k + 1 :]) for k in range(len(kept))]
        tables = tuple(np.arange(n, dtype=np.int64) * s for n, s in zip(sizes, strides))
        return cls(tuple(kept), tables)

    @classmethod
    def of(cls, pairs: Sequence[tuple[int, np.ndarray]]) -> Placement:
        """From ``(dim, table)`` pairs: tables of the same dim add; a dim whose indices all are
        unit 0 carries nothing (a broadcast), unless it has one index (a crop to one unit)."""
        by_dim: dict[int, np.ndarray] = {}
        for dim, table in pairs:
            table = np.asarray(table, dtype=np.int64)
            by_dim[dim] = table if dim not in by_dim else _add(by_dim[dim], table)
        kept = sorted(d for d, t in by_dim.items() if len(t) == 1 or t.any())
        return cls(tuple(kept), tuple(by_dim[d] for d in kept))

    # -- queries ---------------------------------------------------------------------------------

    def table(self, dim: int) -> np.ndarray | None:
        return self.tables[self.dims.index(dim)] if dim in self.dims else None

    @cached_property
    def dim(self) -> int | None:
        """The dim when the axis sits on exactly one, index ``i`` being unit ``i``; else None
        (cached: every rule asks, and the tables never change)."""
        if len(self.dims) != 1:
            return None
        table = self.tables[0]
        return self.dims[0] if np.array_equal(table, np.arange(len(table))) else None

    def unit(self, index: dict[int, int]) -> int:
        """The unit at a tensor index (``index[dim]`` per carrying dim), or NO_UNIT."""
        total = 0
        for dim, table in zip(self.dims, self.tables):
            value = int(table[index[dim]]) if len(table) > 1 else int(table[0])
            if value < 0:
                return NO_UNIT
            total += value
        return total

    def grid(self, dims: Sequence[int], shape: Sequence[int] | Mapping[int, int]) -> np.ndarray:
        """The unit at every index of ``dims`` (a superset of the carrying dims, in that order;
        sizes from ``shape``), NO_UNIT where there is none. Tables of length 1 broadcast."""
        sizes = [shape[d] for d in dims]
        total = np.zeros(sizes, dtype=np.int64)
        missing = np.zeros(sizes, dtype=bool)
        for dim, table in zip(self.dims, self.tables):
            view = [1] * len(dims)
            view[list(dims).index(dim)] = len(table)
            column = table.reshape(view)
            total = total + column
            missing |= column < 0
        return np.where(missing, NO_UNIT, total)

    # -- transformations -------------------------------------------------------------------------

    def moved(self, remap: Callable[[int], int]) -> Placement:
        """The same tables on new dims (a permutation, or dims shifted by an added or removed one)."""
        return Placement.of([(remap(d), t) for d, t in zip(self.dims, self.tables)])

    def broadcast(self, shape: Sequence[int]) -> Placement:
        """Tables of length 1 (a size-1 dim broadcast) repeated to the dim's size in ``shape``."""
        if all(len(t) == shape[d] for d, t in zip(self.dims, self.tables)):
            return self
        return Placement.of([(d, np.broadcast_to(t, (shape[d],)) if len(t) == 1 else t)
                             for d, t in zip(self.dims, self.tables)])

    def sliced(self, dim: int, index: slice | np.ndarray) -> Placement:
        """The indices ``index`` of ``dim`` (a crop, a stride, a gather of indices)."""
        return Placement.of([(d, t[index] if d == dim else t) for d, t in zip(self.dims, self.tables)])

    # -- value semantics --------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return (isinstance(other, Placement) and self.dims == other.dims
                and all(np.array_equal(a, b) for a, b in zip(self.tables, other.tables)))

    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash((self.dims, tuple(t.tobytes() for t in self.tables)))

    def __repr__(self) -> str:
        return f"Placement({dict(zip(self.dims, (t[:6].tolist() for t in self.tables)))})"


@lru_cache(maxsize=1024)
def _on(dim: int, units: int) -> Placement:
    table = np.arange(units, dtype=np.int64)
    table.flags.writeable = False  # shared: nobody may write into it
    return Placement((dim,), (table,))


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two contributions to the same dim; NO_UNIT wins."""
    return np.where((a < 0) | (b < 0), NO_UNIT, a + b)


def separated(values: np.ndarray) -> list[np.ndarray] | None:
    """Split a table over several dims (``values`` has one axis per dim) into one table per dim
    that add up to it, or None when it is not such a sum. Entries with no unit must be a union
    of whole slices (an index of one dim that has no unit, whatever the others)."""
    n = values.ndim
    missing = values < 0
    if n == 1:  # one dim: the table is the values
        return None if missing.all() else [np.where(missing, NO_UNIT, values)]
    lost = [np.asarray(missing.all(axis=tuple(b for b in range(n) if b != a))) for a in range(n)]
    lost_anywhere = np.zeros(values.shape, dtype=bool)
    for a, mask in enumerate(lost):
        view = [1] * n
        view[a] = len(mask)
        lost_anywhere |= mask.reshape(view)
    if not np.array_equal(missing, lost_anywhere) or lost_anywhere.all():
        return None
    origin = tuple(int(np.argmin(mask)) for mask in lost)  # an index that has a unit on every dim
    base = int(values[origin])
    tables = []
    for a in range(n):
        index: list[int | slice] = list(origin)
        index[a] = slice(None)
        line = values[tuple(index)] - (base if a else 0)
        tables.append(np.where(lost[a], NO_UNIT, line))
    rebuilt = np.zeros(values.shape, dtype=np.int64)
    for a, table in enumerate(tables):
        view = [1] * n
        view[a] = len(table)
        rebuilt = rebuilt + table.reshape(view)
    if not np.array_equal(np.where(lost_anywhere, 0, rebuilt), np.where(lost_anywhere, 0, values)):
        return None
    return tables


def distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(rows, axis=0, return_index=True, return_inverse=True)[1:]`` (rows of entries
    >= NO_UNIT, classes in the same sorted order): each row packed into one integer when they fit,
    which sorts a token dim of 25,088 indices in a fraction of the time numpy's row sort takes."""
    base = int(rows.max(initial=0)) + 2  # entry + 1 lies in [0, base)
    if rows.shape[1] * base.bit_length() > 62:
        _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
        return first, inverse.reshape(-1)
    keys = np.zeros(len(rows), dtype=np.int64)
    for column in rows.T:  # the first column most significant: numpy's row order
        keys = keys * base + (column + 1)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, inverse


@dataclass(frozen=True, eq=False)
class Columns:
    """Placements read on the distinct columns of their tables: along each dim, the indices where
    every placement has the same entry are one index (a token dim of 25,089 indices and 57 rows of
    the image is 57 indices). What is true of the reduced indices is true of the indices they
    stand for, so costly work (a merge spelled out, a compaction) runs on the reduced ones."""

    sizes: dict[int, int]  # dim -> distinct columns
    places: tuple[Placement, ...]  # on the reduced indices
    inverse: dict[int, np.ndarray]  # dim -> the reduced index of each index

    @classmethod
    def of(
        cls, places: Sequence[Placement], dims: Sequence[int], shape: Sequence[int] | Mapping[int, int]
    ) -> Columns:
        sizes, inverse = {}, {}
        reduced: list[list[tuple[int, np.ndarray]]] = [[] for _ in places]
        for d in sorted(dims):
            columns = [p.table(d) for p in places]
            stacked = np.stack([np.broadcast_to(c if c is not None else 0, (shape[d],)) for c in columns], axis=1)
            first, back = distinct_rows(stacked)
            sizes[d], inverse[d] = len(first), back.reshape(-1)
            for k, c in enumerate(columns):
                if c is not None:
                    reduced[k].append((d, np.broadcast_to(c, (shape[d],))[first]))
        return cls(sizes, tuple(Placement(tuple(d for d, _ in r), tuple(t for _, t in r)) for r in reduced), inverse)

    def expanded(self, place: Placement) -> Placement:
        """A placement on the reduced indices, on the indices they stand for."""
        pairs = zip(place.dims, place.tables)
        return Placement.of([(d, t[self.inverse[d]] if d in self.inverse else t) for d, t in pairs])
