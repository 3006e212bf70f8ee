"""The rule API: what a rule sees (:class:`RuleContext`), the registry, and the building blocks
every family of rules is written with (broadcasting ``merge``, per-axis ``spatial`` geometry,
``reduce_dims``). Plugin authors import these from :mod:`torchprobe.rf.rules`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any

import torch
from torch import nn

from torchprobe.engine.torch_utils import tensors_in
from torchprobe.rf.axis import AxisMap
from torchprobe.rf.state import RFState, TensorRF, UnknownRF

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
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[index] if index < len(self.args) else default

    @property
    def tensors(self) -> list[torch.Tensor]:
        """Every tensor among the arguments, in order (inside lists too)."""
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

    def register(self, *targets: str | Callable[..., Any] | type[nn.Module]) -> Callable[[Rule], Rule]:
        """Decorator: ``@register_rf_rule("my_op", MyLayer)``; strings and functions name ops."""

        def decorate(rule: Rule) -> Rule:
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
        return next((self.modules[c] for c in type(module).__mro__ if c in self.modules), None)

    def _load_entry_points(self) -> None:
        if not self._loaded_entry_points:
            self._loaded_entry_points = True
            for ep in entry_points(group=RULE_ENTRY_POINT_GROUP):
                ep.load()


RULES = RuleRegistry()
register_rf_rule = RULES.register


@cache
def is_pointwise_aten(name: str) -> bool:
    """PyTorch tags elementwise ATen ops ``pointwise``: those keep every unit's RF as is."""
    packet = getattr(torch.ops.aten, name, None)
    if packet is None or not hasattr(packet, "overloads"):
        return False
    return any(torch.Tag.pointwise in getattr(packet, o).tags for o in packet.overloads())


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
    carried = [(t, s) for t, s in known if isinstance(s, TensorRF)]
    n_axes = len(carried[0][1].axes)
    axes, dims, aligned = [], [], all(s.aligned for _, s in carried)
    for a in range(n_axes):
        merged: AxisMap | None = None
        dim: int | None = None
        grids = set()
        for t, s in carried:
            m, d = s.axes[a], s.dims[a]
            if d is not None and (-d > t.dim() or t.shape[d] == 1) and -d <= len(out_shape) and out_shape[d] != 1:
                m = m.reduced()
            elif d is not None:
                grids.add((m.jump, m.start))
            dim = d if dim is None else dim
            units = 1 if dim is None or -dim > len(out_shape) else out_shape[dim]
            merged = m if merged is None else merged.union(m, units)
        aligned = aligned and len(grids) <= 1
        assert merged is not None  # carried is not empty
        axes.append(merged.broadcast(units))
        dims.append(dim)
    return TensorRF(tuple(axes), tuple(dims), aligned)


def pointwise(ctx: RuleContext) -> RuleResult:
    """Elementwise ops, activations, normalisations, dropout: a merge of the tensor operands."""
    tensors = ctx.tensors
    return merge(tensors, [ctx.state_of(t) for t in tensors], ctx.out_shape)


def spatial(
    ctx: RuleContext,
    n: int,
    geometry: Callable[[int, AxisMap, int, int], AxisMap],
    mixes_channels: bool = False,
) -> RuleResult:
    """Apply ``geometry(i, map, in_units, out_units)`` to the last ``n`` dims (spatial axis ``i``)."""
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    in_shape, out_shape = tuple(ctx.input.shape), ctx.out_shape

    def move(a: int, m: AxisMap, d: int | None) -> tuple[AxisMap, int | None]:
        if d is None:
            return m, None
        if -n <= d <= -1:
            return geometry(n + d, m, in_shape[d], out_shape[d]), d
        return state.reduced(a, keep_dim=True) if mixes_channels else (m, d)

    return state.map_axes(move)


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
    """Units combined along ``dims``: an axis there sees its whole hull; others move left."""
    if not isinstance(state, TensorRF):
        return state

    def move(d: int) -> int | None:
        if d in dims:
            return d if keepdim else None
        return d if keepdim else d + sum(1 for r in dims if r > d)

    kept = state.with_dims(move)
    if keepdim:  # the reduced axes keep their (now size-1) dim
        return kept.map_axes(lambda a, m, d: state.reduced(a, keep_dim=True) if d in dims else (m, d))
    return kept
