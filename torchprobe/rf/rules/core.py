"""The rule API: what a rule sees (:class:`RuleContext`), the registry, and the building blocks
every family of rules is written with (broadcasting ``merge``, per-axis ``spatial`` geometry,
``reduce_dims``). Plugin authors import these from :mod:`torchprobe.rf.rules`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib.metadata import entry_points
from typing import Any

import numpy as np
import torch
from torch import nn

from torchprobe.engine.torch_utils import argument, is_pointwise_aten, one_line, tensors_in
from torchprobe.errors import UsageError
from torchprobe.rf.axis import AxisMap
from torchprobe.rf.placement import NO_UNIT, Columns, Placement
from torchprobe.rf.state import RFState, TensorRF, UnknownRF, compacted

RULE_ENTRY_POINT_GROUP = "torchprobe.rf_rules"
RuleResult = RFState | Sequence[RFState | None] | None


@dataclass
class RuleContext:
    """What a rule sees: the call's arguments, its output, and the RF state of any tensor."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any
    state_of: Callable[[torch.Tensor], RFState | None]
    module: nn.Module | None = None
    notes: list[str] = field(default_factory=list)  # approximations the rule had to make

    def note(self, message: str) -> None:
        self.notes.append(message)

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        return argument(self.args, self.kwargs, index, name, default)

    @cached_property
    def tensors(self) -> list[torch.Tensor]:
        """Every tensor among the arguments, in order (inside lists too; found once per call)."""
        return tensors_in((self.args, self.kwargs))

    @property
    def input(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def input_state(self) -> RFState | None:
        return self.state_of(self.input)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(tensors_in(self.output)[0].shape)


Rule = Callable[[RuleContext], RuleResult]


@dataclass
class RuleRegistry:
    """Rules by canonical op name and by module class (a module rule replaces its internals)."""

    ops: dict[str, Rule] = field(default_factory=dict)
    modules: dict[type, Rule] = field(default_factory=dict)
    _loaded_entry_points: bool = False
    _by_type: dict[type, Rule | None] = field(default_factory=dict)  # for_module's answers, until a register

    def register(self, *targets: str | Callable[..., Any] | type[nn.Module]) -> Callable[[Rule], Rule]:
        """Decorator: ``@register_rf_rule("my_op", MyLayer)``; strings and functions name ops."""

        def decorate(rule: Rule) -> Rule:
            self._by_type.clear()
            for target in targets:
                if isinstance(target, type) and issubclass(target, nn.Module):
                    self.modules[target] = rule
                else:
                    self.ops[target if isinstance(target, str) else target.__name__] = rule
            return rule

        return decorate

    def for_op(self, name: str) -> Rule | None:
        self._load_entry_points()
        if name in self.ops:
            return self.ops[name]
        return pointwise if is_pointwise_aten(name) else None

    def for_module(self, module: nn.Module) -> Rule | None:
        self._load_entry_points()
        kind = type(module)
        if kind not in self._by_type:  # asked at every module call: the MRO is walked once per class
            self._by_type[kind] = next((self.modules[c] for c in kind.__mro__ if c in self.modules), None)
        return self._by_type[kind]

    def _load_entry_points(self) -> None:
        if not self._loaded_entry_points:
            self._loaded_entry_points = True
            for ep in entry_points(group=RULE_ENTRY_POINT_GROUP):
                try:
                    ep.load()
                except Exception as error:  # a third party's bug: name it, never blame the model
                    raise UsageError(f"the receptive-field rule plugin {ep.name!r} ({ep.value}) failed to load: "
                                     f"{one_line(error)}; fix or uninstall it") from error


RULES = RuleRegistry()
register_rf_rule = RULES.register


def first_unknown(states: Sequence[RFState | None]) -> UnknownRF | None:
    return next((s for s in states if isinstance(s, UnknownRF)), None)


def merge(
    tensors: Sequence[torch.Tensor], states: Sequence[RFState | None], out_shape: Sequence[int]
) -> RFState | None:
    """Broadcasting merge: each output unit sees the union of what its operands' units see.

    An operand broadcast along an axis (size 1 there) brings the same span to every unit: that is
    how squeeze-excitation makes the RF global. Operands whose unit grids differ are misaligned.
    """
    distinct = {(tuple(t.shape), s): t for t, s in zip(tensors, states) if s is not None}  # DenseNet cats many alike
    known = [(t, s) for (_, s), t in distinct.items()]
    if not known:
        return None
    unknown = first_unknown([s for _, s in known])
    if unknown:
        return unknown
    carried = [s for _, s in known if isinstance(s, TensorRF)]
    axes, places = [], []
    for a in range(len(carried[0].axes)):
        m, p, grids = _merged_axis([(s.axes[a], s.places[a].broadcast(_padded(t.shape, out_shape)))
                                    for t, s in known if isinstance(s, TensorRF)], out_shape)
        axes.append(m)
        places.append(p)
        if len(grids) > 1:
            carried = [replace(s, aligned=False) for s in carried]
    return TensorRF(tuple(axes), tuple(places), all(s.aligned for s in carried))


def _padded(shape: Sequence[int], out_shape: Sequence[int]) -> tuple[int, ...]:
    """An operand's shape as it broadcasts against ``out_shape`` (sizes of the output where it is 1)."""
    shape = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    return tuple(o if s == 1 else s for s, o in zip(shape, out_shape))


def _merged_axis(
    operands: list[tuple[AxisMap, Placement]], out_shape: Sequence[int]
) -> tuple[AxisMap, Placement, set[tuple]]:
    """One axis of a merge: the union of the operands' maps, on a placement that addresses all of
    them: theirs when they agree, the finest when the others' units are functions of its units
    (attention's query tokens and the window their keys fill), else every index spelled out."""
    placed = [(m, p) for m, p in operands if p.dims]
    grids = {m.grid for m, _ in placed if m.shift or m.period > 1}  # every unit alike: a broadcast
    if not placed:
        return _union([m for m, _ in operands], 1), Placement.nowhere(), grids
    # an operand on no dim is one unit broadcast over the others' units: each of them reads that
    # unit, not the units its map extrapolates beyond it (adaptive pooling's one unit steps on)
    operands = [(m if p.dims else m.reduced(), p) for m, p in operands]
    units, finest = max(((m.units, p) for m, p in placed), key=lambda pair: pair[0])
    if all(p == finest for _, p in placed):
        if len(placed) == len(operands) or not _has_holes(finest):
            return _union([m for m, _ in operands], units), finest, grids
    dims = sorted({d for _, p in placed for d in p.dims})
    if _has_holes(finest):  # an index of no unit of the finest gains the others' units: spell out
        return (*_spelled_out(operands, dims, out_shape), set())
    columns = Columns.of([finest] + [p for _, p in operands], dims, out_shape)
    reference = columns.places[0].grid(dims, columns.sizes).reshape(-1)
    maps = []
    for (m, p), reduced in zip(operands, columns.places[1:]):
        if not p.dims or p == finest:
            maps.append(m)
            continue
        read = _as_function_of(reference, reduced.grid(dims, columns.sizes).reshape(-1), units)
        if read is None:  # neither placement refines the other
            return (*_spelled_out(operands, dims, out_shape), set())
        maps.append(m.gathered(read))
    return _union(maps, units), finest, set()


def _has_holes(place: Placement) -> bool:
    return any((t == NO_UNIT).any() for t in place.tables)


def _spelled_out(
    operands: list[tuple[AxisMap, Placement]], dims: list[int], out_shape: Sequence[int]
) -> tuple[AxisMap, Placement]:
    """The union with one unit per index of ``dims``, then compacted; worked out on the distinct
    columns of the operands' tables (a window's query-key products, not every index)."""
    placed = [k for k, (_, p) in enumerate(operands) if p.dims]
    columns = Columns.of([operands[k][1] for k in placed], dims, out_shape)
    sizes = [columns.sizes[d] for d in dims]
    flat = [m for m, _ in operands]
    for k, place in zip(placed, columns.places):
        units = place.grid(dims, columns.sizes).reshape(-1)
        flat[k] = flat[k].selected(units)
    everything = np.arange(math.prod(sizes)).reshape(sizes)
    m, p = compacted(_union(flat, everything.size), everything, dims)
    return m, columns.expanded(p)


def _as_function_of(reference: np.ndarray, other: np.ndarray, units: int) -> list[list[int]] | None:
    """``rows[u]``: the unit of ``other`` at the indices where ``reference`` is unit ``u``, when
    that is one unit (``other`` is a function of ``reference``); else None."""
    rows: list[list[int]] = [[] for _ in range(units)]
    kept = reference != NO_UNIT
    width = int(other.max(initial=0)) + 2  # other + 1 in [0, width): one integer per pair
    pairs = np.unique(reference[kept] * width + other[kept] + 1)
    firsts, seconds = np.divmod(pairs, width)
    if len(np.unique(firsts)) != len(pairs):
        return None
    for u, v in zip(firsts.tolist(), (seconds - 1).tolist()):
        rows[u] = [v] if v != NO_UNIT else []
    return rows


def _union(maps: Sequence[AxisMap], units: int) -> AxisMap:
    merged = AxisMap.union_all(maps, units)
    return merged.broadcast(units) if merged.units == 1 else merged


def pointwise(ctx: RuleContext) -> RuleResult:
    """Elementwise ops, activations, normalisations, dropout: a merge of the tensor operands."""
    tensors = ctx.tensors
    return merge(tensors, [ctx.state_of(t) for t in tensors], ctx.out_shape)


SHARED_NOTE = ("{op} slides along a dim that holds several input axes (or a part of one): its "
               "window is counted as the hull of the indices it reads")


def spatial(
    ctx: RuleContext,
    n: int,
    geometry: Callable[[int, AxisMap, int, int], AxisMap],
    mixes_channels: bool = False,
) -> RuleResult:
    """Apply ``geometry(i, map, in_units, out_units)`` to the last ``n`` dims (spatial axis ``i``);
    ``mixes_channels``: each output reads every channel (the dim before them)."""
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    in_shape, out_shape = tuple(ctx.input.shape), ctx.out_shape
    if mixes_channels and ctx.input.dim() > n:
        state = state.reduced_over([-n - 1], in_shape)
    shape = list(in_shape)
    for i in range(n):
        d = i - n
        before = tuple(shape)
        shape[d] = out_shape[d]
        if not any(d in p.dims for p in state.places):
            continue
        if _shared(state.places, d):
            ctx.note(SHARED_NOTE.format(op=ctx.name))

        def rows(i: int = i, d: int = d) -> list[list[int]]:
            window = geometry(i, AxisMap.identity(in_shape[d]), in_shape[d], out_shape[d]).terms[0]
            return [list(range(lo, hi + 1)) for lo, hi in zip(window.lo.tolist(), window.hi.tolist())]

        def on_map(m: AxisMap, i: int = i, d: int = d) -> AxisMap:
            return geometry(i, m, in_shape[d], out_shape[d])

        state = state.along(d, (before, tuple(shape)), rows, on_map)
    return state


def _shared(places: Sequence[Placement], dim: int) -> bool:
    """Does ``dim`` hold several axes, or one that other dims address too (not only mark
    indices without a unit)?"""
    on = [p for p in places if dim in p.dims]
    return len(on) > 1 or any(not np.isin(t, (0, NO_UNIT)).all() for p in on for d, t in zip(p.dims, p.tables)
                              if d != dim)


def per_axis(value: Any, n: int) -> tuple[int, ...]:
    """``3`` or ``(3,)`` or ``(3, 5)`` -> one int per spatial axis."""
    if isinstance(value, int):
        return (value,) * n
    values = tuple(int(v) for v in value)
    return values * n if len(values) == 1 else values


def n_spatial(name: str) -> int:
    """``max_pool2d_with_indices`` -> 2."""
    return int(name.removesuffix("_with_indices")[-2])


def normalise_dims(dim: Any, ndim: int) -> list[int]:
    """Dims as negative indices; None or () means every dim."""
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return list(range(-ndim, 0))
    dims = [dim] if isinstance(dim, int) else list(dim)
    return [d - ndim if d >= 0 else d for d in dims]


def reduce_dims(state: RFState | None, shape: Sequence[int], dims: Sequence[int], keepdim: bool) -> RFState | None:
    """Units combined along ``dims`` (negative): every unit sees what the units that differ from it
    only there see; without ``keepdim`` those dims disappear."""
    if not isinstance(state, TensorRF):
        return state
    combined = state.reduced_over(dims, shape)
    if keepdim:
        return combined
    return combined.moved(lambda d: d + sum(1 for r in dims if r > d))
