"""What ``torchprobe.receptive_field`` returns: one entry per module call, plus the verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from torchprobe.rf.axis import AxisMap
from torchprobe.rf.probe import LayerRecord
from torchprobe.rf.state import TensorRF, UnknownRF
from torchprobe.rf.support import Support, covers, joint_span, seen

RF_SCHEMA = "torchprobe.rf/1"


@dataclass(frozen=True)
class LayerRF:
    """Receptive field of one module call (or functional op), per spatial axis of the input.

    ``rf``/``jump``/``start`` are None on axes where the RF is unknown or the output does not
    depend on the input at all (``depends`` is False then).
    """

    name: str
    type: str
    call: int
    depth: int
    kind: str
    output_shape: tuple[int, ...] | None
    rf: tuple[int | None, ...]
    jump: tuple[Fraction | None, ...]
    start: tuple[Fraction | None, ...]
    is_global: tuple[bool, ...]
    aligned: bool
    uniform: bool
    unknown: str | None = None
    leaf: bool = True
    maps: tuple[AxisMap, ...] | None = None  # the exact span maps, for per-unit questions
    units: tuple[int, ...] = ()

    def span(self, unit: int | Sequence[int], clip: bool = True) -> tuple[tuple[int, int] | None, ...]:
        """Input pixels ``(first, last)`` per axis that output ``unit`` depends on; with ``clip``
        False, its span by the RF convention (padding included). None where it sees nothing."""
        factors = self.factors
        units = (unit,) * len(self.maps) if isinstance(unit, int) else tuple(unit)
        if clip:
            return joint_span(factors, units)
        return tuple(m.span(u) for m, u in zip(self.maps, units))

    def seen(self, axis: int) -> tuple[int, int] | None:
        """The pixels of ``axis`` that some unit depends on (their hull)."""
        return seen(self.factors, axis)

    @property
    def factors(self) -> list[tuple[Support, ...]]:
        """The output's support as terms: ``factors[t][a]`` (see :mod:`torchprobe.rf.support`)."""
        if self.maps is None:
            raise ValueError(f"the receptive field of {self.name or '(model)'} is unknown")
        return list(zip(*(m.terms for m in self.maps)))

    @property
    def known(self) -> bool:
        return self.unknown is None and all(r is not None for r in self.rf)

    @classmethod
    def from_record(cls, record: LayerRecord, n_axes: int) -> LayerRF:
        state = record.state
        blank = (None,) * n_axes
        common = (record.name, record.type, record.call, record.depth, record.kind, record.output_shape)
        if not isinstance(state, TensorRF):
            unknown = state.reason if isinstance(state, UnknownRF) else None
            return cls(*common, blank, blank, blank, (False,) * n_axes, True, True, unknown, record.leaf)
        shape = record.output_shape or ()
        units = [state.units(a, shape) for a in range(n_axes)]
        return cls(
            *common,
            rf=tuple(m.rf or None for m in state.axes),
            jump=tuple(m.jump for m in state.axes),
            start=tuple(m.start for m in state.axes),
            is_global=tuple(covers(state.factors, a, m.size) for a, m in enumerate(state.axes)),
            aligned=state.aligned,
            uniform=all(m.uniform for m in state.axes),
            leaf=record.leaf,
            maps=state.axes,
            units=tuple(units),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "call": self.call,
            "kind": self.kind,
            "depth": self.depth,
            "output_shape": list(self.output_shape) if self.output_shape is not None else None,
            "rf": list(self.rf),
            "jump": [_number(j) for j in self.jump],
            "start": [_number(s) for s in self.start],
            "global": list(self.is_global),
            "aligned": self.aligned,
            "uniform": self.uniform,
            "unknown": self.unknown,
        }


def _number(value: Fraction | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if value.denominator == 1 else float(value)


@dataclass(frozen=True)
class RFResult:
    """Receptive fields of one traced forward pass, in execution order."""

    input_shape: tuple[int, ...]
    layers: tuple[LayerRF, ...]
    diagnostics: tuple[str, ...]
    device: str
    fallback_reason: str | None = None

    @property
    def spatial_size(self) -> tuple[int, ...]:
        return self.input_shape[1:]

    @property
    def output(self) -> LayerRF:
        """The whole model's entry: the root module's call (the last one to return)."""
        roots = [layer for layer in self.layers if layer.kind == "module" and layer.depth == 0]
        return roots[-1] if roots else self.layers[-1]

    def layer(self, name: str, call: int = 0) -> LayerRF:
        for layer in self.layers:
            if layer.name == name and layer.call == call:
                return layer
        raise KeyError(f"no layer {name!r} (call {call}); layers: {', '.join(dict.fromkeys(l.name for l in self.layers))}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RF_SCHEMA,
            "input_shape": list(self.input_shape),
            "device": self.device,
            "fallback_reason": self.fallback_reason,
            "layers": [layer.to_dict() for layer in self.layers],
            "diagnostics": list(self.diagnostics),
        }

    def __rich__(self) -> Any:
        from torchprobe.report import rf_table

        return rf_table(self)

    def __str__(self) -> str:
        from torchprobe.report import render_text

        return render_text(self)
