"""Property tests of :mod:`torchprobe.rf.support` against brute force over the whole unit grid.

A tensor's support is a union of terms, each a product of per-axis :class:`Support` factors, and
the fast answers about it (``covers`` compresses units into classes, ``seen`` works on fused
terms, ``fused`` merges terms by their reach patterns) never walk the grid of units. Here small
random supports (1-3 axes, 1-6 units per axis, 1-4 terms, empty units included) are checked
against the definition, spelled out unit by unit: a unit's span on an axis is the union over the
terms whose every factor reaches it. The per-axis operations (``read``, ``reduced``, ``picked``,
``broadcast``, ``union``, ``concatenate``, equality and hashing) are checked against plain loops,
and the supports that :class:`~torchprobe.rf.axis.AxisMap` derives for 1-D convs, pools and
transposed convs against the gradients PyTorch computes. The last test pins a bug (see there).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from torchprobe.rf.axis import AxisMap
from torchprobe.rf.placement import distinct_rows
from torchprobe.rf.support import Support, covers, fused, joint_span, seen, taps_of_rows

NO_LO, NO_HI = np.iinfo(np.int64).max, np.iinfo(np.int64).min
CHEAP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TORCH = settings(max_examples=50, deadline=None)

Span = tuple[int, int] | None
Factors = list[tuple[Support, ...]]


# -- building supports from plain spans, and the brute-force oracle ------------------------------------


def make(spans: Sequence[Span]) -> Support:
    """A support from per-unit spans, an empty unit spelled with the sentinels."""
    lo = [NO_LO if s is None else s[0] for s in spans]
    hi = [NO_HI if s is None else s[1] for s in spans]
    return Support(np.array(lo, dtype=np.int64), np.array(hi, dtype=np.int64))


def spans_of(s: Support) -> list[Span]:
    return [(int(lo), int(hi)) if lo <= hi else None for lo, hi in zip(s.lo, s.hi)]


def hull(spans: Sequence[Span]) -> Span:
    real = [s for s in spans if s is not None]
    return (min(s[0] for s in real), max(s[1] for s in real)) if real else None


def grid(factors: Factors) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(len(f)) for f in factors[0])))


def reached(term: Sequence[Support], unit: Sequence[int]) -> bool:
    return all(f.lo[u] <= f.hi[u] for f, u in zip(term, unit))


def brute_span(factors: Factors, unit: Sequence[int]) -> tuple[Span, ...]:
    """The definition: per axis, the hull of the factors of every term that reaches ``unit``."""
    terms = [t for t in factors if reached(t, unit)]
    return tuple(hull([spans_of(t[a])[unit[a]] for t in terms]) for a in range(len(unit)))


# -- strategies -----------------------------------------------------------------------------------------

ranges = st.tuples(st.integers(-3, 3), st.integers(0, 8)).map(lambda p: (p[0], p[0] + p[1]))
spans = st.none() | st.just((-1, 6)) | ranges  # (-1, 6): a unit that sees every pixel of any drawn size


def supports(units: int) -> st.SearchStrategy[Support]:
    return st.lists(spans, min_size=units, max_size=units).map(make)


@st.composite
def factor_sets(draw: st.DrawFn) -> Factors:
    """1-3 axes of 1-6 units, 1-4 terms; a term may copy the reach pattern of an earlier one
    (with other spans), so that ``fused`` has terms to merge."""
    units = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    factors: Factors = []
    for _ in range(draw(st.integers(1, 4))):
        if factors and draw(st.booleans()):
            model = draw(st.sampled_from(factors))
            term = tuple(make([None if s is None else draw(ranges) for s in spans_of(f)]) for f in model)
        else:
            term = tuple(draw(supports(u)) for u in units)
        factors.append(term)
    return factors


# -- the whole support ------------------------------------------------------------------------------------


@CHEAP
@given(factor_sets(), st.data())
def test_covers_equals_brute_force(factors: Factors, data: st.DataObject) -> None:
    axis = data.draw(st.integers(0, len(factors[0]) - 1))
    size = data.draw(st.integers(1, 6))
    expected = all(
        (s := brute_span(factors, unit)[axis]) is not None and s[0] <= 0 and s[1] >= size - 1 for unit in grid(factors)
    )
    assert covers(factors, axis, size) == expected


def test_covers_both_ways() -> None:
    """Two terms that each miss a unit on their own, but cover every unit together."""
    a = (make([(0, 4), None]), make([(0, 1), (0, 1)]))
    b = (make([None, (-1, 5)]), make([(0, 0), (0, 0)]))
    assert covers([a, b], 0, 5) and not covers([a], 0, 5) and not covers([a, b], 0, 6)
    assert not covers([a, b], 1, 2)  # unit (1, 0) is reached by b only, which ends at pixel 0
    assert not covers([], 0, 1)


@CHEAP
@given(factor_sets())
def test_joint_span_is_the_union_of_the_terms_that_reach_the_unit(factors: Factors) -> None:
    for unit in grid(factors):
        assert joint_span(factors, unit) == brute_span(factors, unit)
    assert joint_span(factors, [-1] * len(factors[0])) == (None,) * len(factors[0])


@CHEAP
@given(factor_sets())
def test_fused_keeps_every_span_in_fewest_terms(factors: Factors) -> None:
    terms = fused(factors)
    units = grid(factors)
    assert len(terms) <= len(factors)
    for unit in units:
        assert joint_span(terms, unit) == brute_span(factors, unit)
    reach = [frozenset(u for u in units if reached(t, u)) for t in terms]
    assert all(reach), "a fused term reaches no unit"
    assert len(set(reach)) == len(reach), "two fused terms reach the same units"


@CHEAP
@given(factor_sets(), st.data())
def test_seen_is_the_hull_of_every_unit(factors: Factors, data: st.DataObject) -> None:
    axis = data.draw(st.integers(0, len(factors[0]) - 1))
    assert seen(factors, axis) == hull([brute_span(factors, unit)[axis] for unit in grid(factors)])


# -- one axis ------------------------------------------------------------------------------------------


@st.composite
def reads(draw: st.DrawFn) -> tuple[Support, np.ndarray, np.ndarray | None]:
    n_in = draw(st.integers(0, 6))
    n_out, width = draw(st.integers(0, 5)), draw(st.integers(0, 4))
    taps = np.array(draw(st.lists(st.integers(-3, n_in + 2), min_size=n_out * width, max_size=n_out * width)))
    mask = draw(st.none() | st.lists(st.booleans(), min_size=n_out * width, max_size=n_out * width))
    shape = (n_out, width)
    masks = None if mask is None else np.array(mask, dtype=bool).reshape(shape)
    return draw(supports(n_in)), taps.reshape(shape).astype(np.int64), masks


@CHEAP
@given(reads())
def test_read_equals_a_loop(case: tuple[Support, np.ndarray, np.ndarray | None]) -> None:
    s, taps, mask = case
    source = spans_of(s)
    expected = [
        hull([source[t] for k, t in enumerate(row) if 0 <= t < len(s) and (mask is None or mask[o, k])])
        for o, row in enumerate(taps)
    ]
    assert s.read(taps, mask) == make(expected)


@CHEAP
@given(st.integers(0, 6).flatmap(supports), st.lists(st.lists(st.integers(-2, 7), max_size=4), max_size=5))
def test_taps_of_rows_reads_exactly_the_rows(s: Support, rows: list[list[int]]) -> None:
    source = spans_of(s)
    expected = [hull([source[t] for t in row if 0 <= t < len(s)]) for row in rows]
    assert s.read(*taps_of_rows(rows)) == make(expected)


@CHEAP
@given(st.integers(0, 6).flatmap(supports), st.data())
def test_reduced_picked_broadcast(s: Support, data: st.DataObject) -> None:
    source = spans_of(s)
    assert s.reduced() == make([hull(source)])
    assert [s.span(u) for u in range(-2, len(s) + 2)] == [None, None] + source + [None, None]
    assert list(s.reaches()) == [x is not None for x in source]
    if len(s):
        unit = data.draw(st.integers(0, len(s) - 1))
        one = s.picked(unit)
        assert one == make([source[unit]])
        units = data.draw(st.integers(1, 6))
        assert one.broadcast(units) == make([source[unit]] * units)
    assert s.broadcast(len(s)) == s


@CHEAP
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(supports(n), supports(n), supports(1))))
def test_union_is_unitwise_and_broadcasts_one_unit(parts: tuple[Support, Support, Support]) -> None:
    a, b, one = parts
    assert a.union(b) == make([hull([x, y]) for x, y in zip(spans_of(a), spans_of(b))])
    assert a.union(b) == b.union(a)
    assert a.union(one) == one.union(a) == make([hull([x, spans_of(one)[0]]) for x in spans_of(a)])
    assert a.union(Support.nothing(len(a))) == a


@CHEAP
@given(st.lists(st.integers(0, 4).flatmap(supports), max_size=4))
def test_concatenate_lays_parts_end_to_end(parts: list[Support]) -> None:
    whole = Support.concatenate(parts) if parts else Support.nothing(0)
    assert spans_of(whole) == [x for p in parts for x in spans_of(p)]
    assert whole == make(spans_of(whole))


@CHEAP
@given(st.integers(1, 6).flatmap(supports), st.data())
def test_equality_and_hash_are_by_value(s: Support, data: st.DataObject) -> None:
    copy = Support(s.lo.copy(), s.hi.copy())
    assert copy == s and hash(copy) == hash(s) and len({s, copy}) == 1
    assert s != (s.lo, s.hi)
    unit = data.draw(st.integers(0, len(s) - 1))
    lo, hi = s.lo.copy(), s.hi.copy()
    lo[unit], hi[unit] = 100, 100  # no drawn span is that pixel alone
    assert Support(lo, hi) != s
    assert Support(s.lo[:-1], s.hi[:-1]) != s
    assert Support.identity(len(s)) == make([(u, u) for u in range(len(s))])
    assert Support.nothing(len(s)) == make([None] * len(s))


# -- AxisMap against gradients ------------------------------------------------------------------------------


def gradient_support(n: int, op) -> Support:
    """Per output unit of ``op`` on an all-ones (1, 1, n) input: its first and last input position
    with a non-zero gradient (all weights are positive, so no reads cancel)."""
    x = torch.ones(1, 1, n, dtype=torch.float64, requires_grad=True)
    y = op(x)[0, 0]
    spans: list[Span] = []
    for o in range(len(y)):
        (grad,) = torch.autograd.grad(y[o], x, retain_graph=True)
        nz = grad[0, 0].nonzero().flatten().tolist()
        spans.append((nz[0], nz[-1]) if nz else None)
    return make(spans)


def check_against_rf_convention(m: AxisMap, exact: Support) -> None:
    """Padding extends a span by the RF convention: it must contain the exact one."""
    for u, s in enumerate(spans_of(exact)):
        conventional = m.span(u)
        if s is not None:
            assert conventional is not None and conventional[0] <= s[0] and s[1] <= conventional[1]


geometry = dict(
    n=st.integers(1, 12), k=st.integers(1, 5), s=st.integers(1, 4), d=st.integers(1, 3), p=st.integers(0, 5)
)


@TORCH
@given(**geometry)
def test_sliding_matches_conv1d_gradients(n: int, k: int, s: int, d: int, p: int) -> None:
    n_out = (n + 2 * p - d * (k - 1) - 1) // s + 1
    assume(n_out >= 1)
    w = torch.ones(1, 1, k, dtype=torch.float64)
    m = AxisMap.identity(n).sliding(k, s, p, d, n_out)
    expected = gradient_support(n, lambda x: F.conv1d(x, w, stride=s, padding=p, dilation=d))
    assert len(expected) == n_out and m.units == n_out
    assert m.terms == (expected,)
    check_against_rf_convention(m, expected)


@TORCH
@given(n=st.integers(1, 12), k=st.integers(1, 5), s=st.integers(1, 4), p=st.integers(0, 2), ceil=st.booleans())
def test_sliding_matches_avg_pool1d_gradients(n: int, k: int, s: int, p: int, ceil: bool) -> None:
    assume(2 * p <= k and n + 2 * p >= k)
    pool = lambda x: F.avg_pool1d(x, k, s, p, ceil_mode=ceil, count_include_pad=True)  # noqa: E731
    expected = gradient_support(n, pool)
    m = AxisMap.identity(n).sliding(k, s, p, 1, len(expected))
    assert m.terms == (expected,)
    check_against_rf_convention(m, expected)


@TORCH
@given(**geometry, extra=st.integers(0, 3))
def test_transposed_matches_conv_transpose1d_gradients(n: int, k: int, s: int, d: int, p: int, extra: int) -> None:
    output_padding = extra % max(s, d)
    n_out = (n - 1) * s - 2 * p + d * (k - 1) + output_padding + 1
    assume(n_out >= 1)
    w = torch.ones(1, 1, k, dtype=torch.float64)
    op = lambda x: F.conv_transpose1d(x, w, stride=s, padding=p, output_padding=output_padding, dilation=d)  # noqa: E731
    m = AxisMap.identity(n).transposed(k, s, p, d, n_out)
    expected = gradient_support(n, op)
    assert len(expected) == n_out and m.units == n_out
    assert m.terms == (expected,)
    check_against_rf_convention(m, expected)


# -- a pinned bug ---------------------------------------------------------------------------------------------


def test_an_empty_unit_without_sentinels_adds_nothing() -> None:
    """Any lo > hi is an empty unit, also when built by hand (not with the sentinels)."""
    empty = Support(np.array([5], dtype=np.int64), np.array([3], dtype=np.int64))  # lo > hi: no pixel
    assert empty.span(0) is None and not empty.reaches()[0]
    other = make([(7, 8)])
    assert empty.union(other).span(0) == (7, 8)
    assert Support.concatenate([empty, other]).reduced().span(0) == (7, 8)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(-1, 40), min_size=3, max_size=3), min_size=1, max_size=60),
       st.integers(1, 3), st.sampled_from([1, 1 << 20, 1 << 40]))
def test_distinct_rows_agree_with_numpys_row_sort(rows: list[list[int]], width: int, scale: int) -> None:
    """Packed into one integer per row (or, when they do not fit, numpy's own row sort), the
    classes come out in numpy's order, with the same first indices and the same inverse."""
    table = np.array(rows, dtype=np.int64)[:, :width]
    table = np.where(table >= 0, table * scale, table)
    _, first, inverse = np.unique(table, axis=0, return_index=True, return_inverse=True)
    ours_first, ours_inverse = distinct_rows(table)
    np.testing.assert_array_equal(ours_first, first)
    np.testing.assert_array_equal(ours_inverse, inverse.reshape(-1))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.integers(0, 5), st.integers(-3, 3), st.integers(1, 7), st.integers(1, 3),
       st.integers(0, 3), st.integers(1, 2), st.integers(5, 30))
def test_a_period_one_window_in_closed_form_equals_the_hull_of_its_taps(
    step: int, offset: int, shift: int, kernel: int, stride: int, padding: int, dilation: int, units: int
) -> None:
    """``sliding`` on a one-span map takes the hull of the two end taps; spelled out, every tap's
    span gives the same hull, for any shift (a flipped map steps backwards)."""
    m = AxisMap(1, shift, (offset,), (offset + step - 1,), units, units, (Support.identity(units),))
    n_out = (units + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    assume(n_out >= 1)
    out = m.sliding(kernel, stride, padding, dilation, n_out)
    spans = [m.span(t * dilation - padding) for t in range(kernel)]
    assert (out.lo[0], out.hi[0]) == (min(s[0] for s in spans), max(s[1] for s in spans))
    assert (out.period, out.shift, out.units) == (1, shift * stride, n_out)


@st.composite
def axis_maps(draw: st.DrawFn, size: int = 24) -> AxisMap:
    """A map after a few random convolutions, pools and transposed convolutions of one axis."""
    m = AxisMap.identity(size)
    for _ in range(draw(st.integers(0, 3))):
        kernel, stride, padding = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(0, 2))
        if draw(st.booleans()):
            n_out = (m.units + 2 * padding - (kernel - 1) - 1) // stride + 1
            if n_out >= 1:
                m = m.sliding(kernel, stride, padding)
        elif padding < kernel:
            m = m.transposed(kernel, stride, padding)
    return m


@settings(max_examples=150, deadline=None)
@given(st.lists(axis_maps(), min_size=1, max_size=6))
def test_union_of_several_maps_at_once_equals_the_pairwise_unions(drawn: list[AxisMap]) -> None:
    """As a merge unites them: maps of the output's units, or of one unit (a broadcast)."""
    units = drawn[0].units
    maps = [m for m in drawn if m.units in (1, units)]
    pairwise = maps[0]
    for m in maps[1:]:
        pairwise = pairwise.union(m, units)
    assert AxisMap.union_all(maps, units) == pairwise


@settings(max_examples=150, deadline=None)
@given(axis_maps(), axis_maps())
def test_grids_in_integers_agree_with_jump_and_start(a: AxisMap, b: AxisMap) -> None:
    assert (a.grid == b.grid) == ((a.jump, a.start) == (b.jump, b.start))


@given(st.integers(1, 6).flatmap(lambda n: st.lists(supports(n), min_size=1, max_size=6)))
def test_union_of_several_supports_at_once_equals_the_pairwise_unions(parts: list[Support]) -> None:
    pairwise = parts[0]
    for part in parts[1:]:
        pairwise = pairwise.union(part)
    assert Support.union_all(parts) == pairwise
