"""What each real unit of a tensor depends on: the support that gradients measure.

The span maps of :mod:`torchprobe.rf.axis` follow the RF convention: padding positions extend the
grid and inherit spans by extrapolation, which is what rf / jump / start describe. A support does
not extrapolate: a tap outside the tensor (padding) reads nothing, so each unit's interval is
exactly its first and last input pixel that can change it.

Separable ops (convs, pools, resampling, padding) keep the support of a tensor a *product* of
per-axis factors; a merge makes it a union of such products (*terms*): a unit at a padded row
of one branch reads nothing there, whatever that branch sees along the other axes. A tensor's
support is therefore ``factors[t][a]``, term ``t``'s :class:`Support` along axis ``a``; terms
that reach the same units are fused, so a plain network keeps one term. One entry per real unit,
as arrays, so that a 20000-pixel axis costs a few vectorised gathers per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, reduce
from itertools import chain

import numpy as np

# a unit that depends on no pixel: the identities of min and max, so that unions need no branch
_NO_LO = np.iinfo(np.int64).max
_NO_HI = np.iinfo(np.int64).min


@dataclass(frozen=True, eq=False)
class Support:
    """``lo[u] .. hi[u]``: the input pixels unit ``u`` depends on (``lo > hi``: none)."""

    lo: np.ndarray
    hi: np.ndarray

    def __post_init__(self) -> None:
        """Any ``lo > hi`` becomes the sentinels, so that unions never mistake it for pixels."""
        lo, hi = np.asarray(self.lo, dtype=np.int64), np.asarray(self.hi, dtype=np.int64)
        empty = lo > hi
        if empty.any():
            lo, hi = np.where(empty, _NO_LO, lo), np.where(empty, _NO_HI, hi)
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    @classmethod
    def _exact(cls, lo: np.ndarray, hi: np.ndarray) -> Support:
        """From int64 arrays already in normal form (every empty unit holds the sentinels): what
        unions, gathers and slices of normal supports give, without re-checking every unit."""
        support = object.__new__(cls)
        object.__setattr__(support, "lo", lo)
        object.__setattr__(support, "hi", hi)
        return support

    @classmethod
    def identity(cls, units: int) -> Support:
        pixels = np.arange(units, dtype=np.int64)
        return cls(pixels, pixels)

    @classmethod
    def nothing(cls, units: int) -> Support:
        return cls(np.full(units, _NO_LO), np.full(units, _NO_HI))

    @classmethod
    def concatenate(cls, parts: Sequence[Support]) -> Support:
        return cls._exact(np.concatenate([p.lo for p in parts]), np.concatenate([p.hi for p in parts]))

    def __len__(self) -> int:
        return len(self.lo)

    def span(self, unit: int) -> tuple[int, int] | None:
        """Pixels of ``unit``; None if it sees none or lies outside the tensor (padding)."""
        if not 0 <= unit < len(self):
            return None
        lo, hi = int(self.lo[unit]), int(self.hi[unit])
        return (lo, hi) if lo <= hi else None

    def reaches(self) -> np.ndarray:
        """Per unit: does it depend on any pixel? (Read-only, worked out once: terms are shared
        by many states and asked again at every merge.)"""
        return self._reach

    @cached_property
    def _reach(self) -> np.ndarray:
        reach = self.lo <= self.hi
        reach.flags.writeable = False
        return reach

    @cached_property
    def reach_key(self) -> bytes | None:
        """Which units it reaches, as bytes (terms that reach the same units fuse); None: none."""
        reach = self._reach
        return np.packbits(reach).tobytes() + len(reach).to_bytes(8, "little") if reach.any() else None

    # -- transformations -------------------------------------------------------------------------

    def read(self, taps: np.ndarray, mask: np.ndarray | None = None) -> Support:
        """Units that read input units ``taps[o, :]`` (where ``mask``): taps outside the tensor are
        padding and add nothing."""
        if len(self) == 0:
            return Support.nothing(len(taps))
        valid = (taps >= 0) & (taps < len(self))
        if mask is not None:
            valid &= mask
        safe = np.where(valid, taps, 0)
        # reduced along each row over a transposed copy: numpy reduces many narrow rows (a
        # window of 3 taps per unit) several times slower than a few long columns
        lo = np.ascontiguousarray(np.where(valid, self.lo[safe], _NO_LO).T).min(axis=0, initial=_NO_LO)
        hi = np.ascontiguousarray(np.where(valid, self.hi[safe], _NO_HI).T).max(axis=0, initial=_NO_HI)
        return Support._exact(lo, hi)

    def reduced(self) -> Support:
        """One unit that reads every unit (a reduction over the axis)."""
        if len(self) == 0:
            return Support.nothing(1)
        return Support._exact(self.lo.min(keepdims=True), self.hi.max(keepdims=True))

    def picked(self, unit: int) -> Support:
        return Support._exact(self.lo[unit : unit + 1], self.hi[unit : unit + 1])

    def union(self, other: Support) -> Support:
        """Unit-wise union; a one-unit side is broadcast."""
        return Support._exact(np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi))

    @staticmethod
    def union_all(parts: Sequence[Support]) -> Support:
        """:meth:`union` of several, in one reduction when they have one length (DenseNet's
        ``cat`` of 32 branches fuses 32 terms)."""
        if len(parts) > 2 and len({len(p) for p in parts}) == 1:
            lo, hi = np.stack([p.lo for p in parts]), np.stack([p.hi for p in parts])
            return Support._exact(lo.min(axis=0), hi.max(axis=0))
        return reduce(Support.union, parts)

    def broadcast(self, units: int) -> Support:
        """A one-unit support repeated over ``units`` units."""
        if len(self) == units:
            return self
        return Support._exact(np.broadcast_to(self.lo, (units,)), np.broadcast_to(self.hi, (units,)))

    # -- value semantics (states are compared and used as dict keys) -------------------------------

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Support) and np.array_equal(self.lo, other.lo) and np.array_equal(self.hi, other.hi)

    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash((self.lo.tobytes(), self.hi.tobytes()))

    def __repr__(self) -> str:
        spans = [self.span(u) for u in range(min(len(self), 8))]
        return f"Support({len(self)} units: {spans}{', ...' if len(self) > 8 else ''})"


def taps_of_rows(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """``(taps, mask)`` for :meth:`Support.read` when unit ``o`` reads units ``rows[o]``."""
    lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    mask = np.arange(lengths.max(initial=0)) < lengths[:, None]
    taps = np.zeros(mask.shape, dtype=np.int64)
    taps[mask] = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    return taps, mask


# -- a tensor's support: factors[t][a] ---------------------------------------------------------------

Factors = Sequence[Sequence[Support]]


def fused(factors: Factors) -> list[tuple[Support, ...]]:
    """The same support in fewest terms: terms that reach the same units become one (their
    per-axis unions are exact there), terms inside another term are dropped (a token's own patch
    once attention made it see the image), and so are terms that reach no unit at all."""
    groups: dict[tuple[bytes | None, ...], list[Sequence[Support]]] = {}
    for term in factors:
        key = tuple(f.reach_key for f in term)
        if None not in key:
            groups.setdefault(key, []).append(term)
    terms = [tuple(Support.union_all(column) for column in zip(*group)) for group in groups.values()]
    if len(terms) < 2:
        return terms
    return [a for i, a in enumerate(terms) if not any(j != i and _inside(a, b) for j, b in enumerate(terms))]


def _inside(a: Sequence[Support], b: Sequence[Support]) -> bool:
    """Every unit ``a`` reaches, ``b`` reaches too, with an interval that holds ``a``'s (per axis)."""
    return all(bool(np.all(~fa.reaches() | ((fb.lo <= fa.lo) & (fa.hi <= fb.hi)))) for fa, fb in zip(a, b))


def joint_span(factors: Factors, unit: Sequence[int]) -> tuple[tuple[int, int] | None, ...]:
    """Per axis, the pixels ``unit`` depends on: the union over the terms that reach it."""
    spans: list[tuple[int, int] | None] = [None] * len(unit)
    for term in factors:
        own = [span for span in (f.span(u) for f, u in zip(term, unit)) if span is not None]
        if len(own) < len(unit):
            continue  # the term does not reach the unit
        spans = [o if s is None else (min(s[0], o[0]), max(s[1], o[1])) for s, o in zip(spans, own)]
    return tuple(spans)


def seen(factors: Factors, axis: int) -> tuple[int, int] | None:
    """The pixels of ``axis`` that some unit depends on (their hull)."""
    hulls = [h for h in (term[axis].reduced().span(0) for term in fused(factors)) if h is not None]
    return (min(h[0] for h in hulls), max(h[1] for h in hulls)) if hulls else None


def covers(factors: Factors, axis: int, size: int) -> bool:
    """True when every unit depends on pixels ``0`` and ``size-1`` of ``axis`` (so its span is the
    whole axis). Units whose coordinates answer every term alike are interchangeable, so the
    check runs over those classes per axis, never over the whole grid of units."""
    if len(factors) > 1:  # the same support in fewest terms: often one (a merge of branches alike)
        factors = fused(factors)
    if not factors:
        return False
    if len(factors) == 1:  # one product: every unit of every axis reached, and this axis whole
        term = factors[0]
        spans_all = (term[axis].lo <= 0).all() and (term[axis].hi >= size - 1).all()
        return all(f.reaches().all() for f in term) and bool(spans_all)
    n_axes = len(factors[0])
    classes = [_classes(factors, b, axis, size) for b in range(n_axes)]

    def column(b: int, index: int) -> np.ndarray:
        shape = [1] * n_axes
        shape[b] = len(classes[b])
        return classes[b][:, index].reshape(shape)

    def some_term_reaches(edge: int) -> np.ndarray:
        """Over the grid of classes: does some term reach the unit and pixel ``edge`` (0: first, 1: last)?"""
        return reduce(np.logical_or, [
            reduce(np.logical_and, [column(b, 2 * t + edge if b == axis else t) for b in range(n_axes)])
            for t in range(len(factors))
        ])

    return bool((some_term_reaches(0) & some_term_reaches(1)).all())


def _classes(factors: Factors, b: int, axis: int, size: int) -> np.ndarray:
    """The distinct rows of what decides coverage along axis ``b``, one bit per term (on ``axis``
    itself two: the term reaches the unit and starts at pixel 0 / ends at the last pixel)."""
    columns: list[np.ndarray] = []
    for term in factors:
        f = term[b]
        reach = f.reaches()
        columns += [reach & (f.lo <= 0), reach & (f.hi >= size - 1)] if b == axis else [reach]
    rows = np.stack(columns, axis=1)
    if rows.shape[1] > 62:
        return np.unique(rows, axis=0)
    bits = np.arange(rows.shape[1], dtype=np.int64)
    codes = np.unique((rows.astype(np.int64) << bits).sum(axis=1))  # one integer per row: a fast unique
    return ((codes[:, None] >> bits) & 1).astype(bool)
