"""Exact receptive-field geometry of one spatial axis.

A tensor's units along an axis map to intervals of input pixels. For every op we support the map is
*periodic*: unit ``o = q * period + r`` spans ``[lo[r] + q * shift, hi[r] + q * shift]``. Plain
convolutions and pools keep ``period == 1`` (the textbook rf / jump / start numbers); transposed
convolutions, upsampling and misaligned merges need a longer period, and adaptive pooling may need
an explicit table (``period`` = the number of units). Indices outside ``[0, n)`` extend the grid,
which is the usual convention that padding positions belong to the receptive field.

Next to that convention every map carries its factors of the tensor's support
(:mod:`torchprobe.rf.support`): what each real unit actually depends on, padding reading nothing.
They answer the per-unit questions (a unit's pixels, "global") exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import cached_property, reduce

import numpy as np

from torchprobe.rf.support import Support, taps_of_rows

Span = tuple[int | None, int | None]
_NONE = np.iinfo(np.int64).min  # a missing bound (a unit that sees no pixel), in arrays


@dataclass(frozen=True)
class AxisMap:
    """Spans of the units of one tensor axis, in coordinates of one input axis of ``size`` pixels.

    ``lo[r] is None`` marks units that depend on no input pixel (a transposed conv with a kernel
    smaller than its stride leaves such holes). ``terms[t]`` is factor ``t`` of the tensor's
    support along this axis, one entry per real unit (``units`` of them).
    """

    period: int
    shift: int
    lo: tuple[int | None, ...]
    hi: tuple[int | None, ...]
    size: int
    units: int
    terms: tuple[Support, ...]

    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def _hash(self) -> int:
        """Worked out once: maps key caches and the rule results of a pass."""
        return hash((self.period, self.shift, self.lo, self.hi, self.size, self.units, self.terms))

    @classmethod
    def identity(cls, size: int) -> AxisMap:
        """The network input: unit ``i`` is pixel ``i``."""
        return cls(1, 1, (0,), (0,), size, size, (Support.identity(size),))

    @classmethod
    def from_table(
        cls, spans: Sequence[Span], shift: int, size: int, units: int, terms: tuple[Support, ...]
    ) -> AxisMap:
        """One exact period of spans (unit ``r + period`` is unit ``r`` moved by ``shift``), stored
        with the shortest period that reproduces it."""
        lo = tuple(s[0] for s in spans)
        hi = tuple(s[1] for s in spans)
        return cls(len(spans), shift, lo, hi, size, units, terms)._shortest()

    @classmethod
    def from_units(cls, spans: Sequence[Span], size: int, beyond: Fraction, terms: tuple[Support, ...]) -> AxisMap:
        """Spans of *every* unit of a tensor axis. Finds the shortest periodic description of them;
        if there is none, the units repeat ``beyond`` pixels further on outside the tensor (the
        convention for padding positions of a later layer)."""
        lo = tuple(s[0] for s in spans)
        hi = tuple(s[1] for s in spans)
        for p in range(1, len(spans)):
            step = _step(lo, hi, p)
            if step is not None:
                return cls(p, step, lo[:p], hi[:p], size, len(spans), terms)
        return cls(len(spans), math.ceil(beyond), lo, hi, size, len(spans), terms)

    @classmethod
    def concatenated(cls, parts: Sequence[tuple[AxisMap | None, int]], size: int) -> AxisMap:
        """Units of ``(map, units)`` parts one after the other (``torch.cat`` along the axis); a
        part without a map depends on no pixel. Each part's terms stay terms, read nothing
        outside the part's own units."""
        spans: list[Span] = []
        terms = []
        before = 0
        total = sum(units for _, units in parts)
        for m, units in parts:
            spans += [m.span(u) or (None, None) for u in range(units)] if m else [(None, None)] * units
            for term in m.terms if m else ():
                after = Support.nothing(total - before - units)
                terms.append(Support.concatenate([Support.nothing(before), term, after]))
            before += units
        jump = max((m.jump for m, _ in parts if m), default=Fraction(1))
        return cls.from_units(spans, size, jump * len(spans), tuple(terms))

    # -- queries ---------------------------------------------------------------------------------

    def span(self, unit: int) -> tuple[int, int] | None:
        """Input interval ``(lo, hi)`` of ``unit`` (any integer) by the RF convention, or None if
        it sees no pixel."""
        q, r = divmod(unit, self.period)
        lo, hi = self.lo[r], self.hi[r]
        if lo is None or hi is None:
            return None
        return lo + q * self.shift, hi + q * self.shift

    @property
    def jump(self) -> Fraction:
        """Distance in input pixels between adjacent units (the effective stride)."""
        return Fraction(self.shift, self.period)

    @property
    def rf(self) -> int:
        """Widest span over all units, in input pixels (padding positions included; a period longer
        than the tensor counts its real units only)."""
        real = zip(self.lo[: self.units or None], self.hi[: self.units or None])
        return max((hi - lo + 1 for lo, hi in real if lo is not None and hi is not None), default=0)

    @property
    def grid(self) -> tuple[int, int, int | None]:
        """Where the units sit, in integers: the jump as a reduced fraction and twice the start
        (maps whose units line up have equal grids; no Fraction on a rule's path)."""
        lo, hi = self.lo[0], self.hi[0]
        g = math.gcd(self.shift, self.period)
        return self.shift // g, self.period // g, None if lo is None or hi is None else lo + hi

    @property
    def start(self) -> Fraction | None:
        """Input coordinate of the centre of unit 0."""
        lo, hi = self.lo[0], self.hi[0]
        return None if lo is None or hi is None else Fraction(lo + hi, 2)

    @property
    def uniform(self) -> bool:
        """True when every unit has the same width and the centres step by exactly ``jump``."""
        if any(lo is None for lo in self.lo) or self.shift % self.period:
            return False  # (a fractional jump cannot step whole-pixel spans evenly)
        step, base_lo, base_hi = self.shift // self.period, self.lo[0], self.hi[0]
        if base_lo is None or base_hi is None:
            return False
        spans = enumerate(zip(self.lo, self.hi))
        return all(lo == base_lo + r * step and hi == base_hi + r * step for r, (lo, hi) in spans)

    def hull(self) -> Span:
        """Union of the spans of the real units (what a reduction over the axis sees)."""
        spans = [s for s in (self.span(u) for u in _edge_units(self.period, self.units)) if s is not None]
        if not spans:
            return None, None
        return min(s[0] for s in spans), max(s[1] for s in spans)

    # -- transformations -------------------------------------------------------------------------

    def reduced(self) -> AxisMap:
        """One unit that reads every unit (a reduction over the axis, or a broadcast operand)."""
        lo, hi = self.hull()
        return AxisMap(1, 0, (lo,), (hi,), self.size, 1, tuple(t.reduced() for t in self.terms))

    def picked(self, unit: int) -> AxisMap:
        """Only ``unit`` is left (an integer index)."""
        lo, hi = self.span(unit) or (None, None)
        return AxisMap(1, 0, (lo,), (hi,), self.size, 1, tuple(t.picked(unit) for t in self.terms))

    def broadcast(self, units: int) -> AxisMap:
        """A one-unit map repeated over ``units`` units (it already spans the same everywhere)."""
        return replace(self, units=units, terms=tuple(t.broadcast(units) for t in self.terms))

    def with_terms(self, terms: Iterable[Support]) -> AxisMap:
        return replace(self, terms=tuple(terms))

    def sliding(
        self, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1, n_out: int | None = None
    ) -> AxisMap:
        """Convolution / pooling: output unit ``o`` reads units ``o*stride - padding + t*dilation``.
        ``n_out`` defaults to the symmetric-padding, floor-mode output size."""
        if n_out is None:
            n_out = (self.units + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
        period = self.period // math.gcd(self.period, stride)
        shift = self.shift * period * stride // self.period
        taps = np.arange(n_out)[:, None] * stride - padding + np.arange(kernel)[None, :] * dilation
        if self.period == 1:  # the textbook case: one span, moved by whole units; the hull in closed form
            return self._slid(-padding, (kernel - 1) * dilation - padding, shift, n_out, self._read(taps))
        return self._windows(
            lambda r: (r * stride - padding + t * dilation for t in range(kernel)),
            period, shift, n_out, self._read(taps),
        )

    def unfolded(self, kernel: int, stride: int, padding: int, dilation: int, n_out: int) -> AxisMap:
        """``F.unfold``'s blocks: unit ``o * kernel + k`` reads unit ``o*stride - padding + k*dilation``
        (block ``o``, kernel offset ``k``)."""
        period = self.period // math.gcd(self.period, stride)
        shift = self.shift * period * stride // self.period
        taps = (np.arange(n_out)[:, None] * stride - padding + np.arange(kernel)[None, :] * dilation).reshape(-1, 1)
        return self._windows(
            lambda r: (r // kernel * stride - padding + r % kernel * dilation,),
            period * kernel, shift, n_out * kernel, self._read(taps),
        )

    def transposed(
        self, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1, n_out: int | None = None
    ) -> AxisMap:
        """Transposed convolution: input unit ``i`` writes output units ``i*stride - padding + t*dilation``.
        ``n_out`` defaults to the output size without ``output_padding``."""
        if n_out is None:
            n_out = (self.units - 1) * stride - 2 * padding + dilation * (kernel - 1) + 1

        def taps(r: int) -> Iterable[int]:
            for t in range(kernel):
                num = r + padding - t * dilation
                if num % stride == 0:
                    yield num // stride

        nums = np.arange(n_out)[:, None] + padding - np.arange(kernel)[None, :] * dilation
        reads = self._read(nums // stride, nums % stride == 0)
        return self._windows(taps, self.period * stride, self.shift, n_out, reads)

    def gathered(self, rows: Sequence[Sequence[int]]) -> AxisMap:
        """Output unit ``o`` reads input units ``rows[o]`` (adaptive windows, tables of any
        pattern). Beyond the tensor, rows that step (``rows[o + p]`` is ``rows[o]`` moved by a
        whole number of the input's periods) go on stepping; other patterns tile: unit
        ``o + k*len(rows)`` reads ``rows[o]`` moved by ``k`` times the input's length."""
        return self._gathered(*taps_of_rows(rows))

    def selected(self, units: np.ndarray) -> AxisMap:
        """:meth:`gathered` with one unit per row: output unit ``o`` is unit ``units[o]`` (a
        negative entry: none), without spelling the rows out in Python."""
        units = np.asarray(units, dtype=np.int64).reshape(-1)
        kept = units >= 0
        if not kept.any():  # as gathered([[]] * n): rows of no width
            return self._gathered(np.zeros((len(units), 0), dtype=np.int64), np.zeros((len(units), 0), dtype=bool))
        return self._gathered(np.where(kept, units, 0)[:, None], kept[:, None])

    def _gathered(self, taps: np.ndarray, mask: np.ndarray) -> AxisMap:
        rows = taps.shape[0]
        terms = self._read(taps, mask)
        stepping = _row_period(taps, mask, self.period)
        if stepping is not None:  # windows that step (x.unfold(...).sum(-1)): the map steps on beyond the tensor
            period, step = stepping
            spans = self._hulls(taps[:period], mask[:period])
            return AxisMap.from_table(spans, step * self.shift // self.period, self.size, rows, terms)
        spans = self._hulls(taps, mask)
        lo, hi = tuple(s[0] for s in spans), tuple(s[1] for s in spans)
        for p in range(1, len(spans) // 2 + 1):  # the real units step evenly (twice at least): so do those beyond
            even = _step(lo, hi, p)
            if even is not None:
                return AxisMap(p, even, lo[:p], hi[:p], self.size, rows, terms)
        tiles, shift = self._tiling()
        tiled = taps[None] + (np.arange(tiles) * self.units)[:, None, None]
        spans = self._hulls(tiled.reshape(tiles * len(taps), taps.shape[1]), np.tile(mask, (tiles, 1)))
        return AxisMap.from_table(spans, shift, self.size, rows, terms)

    def cumulative(self) -> AxisMap:
        """Unit ``o`` reads units ``0 .. o`` (``cumsum`` and kin): :meth:`gathered` with prefix
        rows, in linear time. Beyond the tensor the prefixes restart every tile, as there."""
        n_in = self.units
        tiles, shift = self._tiling()
        spans: list[Span] = []
        for k in range(tiles):
            hull: Span = (None, None)
            for unit in range(k * n_in, (k + 1) * n_in):
                hull = _merge(hull, self.span(unit))
                spans.append(hull)
        terms = tuple(Support._exact(np.minimum.accumulate(t.lo), np.maximum.accumulate(t.hi)) for t in self.terms)
        return AxisMap.from_table(spans, shift, self.size, n_in, terms)

    def union(self, other: AxisMap, units: int) -> AxisMap:
        """Per-unit union of two maps of the same axis (a merge: ``+``, ``*``, ``cat`` on channels)."""
        terms = tuple(t.broadcast(units) for t in self.terms + other.terms)
        if self.shift * other.period == other.shift * self.period:  # the same jump
            period = math.lcm(self.period, other.period)
            shift = self.shift * period // self.period
            spans = [_merge(self.span(u), other.span(u)) for u in range(period)]
            return AxisMap.from_table(spans, shift, self.size, units, terms)
        # not periodic together: spell out every unit
        spans = [_merge(self.span(u), other.span(u)) for u in range(max(units, 1))]
        return AxisMap.from_units(spans, self.size, max(self.jump, other.jump) * max(units, 1), terms)

    @staticmethod
    def union_all(maps: Sequence[AxisMap], units: int) -> AxisMap:
        """:meth:`union` of several maps at once: one pass over the common period when their jumps
        agree (DenseNet's ``cat`` of 32 branches), else pairwise."""
        first = maps[0]
        if len(maps) < 3 or any(m.shift * first.period != first.shift * m.period for m in maps):
            return reduce(lambda merged, m: merged.union(m, units), maps[1:], first)
        period = math.lcm(*(m.period for m in maps))
        nothing: Span = (None, None)
        spans = [reduce(_merge, (m.span(u) for m in maps), nothing) for u in range(period)]
        terms = tuple(t.broadcast(units) for m in maps for t in m.terms)
        return AxisMap.from_table(spans, first.shift * period // first.period, first.size, units, terms)

    # -- helpers ---------------------------------------------------------------------------------

    def union_of(self, units: Iterable[int]) -> Span:
        """Hull of the spans of ``units``: what a unit reading all of them sees."""
        nothing: Span = (None, None)
        return reduce(_merge, (self.span(unit) for unit in units), nothing)

    def _hulls(self, taps: np.ndarray, mask: np.ndarray) -> list[Span]:
        """:meth:`union_of` of each row of ``taps`` (where ``mask``), vectorised."""
        q, r = np.divmod(taps, self.period)
        lo = np.array([_NONE if v is None else v for v in self.lo], dtype=np.int64)[r]
        hi = np.array([_NONE if v is None else v for v in self.hi], dtype=np.int64)[r]
        valid = mask & (lo != _NONE)
        low = np.where(valid, lo + q * self.shift, np.iinfo(np.int64).max).min(axis=1, initial=np.iinfo(np.int64).max)
        high = np.where(valid, hi + q * self.shift, np.iinfo(np.int64).min).max(axis=1, initial=np.iinfo(np.int64).min)
        return [(int(a), int(b)) if ok else (None, None) for a, b, ok in zip(low, high, valid.any(axis=1))]

    def _slid(self, first: int, last: int, shift: int, units: int, terms: tuple[Support, ...]) -> AxisMap:
        """A period-1 map whose unit 0 reads units ``first .. last`` of this period-1 map: their
        hull is the two end units' spans (spans move by ``self.shift`` per unit)."""
        lo, hi = self.lo[0], self.hi[0]
        if lo is None or hi is None:
            return AxisMap(1, shift, (None,), (None,), self.size, units, terms)
        ends = (first * self.shift, last * self.shift)
        return AxisMap(1, shift, (lo + min(ends),), (hi + max(ends),), self.size, units, terms)

    def _tiling(self) -> tuple[int, int]:
        """How many copies of the input's length bring this map back in phase, and their shift in
        pixels (whole: ``tiles * units`` is a multiple of the period)."""
        tiles = self.period // math.gcd(self.period, self.units)
        return tiles, self.shift * tiles * self.units // self.period

    def _read(self, taps: np.ndarray, mask: np.ndarray | None = None) -> tuple[Support, ...]:
        """Every term of the support, read through ``taps`` (see :meth:`Support.read`)."""
        return tuple(t.read(taps, mask) for t in self.terms)

    def _windows(
        self,
        taps_of: Callable[[int], Iterable[int]],
        out_period: int,
        out_shift: int,
        units: int,
        terms: tuple[Support, ...],
    ) -> AxisMap:
        """New map of ``units`` units whose unit ``r`` (one period of ``out_period`` units) is the
        union of input units ``taps_of(r)``; the caller guarantees the result has that period."""
        spans = [self.union_of(taps_of(r)) for r in range(out_period)]
        return AxisMap.from_table(spans, out_shift, self.size, units, terms)

    def _shortest(self) -> AxisMap:
        """The same map with the shortest period that reproduces it."""
        for p in range(1, self.period):
            if self.period % p or (self.shift * p) % self.period:
                continue
            step = self.shift * p // self.period
            if all(
                _shifted(self.lo[r], step) == self.lo[r + p] and _shifted(self.hi[r], step) == self.hi[r + p]
                for r in range(self.period - p)
            ):
                return replace(self, period=p, shift=step, lo=self.lo[:p], hi=self.hi[:p])
        return self


def _row_period(taps: np.ndarray, mask: np.ndarray, in_period: int, longest: int = 64) -> tuple[int, int] | None:
    """``(p, s)``, the shortest ``p`` with every row ``o + p`` the row ``o`` moved by ``s`` (a
    multiple of ``in_period``), when all rows are full and of one width; else None."""
    n = len(taps)
    if n < 2 or not mask.all() or taps.shape[1] == 0:
        return None
    for p in range(1, min(n // 2, longest) + 1):  # two periods at least
        step = int(taps[p, 0] - taps[0, 0])
        if step % in_period == 0 and np.array_equal(taps[p:], taps[:-p] + step):
            return p, step
    return None


def _step(lo: tuple[int | None, ...], hi: tuple[int | None, ...], p: int) -> int | None:
    """The shift that makes the spans repeat with period ``p``, if they do."""
    first, repeated = lo[0], lo[p]
    if first is None or repeated is None:
        return None
    step = repeated - first
    for r in range(len(lo) - p):
        if _shifted(lo[r], step) != lo[r + p] or _shifted(hi[r], step) != hi[r + p]:
            return None
    return step


def _shifted(value: int | None, step: int) -> int | None:
    return None if value is None else value + step


def _merge(a: Span | tuple[int, int] | None, b: Span | tuple[int, int] | None) -> Span:
    """Hull of two spans; None or ``(None, None)`` is no pixel."""
    if a is None or a[0] is None or a[1] is None:
        return b if b is not None else (None, None)
    if b is None or b[0] is None or b[1] is None:
        return a
    return min(a[0], b[0]), max(a[1], b[1])


def _edge_units(period: int, units: int) -> set[int]:
    """Units whose spans bound a monotone periodic map: the first and last period."""
    return set(range(min(period, units))) | set(range(max(0, units - period), units))
