"""Exact receptive-field geometry of one spatial axis.

A tensor's units along an axis map to intervals of input pixels. For every op we support the map is
*periodic*: unit ``o = q * period + r`` spans ``[lo[r] + q * shift, hi[r] + q * shift]``. Plain
convolutions and pools keep ``period == 1`` (the textbook rf / jump / start numbers); transposed
convolutions, upsampling and misaligned merges need a longer period, and adaptive pooling may need
an explicit table (``period`` = the number of units). Indices outside ``[0, n)`` extend the grid,
which is the usual convention that padding positions belong to the receptive field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction


@dataclass(frozen=True)
class AxisMap:
    """Spans of the units of one tensor axis, in coordinates of one input axis of ``size`` pixels.

    ``lo[r] is None`` marks units that depend on no input pixel (a transposed conv with a kernel
    smaller than its stride leaves such holes).
    """

    period: int
    shift: Fraction
    lo: tuple[int | None, ...]
    hi: tuple[int | None, ...]
    size: int
    reach: tuple[int, int] | None = None  # input pixels some unit can really see (None: all)

    @classmethod
    def identity(cls, size: int) -> AxisMap:
        """The network input: unit ``i`` is pixel ``i``."""
        return cls(1, Fraction(1), (0,), (0,), size)

    @classmethod
    def constant(cls, lo: int | None, hi: int | None, size: int) -> AxisMap:
        """Every unit spans the same interval: the axis was reduced or broadcast."""
        return cls(1, Fraction(0), (lo,), (hi,), size)

    @classmethod
    def from_table(cls, spans: Sequence[tuple[int | None, int | None]], shift: Fraction, size: int) -> AxisMap:
        """One exact period of spans (unit ``r + period`` is unit ``r`` moved by ``shift``), stored
        with the shortest period that reproduces it."""
        lo = tuple(s[0] for s in spans)
        hi = tuple(s[1] for s in spans)
        return cls(len(spans), Fraction(shift), lo, hi, size)._shortest()

    @classmethod
    def from_units(cls, spans: Sequence[tuple[int | None, int | None]], size: int, beyond: Fraction) -> AxisMap:
        """Spans of *every* unit of a tensor axis. Finds the shortest periodic description of them;
        if there is none, ``beyond`` is the shift that places the virtual units outside the tensor
        (padding positions of a later layer)."""
        lo = tuple(s[0] for s in spans)
        hi = tuple(s[1] for s in spans)
        for p in range(1, len(spans)):
            step = _step(lo, hi, p)
            if step is not None:
                return cls(p, Fraction(step), lo[:p], hi[:p], size)
        return cls(len(spans), Fraction(beyond), lo, hi, size)

    # -- queries ---------------------------------------------------------------------------------

    def span(self, unit: int) -> tuple[int, int] | None:
        """Input interval ``(lo, hi)`` of ``unit`` (any integer), or None if it sees no pixel."""
        q, r = divmod(unit, self.period)
        lo, hi = self.lo[r], self.hi[r]
        if lo is None or hi is None:
            return None
        if self.shift.denominator == 1:  # the common case, without Fraction arithmetic
            offset = q * self.shift.numerator
            return lo + offset, hi + offset
        offset = q * self.shift
        return math.floor(lo + offset), math.ceil(hi + offset)

    @property
    def jump(self) -> Fraction:
        """Distance in input pixels between adjacent units (the effective stride)."""
        return self.shift / self.period

    @property
    def rf(self) -> int:
        """Widest span over all units, in input pixels (padding positions included)."""
        return max((h - l + 1 for l, h in zip(self.lo, self.hi) if l is not None and h is not None), default=0)

    @property
    def start(self) -> Fraction | None:
        """Input coordinate of the centre of unit 0."""
        lo, hi = self.lo[0], self.hi[0]
        return None if lo is None or hi is None else Fraction(lo + hi, 2)

    @property
    def uniform(self) -> bool:
        """True when every unit has the same width and the centres step by exactly ``jump``."""
        if any(l is None for l in self.lo):
            return False
        base_lo, base_hi = self.lo[0], self.hi[0]
        return all(
            l == base_lo + r * self.jump and h == base_hi + r * self.jump
            for r, (l, h) in enumerate(zip(self.lo, self.hi))
        )

    @property
    def visible(self) -> tuple[int, int]:
        """The input pixels that some unit of the tensor can see. Spans extend past it through
        padding (the RF convention); floor division in a strided layer can drop trailing pixels."""
        return self.reach if self.reach is not None else (0, self.size - 1)

    def clipped(self, unit: int) -> tuple[int, int] | None:
        """The pixels ``unit`` really depends on (its span within the visible pixels)."""
        s = self.span(unit)
        if s is None:
            return None
        lo, hi = max(s[0], self.visible[0]), min(s[1], self.visible[1])
        return (lo, hi) if lo <= hi else None

    def bounded(self, units: int, parents: Sequence[tuple[int, int]]) -> AxisMap:
        """This map with ``reach`` set: what its ``units`` real units can see of what the input
        tensors could see (a unit reading only padding beyond the last real unit sees nothing)."""
        lo, hi = self.hull(units)
        if lo is None or hi is None or not parents:
            return self
        reach = (max(lo, min(p[0] for p in parents)), min(hi, max(p[1] for p in parents)))
        return replace(self, reach=None if reach == (0, self.size - 1) else reach)

    def is_global(self, units: int) -> bool:
        """True when each of the first ``units`` units depends on every pixel of the input axis."""
        if units <= 0:
            return False
        spans = [self.clipped(u) for u in _edge_units(self.period, units)]
        return all(s is not None and s[0] <= 0 and s[1] >= self.size - 1 for s in spans)

    def hull(self, units: int) -> tuple[int | None, int | None]:
        """Union of the spans of units ``0 .. units-1`` (what a reduction over the axis sees)."""
        spans = [s for s in (self.span(u) for u in _edge_units(self.period, units)) if s is not None]
        if not spans:
            return None, None
        return min(s[0] for s in spans), max(s[1] for s in spans)

    # -- transformations -------------------------------------------------------------------------

    def windows(self, taps_of: Callable[[int], Iterable[int]], out_period: int, out_shift: Fraction) -> AxisMap:
        """New map whose unit ``r`` (one period of ``out_period`` units) is the union of input units
        ``taps_of(r)``; the caller guarantees the result is periodic with the given period."""
        spans = [self.union_of(taps_of(r)) for r in range(out_period)]
        return AxisMap.from_table(spans, out_shift, self.size)

    def sliding(self, kernel: int, stride: int, padding: int, dilation: int = 1) -> AxisMap:
        """Convolution / pooling: output unit ``o`` reads units ``o*stride - padding + t*dilation``."""
        period = self.period // math.gcd(self.period, stride)
        shift = self.shift * Fraction(period * stride, self.period)
        return self.windows(
            lambda r: (r * stride - padding + t * dilation for t in range(kernel)), period, shift
        )

    def transposed(self, kernel: int, stride: int, padding: int, dilation: int = 1) -> AxisMap:
        """Transposed convolution: input unit ``i`` writes output units ``i*stride - padding + t*dilation``."""

        def taps(r: int) -> Iterable[int]:
            for t in range(kernel):
                num = r + padding - t * dilation
                if num % stride == 0:
                    yield num // stride

        return self.windows(taps, self.period * stride, self.shift)

    def union(self, other: AxisMap, units: int) -> AxisMap:
        """Per-unit union of two maps of the same axis (a merge: ``+``, ``*``, ``cat`` on channels)."""
        if self.jump == other.jump:
            period = math.lcm(self.period, other.period)
            shift = self.jump * period
            return AxisMap.from_table([_merge(self.span(u), other.span(u)) for u in range(period)], shift, self.size)
        # not periodic together: spell out every unit
        spans = [_merge(self.span(u), other.span(u)) for u in range(max(units, 1))]
        return AxisMap.from_units(spans, self.size, max(self.jump, other.jump) * max(units, 1))

    # -- helpers ---------------------------------------------------------------------------------

    def union_of(self, units: Iterable[int]) -> tuple[int | None, int | None]:
        """Hull of the spans of ``units``: what a unit reading all of them sees."""
        lo: int | None = None
        hi: int | None = None
        for unit in units:
            s = self.span(unit)
            if s is not None:
                lo = s[0] if lo is None else min(lo, s[0])
                hi = s[1] if hi is None else max(hi, s[1])
        return lo, hi

    def _shortest(self) -> AxisMap:
        """The same map with the shortest period that reproduces it."""
        for p in range(1, self.period):
            if self.period % p:
                continue
            step = self.shift * p / self.period
            if all(
                _shifted(self.lo[r], step) == self.lo[r + p] and _shifted(self.hi[r], step) == self.hi[r + p]
                for r in range(self.period - p)
            ) and (step.denominator == 1 or all(v is None for v in self.lo)):
                return AxisMap(p, step, self.lo[:p], self.hi[:p], self.size)
        return self


def _step(lo: tuple[int | None, ...], hi: tuple[int | None, ...], p: int) -> int | None:
    """The shift that makes the spans repeat with period ``p``, if they do."""
    if lo[p] is None or lo[0] is None:
        return None
    step = lo[p] - lo[0]
    for r in range(len(lo) - p):
        if _shifted(lo[r], step) != lo[r + p] or _shifted(hi[r], step) != hi[r + p]:
            return None
    return step


def _shifted(value: int | None, step: Fraction) -> Fraction | None:
    return None if value is None else value + step


def _merge(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int | None, int | None]:
    if a is None:
        return b if b is not None else (None, None)
    if b is None:
        return a
    return min(a[0], b[0]), max(a[1], b[1])


def _edge_units(period: int, units: int) -> set[int]:
    """Units whose spans bound a monotone periodic map: the first and last period."""
    return set(range(min(period, units))) | set(range(max(0, units - period), units))
