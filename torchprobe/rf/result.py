"""What ``torchprobe.receptive_field`` returns: one entry per module call, plus the verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from torchprobe.display import Displayable
from torchprobe.engine.events import CallSite
from torchprobe.notes import Note, fallback_notes
from torchprobe.rf.axis import AxisMap
from torchprobe.rf.placement import NO_UNIT, Placement
from torchprobe.rf.probe import LayerRecord
from torchprobe.rf.state import TensorRF, UnknownRF
from torchprobe.rf.support import Support, covers, fused, joint_span, seen

RF_SCHEMA = "torchprobe.rf/2"
Figures = dict[tuple[AxisMap, ...], dict[str, Any]]  # what a row shows of its maps, by maps


@dataclass(frozen=True)
class LayerRF(CallSite):
    """Receptive field of one module call (or functional op), per spatial axis of the input.

    ``rf``/``jump``/``start`` are None on axes where the RF is unknown or the output does not
    depend on the input at all.
    """

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
    places: tuple[Placement, ...] = ()  # where each axis's units are in the output
    unit_dims: tuple[int, ...] = ()  # the output dims that tell units apart (batch dim 0 included)
    units: tuple[int, ...] = ()  # their sizes

    @property
    def axis_dims(self) -> tuple[tuple[int, ...], ...]:
        """Per input axis, the output dims that address it (none once it is reduced)."""
        ndim = len(self.output_shape or ())
        return tuple(tuple(d + ndim for d in p.dims) for p in self.places)

    def span(self, unit: int | Sequence[int], clip: bool = True) -> tuple[tuple[int, int] | None, ...]:
        """Input pixels ``(first, last)`` per axis that output ``unit`` depends on: ``unit`` is an
        index per dim of ``unit_dims`` (an int: the same on each; other dims are summed over, as
        channels). With ``clip`` False, its span by the RF convention (padding included). None
        where it sees nothing."""
        maps = self.known_maps
        index = self._index(unit)
        units = [p.unit(index) for p in self.places]
        if clip:
            return joint_span(self.factors, units)
        return tuple(None if u == NO_UNIT else m.span(u) for m, u in zip(maps, units))

    def _index(self, unit: int | Sequence[int]) -> dict[int, int]:
        values = (unit,) * len(self.unit_dims) if isinstance(unit, int) else tuple(unit)
        if len(values) != len(self.unit_dims):
            raise ValueError(f"unit {tuple(values)} of {self.name or '(model)'} needs one index per unit dim "
                             f"{self.unit_dims} of its output {self.output_shape}")
        ndim = len(self.output_shape or ())
        return {d - ndim: v for d, v in zip(self.unit_dims, values)}

    def seen(self, axis: int) -> tuple[int, int] | None:
        """The pixels of ``axis`` that some unit depends on (their hull)."""
        return seen(self.factors, axis)

    def unseen(self, axis: int) -> list[tuple[int, int]] | None:
        """Border pixel ranges ``(first, last)`` of ``axis`` that no unit sees (floor division in an
        unpadded strided layer drops some); None when no unit sees any pixel of it."""
        pixels = self.seen(axis)
        if pixels is None:
            return None
        lo, hi = pixels
        last = self.known_maps[axis].size - 1
        return ([(0, lo - 1)] if lo > 0 else []) + ([(hi + 1, last)] if hi < last else [])

    @property
    def factors(self) -> list[tuple[Support, ...]]:
        """The output's support as terms: ``factors[t][a]`` (see :mod:`torchprobe.rf.support`)."""
        return list(zip(*(m.terms for m in self.known_maps)))

    @property
    def known_maps(self) -> tuple[AxisMap, ...]:
        """The span maps; a ValueError for a layer whose RF is unknown."""
        if self.maps is None:
            raise ValueError(f"the receptive field of {self.name or '(model)'} is unknown")
        return self.maps

    @property
    def known(self) -> bool:
        return self.unknown is None and all(r is not None for r in self.rf)

    @classmethod
    def rows(cls, records: Sequence[LayerRecord], n_axes: int) -> tuple[LayerRF, ...]:
        """The rows of a pass's records, what their maps give worked out once per distinct maps."""
        figures: Figures = {}
        return tuple(cls.from_record(r, n_axes, figures) for r in records)

    @classmethod
    def from_record(cls, record: LayerRecord, n_axes: int, figures: Figures) -> LayerRF:
        """The row of one record. ``figures``: a cache of what maps give, by maps (a container's
        row and its last child's hold the same state, a permutation keeps the maps: work them
        out once)."""
        state = record.state
        blank = (None,) * n_axes
        site = record.site_dict()
        if not isinstance(state, TensorRF):
            unknown = state.reason if isinstance(state, UnknownRF) else None
            return cls(**site, output_shape=record.output_shape, rf=blank, jump=blank, start=blank,
                       is_global=(False,) * n_axes, aligned=True, uniform=True, unknown=unknown, leaf=record.leaf)
        shape = record.output_shape or ()
        unit_dims = tuple(d + len(shape) for d in state.unit_dims())
        known = figures.get(state.axes)
        if known is None:
            known = figures[state.axes] = _figures(state.axes)
        return cls(**site, output_shape=record.output_shape, **known, aligned=state.aligned, leaf=record.leaf,
                   places=state.places, unit_dims=unit_dims, units=tuple(shape[d] for d in unit_dims))

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.site_dict(),
            "output_shape": list(self.output_shape) if self.output_shape is not None else None,
            "rf": list(self.rf),
            "jump": [_number(j) for j in self.jump],
            "start": [_number(s) for s in self.start],
            "global": list(self.is_global),
            "aligned": self.aligned,
            "uniform": self.uniform,
            "unknown": self.unknown,
        }


def _figures(axes: tuple[AxisMap, ...]) -> dict[str, Any]:
    """What a row shows of a state's maps, wherever their units are and whatever the output's shape."""
    factors = fused(list(zip(*(m.terms for m in axes))))  # the same support, in fewest terms: once for every axis
    return {
        "rf": tuple(m.rf or None for m in axes),
        "jump": tuple(m.jump for m in axes),
        "start": tuple(m.start for m in axes),
        "is_global": tuple(covers(factors, a, m.size) for a, m in enumerate(axes)),
        "uniform": all(m.uniform for m in axes),
        "maps": axes,
    }


def _number(value: Fraction | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if value.denominator == 1 else float(value)


@dataclass(frozen=True)
class AxisStep:
    """How one layer changed the RF along one axis: before (``*_in``) and after, and the effective
    kernel ``k_eff = (rf - rf_in) / jump_in + 1`` when the layer is a uniform sliding window."""

    rf_in: int | None
    jump_in: Fraction | None
    start_in: Fraction | None
    rf: int | None
    jump: Fraction | None
    start: Fraction | None
    k_eff: Fraction | None

    @property
    def reduced(self) -> bool:
        """Every unit sees the whole axis (a global pool or a flatten)."""
        return self.jump == 0


@dataclass(frozen=True)
class RFStep:
    """A leaf layer that changed the RF, with its change per axis."""

    layer: LayerRF
    axes: tuple[AxisStep, ...]


@dataclass(frozen=True)
class RFResult(Displayable):
    """Receptive fields of one traced forward pass, in execution order."""

    input_shape: tuple[int, ...]
    layers: tuple[LayerRF, ...]
    diagnostics: tuple[Note, ...]
    device: str
    fallback_reason: str | None = None
    axis_names: tuple[str, ...] = ()  # the spatial letters of the input's layout, in order
    spatial_size: tuple[int, ...] = ()  # the input's size along each of them

    @property
    def notes(self) -> tuple[Note, ...]:
        """The rules' notes, then the fallback to real tensors when there was one."""
        return self.diagnostics + fallback_notes(self.device, self.fallback_reason)

    @property
    def output(self) -> LayerRF:
        """The whole model's entry: the root module's call (the last one to return)."""
        roots = [layer for layer in self.layers if layer.kind == "module" and layer.depth == 0]
        return roots[-1] if roots else self.layers[-1]

    def layer(self, name: str, call: int = 0) -> LayerRF:
        for layer in self.layers:
            if layer.name == name and layer.call == call:
                return layer
        names = ", ".join(dict.fromkeys(layer.name for layer in self.layers))
        raise KeyError(f"no layer {name!r} (call {call}); layers: {names}")

    def steps(self) -> list[RFStep]:
        """Each leaf layer that changed rf, jump or start, with the formula's terms per axis:
        ``rf = rf_in + (k_eff - 1) * jump_in``, ``jump = jump_in * stride``."""
        n = len(self.spatial_size)
        previous: tuple[tuple, bool] = (((1,) * n, (Fraction(1),) * n, (Fraction(0),) * n), True)  # the pixels
        steps = []
        for layer in self.layers:
            if not layer.known or not layer.leaf:
                continue
            numbers = (layer.rf, layer.jump, layer.start)
            if numbers != previous[0]:
                axes = []
                for r0, j0, s0, r1, j1, s1 in zip(*previous[0], *numbers):
                    sliding = bool(j1) and bool(j0) and layer.uniform and previous[1]
                    k_eff = Fraction(r1 - r0, 1) / j0 + 1 if sliding else None
                    axes.append(AxisStep(r0, j0, s0, r1, j1, s1, k_eff))
                steps.append(RFStep(layer, tuple(axes)))
            previous = (numbers, layer.uniform)
        return steps

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RF_SCHEMA,
            "input_shape": list(self.input_shape),
            "axes": list(self.axis_names),
            "device": self.device,
            "fallback_reason": self.fallback_reason,
            "layers": [layer.to_dict() for layer in self.layers],
            "diagnostics": [note.to_dict() for note in self.diagnostics],
        }
