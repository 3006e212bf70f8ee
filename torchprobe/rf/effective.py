"""The effective receptive field (ERF, Luo et al. 2016): how the gradient of one output unit
spreads over the input pixels its theoretical receptive field holds, with the weights as they are.

For each chosen layer, on a copy of the model in eval mode (no dropout, BatchNorm on its running
statistics, which the copy's forward leaves alone, as it leaves the model alone): the unit's output
elements (every channel of the centre unit by default) are summed, its gradient with respect to
the input is taken for every sample of the batch at once (eval-mode samples are independent), and
the map is ``mean over the batch of sum over the input's channels of |d unit / d pixel|``.

Summary figures, from the map ``M`` (mass ``S = M.sum()``) and the theoretical span of the same
unit (``LayerRF.span(unit)``, clipped to the image; its pixels are the box of area ``A``):

- ``inside``: the share of ``S`` within the box (1 when the theory holds: a gradient outside the
  span is structurally zero);
- ``area50`` / ``area95``: the smallest set of pixels holding 50% / 95% of ``S`` (the largest
  values first), as a share of ``A``;
- ``centroid``: the mass-weighted mean pixel per axis; ``offset``: the centroid minus the
  theoretical centre of the unit (the middle of its unclipped span, ``start + unit * jump``);
- ``std``: the mass-weighted standard deviation per axis;
- ``extent95``: per axis, the pixels from the 2.5% to the 97.5% quantile of the axis's marginal
  mass (``size95`` their count): the central interval holding 95% of it.

Every figure is None when ``S`` is zero (the unit does not depend on the input, or every path to
it is dead on this batch).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchprobe.display import Displayable
from torchprobe.engine.torch_utils import private_rng, tensors_in
from torchprobe.engine.wrappers import unwrap
from torchprobe.errors import UsageError
from torchprobe.rf.layouts import input_layout
from torchprobe.rf.result import LayerRF, RFResult, _number

ERF_SCHEMA = "torchprobe.erf/1"

UnitArg = int | Sequence[int] | Mapping[str, int | Sequence[int]] | None

Span = tuple[int, int]


@dataclass(frozen=True)
class LayerERF:
    """The ERF of one unit of one module call, beside its theoretical RF (``theory``)."""

    theory: LayerRF
    unit: tuple[int, ...]  # one index per dim of ``unit_dims``
    unit_dims: tuple[int, ...]  # the output dims the unit indexes (the others are summed over)
    span: tuple[Span | None, ...] | None  # the theoretical span, clipped; None: the RF is unknown
    centre: tuple[float | None, ...] | None  # the theoretical centre of the unit (unclipped span's middle)
    mass: float  # the map's sum
    map: torch.Tensor = field(compare=False, repr=False)  # float64, the input's spatial shape
    inside: float | None = None
    area50: float | None = None
    area95: float | None = None
    centroid: tuple[float, ...] | None = None
    offset: tuple[float | None, ...] | None = None
    std: tuple[float, ...] | None = None
    extent95: tuple[Span, ...] | None = None

    @property
    def name(self) -> str:
        return self.theory.name

    @property
    def box_area(self) -> int | None:
        """Pixels in the clipped theoretical span."""
        if self.span is None or any(s is None for s in self.span):
            return None
        return math.prod(s[1] - s[0] + 1 for s in self.span if s is not None)

    @property
    def size95(self) -> tuple[int, ...] | None:
        return None if self.extent95 is None else tuple(b - a + 1 for a, b in self.extent95)

    def window(self) -> tuple[tuple[int, ...], torch.Tensor]:
        """``(origin, values)``: the part of the map inside the hull of the theoretical span and
        the map's non-zero pixels; the map is zero outside it."""
        n = self.map.dim()
        lo, hi = [], []
        support = self.map > 0
        for a in range(n):
            ends = [s for s in (_extent(support, a), None if self.span is None else self.span[a]) if s is not None]
            lo.append(min((s[0] for s in ends), default=0))
            hi.append(max((s[1] for s in ends), default=-1))
        values = self.map[tuple(slice(a, b + 1) for a, b in zip(lo, hi))]
        return tuple(lo), values

    def to_dict(self) -> dict[str, Any]:
        origin, values = self.window()
        return {
            "name": self.theory.name,
            "type": self.theory.type,
            "call": self.theory.call,
            "unit": list(self.unit),
            "unit_dims": list(self.unit_dims),
            "theory": {
                "rf": list(self.theory.rf),
                "jump": [_number(j) for j in self.theory.jump],
                "start": [_number(s) for s in self.theory.start],
                "span": None if self.span is None else [None if s is None else list(s) for s in self.span],
                "centre": None if self.centre is None else list(self.centre),
                "area": self.box_area,
            },
            "mass": self.mass,
            "inside": self.inside,
            "area50": self.area50,
            "area95": self.area95,
            "centroid": None if self.centroid is None else list(self.centroid),
            "offset": None if self.offset is None else list(self.offset),
            "std": None if self.std is None else list(self.std),
            "extent95": None if self.extent95 is None else [list(e) for e in self.extent95],
            "map": {"origin": list(origin), "values": values.tolist()},
        }


@dataclass(frozen=True)
class ERFResult(Displayable):
    """Effective receptive fields of chosen layers on one batch of inputs."""

    input_shape: tuple[int, ...]  # the batch's, batch dim first
    axis_names: tuple[str, ...]
    spatial_size: tuple[int, ...]
    inputs: str  # "data", or "random normal (seed N)"
    device: str
    layers: tuple[LayerERF, ...]
    example: torch.Tensor | None = field(default=None, compare=False, repr=False)  # the first sample, on the CPU

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    @property
    def random_inputs(self) -> bool:
        return self.inputs != "data"

    def layer(self, name: str) -> LayerERF:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r}; layers: {', '.join(layer.name for layer in self.layers)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": ERF_SCHEMA,
            "input_shape": list(self.input_shape),
            "axes": list(self.axis_names),
            "inputs": self.inputs,
            "batch": self.batch,
            "device": self.device,
            "layers": [layer.to_dict() for layer in self.layers],
        }


def random_inputs(size: Sequence[int], batch: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A batch of standard normal inputs from a private generator (the global RNG is left alone)."""
    if batch < 1:
        raise UsageError(f"batch must be at least 1, got {batch}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *size), generator=generator, dtype=dtype)


def effective_receptive_field(
    model: nn.Module,
    inputs: torch.Tensor,
    theory: RFResult,
    layers: Sequence[str],
    *,
    unit: UnitArg = None,
    call: int = 0,
    device: str = "auto",
    layout: str | None = None,
    source: str = "data",
) -> ERFResult:
    """The ERF of ``unit`` (None: the centre unit) of each of ``layers`` on the batch ``inputs``
    (batch dim first, its dims named by ``layout`` as for ``theory``), next to ``theory``'s row of
    each layer. ``device`` "auto" computes where the model's parameters are."""
    model = unwrap(model)
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point() or inputs.dim() < 2:
        raise UsageError("the ERF needs a floating tensor of inputs with a batch dim first (N, C, H, W)")
    if not layers:
        raise UsageError("no layer given: name at least one module (\"\" for the whole model)")
    rows = [_row(theory, name, call) for name in layers]
    spatial = [1 + d for d in input_layout(layout, [inputs.shape[1:]], 0).spatial]
    run_on = _device(model, device)
    dtype = _dtype(model)
    clone = copy.deepcopy(model).eval().to(device=run_on, dtype=dtype)
    for param in clone.parameters():
        param.requires_grad_(False)
    modules = dict(clone.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise UsageError(f"no module named {missing[0]!r} in {type(model).__name__}")
    x = inputs.detach().to(device=run_on, dtype=dtype).clone().requires_grad_(True)
    outputs = _outputs(clone, x, [modules[name] for name in layers], call)
    results = []
    for name, row in zip(layers, rows):
        output = outputs[name]
        unit_dims = row.unit_dims if row.known else _conv_unit_dims(output.dim(), len(spatial))
        sizes = tuple(output.shape[d] for d in unit_dims)
        chosen = _unit(unit, name, sizes)
        grad = _gradient(output, unit_dims, chosen, x)
        channels = [d for d in range(1, grad.dim()) if d not in spatial]
        heat = grad.abs().double()
        heat = (heat.sum(channels) if channels else heat).mean(0)  # per sample over the channels, then the batch
        results.append(_layer_erf(row, chosen, unit_dims, heat.cpu()))
    example = inputs[0].detach().cpu() if inputs.shape[0] else None
    return ERFResult(tuple(inputs.shape), theory.axis_names, theory.spatial_size, source, run_on, tuple(results),
                     example)


def _row(theory: RFResult, name: str, call: int) -> LayerRF:
    for layer in theory.layers:
        if layer.name == name and layer.call == call and layer.kind == "module":
            return layer
    try:
        return theory.layer(name, call)
    except KeyError as error:
        raise UsageError(str(error.args[0])) from error


def _device(model: nn.Module, device: str) -> str:
    if device == "auto":
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type != "meta":
                return str(tensor.device)
        return "cpu"
    if device == "meta" or (device != "cpu" and not device.startswith("cuda")):
        raise UsageError(f"bad device {device!r} for the ERF: expected auto, cpu or cuda (it needs real values)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("device cuda: CUDA is not available on this machine")
    return device


def _dtype(model: nn.Module) -> torch.dtype:
    """The model's floating dtype, at least float32 (half precision gradients underflow)."""
    for param in [*model.parameters(), *model.buffers()]:
        if param.is_floating_point():
            return torch.float64 if param.dtype == torch.float64 else torch.float32
    return torch.float32


class _Captured(BaseException):  # not Exception: a model that catches those must not swallow it
    """Ends the forward once every chosen output exists."""


def _outputs(clone: nn.Module, x: torch.Tensor, targets: list[nn.Module], call: int) -> dict[str, torch.Tensor]:
    names = {id(m): name for name, m in clone.named_modules()}
    wanted = {id(m) for m in targets}
    captured: dict[str, torch.Tensor] = {}
    calls: dict[int, int] = {}

    def capture(module: nn.Module, args: Any, output: Any) -> None:
        seen = calls.get(id(module), 0)
        calls[id(module)] = seen + 1
        if seen == call:
            tensors = tensors_in(output)
            if not tensors:
                raise UsageError(f"module {names[id(module)]!r} returned no tensor")
            captured[names[id(module)]] = tensors[0]
            if len(captured) == len(wanted):
                raise _Captured  # the rest of the forward cannot change these outputs

    handles = [m.register_forward_hook(capture) for m in {id(m): m for m in targets}.values()]
    try:
        with private_rng(str(x.device)), torch.enable_grad():
            clone(x)
    except _Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    for m in targets:
        if names[id(m)] not in captured:
            raise UsageError(f"module {names[id(m)]!r} was called {calls.get(id(m), 0)} time(s); there is no "
                             f"call {call}")
    return captured


def _conv_unit_dims(ndim: int, n_axes: int) -> tuple[int, ...]:
    """A layer whose RF is unknown: a conv net's output (batch, channels, one dim per axis)."""
    return tuple(range(ndim - n_axes, ndim)) if ndim >= 2 + n_axes else ()


def _unit(unit: UnitArg, name: str, sizes: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(unit, Mapping):
        unit = unit.get(name)
    if unit is None:
        return tuple((n - 1) // 2 for n in sizes)
    values = (unit,) * len(sizes) if isinstance(unit, int) else tuple(unit)
    if len(values) != len(sizes):
        raise UsageError(f"unit {values} of {name or '(model)'} needs one index per unit dim (sizes {sizes})")
    for v, n in zip(values, sizes):
        if not -n <= v < n:
            raise UsageError(f"unit {values} of {name or '(model)'} is out of range for sizes {sizes}")
    return tuple(v % n for v, n in zip(values, sizes))


def _gradient(output: torch.Tensor, unit_dims: tuple[int, ...], unit: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """d(sum of the unit's elements, each sample's own) / d input, for every sample."""
    if not output.requires_grad or not output.is_floating_point():
        return torch.zeros_like(x)
    index: list[Any] = [slice(None)] * output.dim()
    for d, v in zip(unit_dims, unit):
        index[d] = v
    (grad,) = torch.autograd.grad(output[tuple(index)].sum(), x, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad.detach()


def _extent(support: torch.Tensor, axis: int) -> Span | None:
    other = [d for d in range(support.dim()) if d != axis]
    hits = support.any(dim=other) if other else support
    positions = hits.nonzero().flatten().tolist()
    return (positions[0], positions[-1]) if positions else None


def _layer_erf(row: LayerRF, unit: tuple[int, ...], unit_dims: tuple[int, ...], heat: torch.Tensor) -> LayerERF:
    span: tuple[Span | None, ...] | None = None
    centre: tuple[float | None, ...] | None = None
    if row.known and row.maps is not None:
        span = row.span(unit)
        centre = tuple(None if s is None else (s[0] + s[1]) / 2 for s in row.span(unit, clip=False))
    mass = float(heat.sum())
    figures = _figures(heat, span, centre) if mass > 0 else {}
    return LayerERF(row, unit, unit_dims, span, centre, mass, heat, **figures)


def _figures(heat: torch.Tensor, span: tuple[Span | None, ...] | None,
             centre: tuple[float | None, ...] | None) -> dict[str, Any]:
    total = heat.sum()
    box = span is not None and all(s is not None for s in span)
    area = math.prod(s[1] - s[0] + 1 for s in span if s is not None) if box and span is not None else heat.numel()
    inside = None
    if box and span is not None:
        inside = float(heat[tuple(slice(s[0], s[1] + 1) for s in span if s is not None)].sum() / total)
    ordered = heat.flatten().sort(descending=True).values.cumsum(0) / total

    def share(q: float) -> float:
        return (int((ordered < q).sum()) + 1) / area  # pixels until the mass reaches q

    centroid, std, extent = [], [], []
    for a in range(heat.dim()):
        marginal = heat.sum([d for d in range(heat.dim()) if d != a]) / total
        pos = torch.arange(marginal.numel(), dtype=torch.float64)
        mean = float((pos * marginal).sum())
        centroid.append(mean)
        std.append(math.sqrt(max(float(((pos - mean) ** 2 * marginal).sum()), 0.0)))
        cum = marginal.cumsum(0)
        extent.append((int((cum < 0.025).sum()), min(int((cum < 0.975).sum()), marginal.numel() - 1)))
    offset = None if centre is None else tuple(None if c is None else m - c for m, c in zip(centroid, centre))
    return {"inside": inside, "area50": share(0.5), "area95": share(0.95), "centroid": tuple(centroid),
            "offset": offset, "std": tuple(std), "extent95": tuple(extent)}
