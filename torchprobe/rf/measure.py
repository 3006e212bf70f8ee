"""The independent check: measure a unit's receptive field with gradients instead of geometry.

On a float64 copy of the model every conv/linear weight becomes a positive averaging constant
and every bias zero, normalisations and activations become the identity, max pooling becomes
average pooling of the same geometry and products become sums (functional calls too, through a
function mode). Fed all-ones, every activation is non-negative and sums of them are zero only
where no pixel reaches, so the gradient of one output unit is non-zero exactly on the input
pixels that can change it: its support, clipped to the image.

Products become sums because a factor that depends on no pixel (zero padding, a transposed
conv's hole without bias) is zero in this copy but a generic constant in a real model: the
dependence on the other factor is structural, as the analytic rules count it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from torchprobe.engine.inputs import batch_sizes
from torchprobe.engine.torch_utils import canonical_op_name, tensors_in
from torchprobe.engine.wrappers import unwrap
from torchprobe.errors import UsageError
from torchprobe.rf.layouts import LayoutArg, input_layout
from torchprobe.rf.rules.core import per_axis

NORMALISATIONS = {"batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm", "local_response_norm"}
# Saturating or gated activations can have a zero gradient where sums grow (ReLU6 past 6 in a
# residual stack): the averaging copy passes their input through instead, like the norms.
ACTIVATIONS = {
    "relu", "relu6", "hardtanh", "hardsigmoid", "hardswish", "sigmoid", "tanh", "gelu", "silu", "mish", "elu",
    "selu", "celu", "leaky_relu", "rrelu", "prelu", "softplus", "softsign", "logsigmoid", "tanhshrink",
    "hardshrink", "softshrink", "threshold",
}
PASSED_THROUGH = NORMALISATIONS | ACTIVATIONS


@dataclass(frozen=True)
class MeasuredRF:
    """Per input spatial axis, the first and last pixel the unit depends on (None: no pixel)."""

    spans: tuple[tuple[int, int] | None, ...]
    support: torch.Tensor  # bool, the input's spatial shape: exactly the pixels that matter

    @property
    def rf(self) -> tuple[int | None, ...]:
        return tuple(None if s is None else s[1] - s[0] + 1 for s in self.spans)


def measure_receptive_field(
    model: nn.Module,
    input_size: Sequence[int] | Sequence[Sequence[int]],
    layer: str,
    unit: int | Sequence[int],
    *,
    call: int = 0,
    input_index: int = 0,
    layout: LayoutArg = None,
    unit_dims: Sequence[int] | None = None,
) -> MeasuredRF:
    """Gradient-measured support of output ``unit`` of module ``layer`` (qualified name, "" for
    the whole model; ``call`` picks one call of a shared module), per spatial axis of ``layout``.

    ``unit`` indexes the output dims ``unit_dims`` (dim 0 is the batch; the other dims are summed
    over, as channels are): pass a row's ``LayerRF.unit_dims``. Without them ``unit`` is one index
    per spatial axis on the output's last dims, after a channel dim (a conv net's layout)."""
    model = unwrap(model)
    sizes = batch_sizes(input_size)
    spatial = [1 + d for d in input_layout(layout, [s[1:] for s in sizes], input_index).spatial]
    averaging = _averaging_copy(model)
    target = dict(averaging.named_modules()).get(layer)
    if target is None:
        raise UsageError(f"no module named {layer!r} in {type(model).__name__}")
    captured: list[Any] = []
    calls = 0

    def capture(module: nn.Module, args: Any, output: Any) -> None:
        nonlocal calls
        if calls == call:
            captured.append(output)
            raise _Captured  # the rest of the forward cannot change this output
        calls += 1

    inputs = [torch.ones(s, dtype=torch.float64, requires_grad=True) for s in sizes]
    handle = target.register_forward_hook(capture)
    try:
        with _AveragingMode(), torch.random.fork_rng(devices=[]):
            averaging(*inputs)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise UsageError(f"module {layer!r} was called {calls} time(s); there is no call {call}")
    output = tensors_in(captured[0])[0]
    output[_unit_index(output.dim(), unit, unit_dims, len(spatial))].sum().backward()
    grad = inputs[input_index].grad
    assert grad is not None  # the input requires grad and the output depends on it
    others = [d for d in range(grad.dim()) if d not in spatial]
    support = grad.abs().sum(others) > 0 if others else grad.abs() > 0
    return MeasuredRF(tuple(_extent(support, a) for a in range(len(spatial))), support)


def _unit_index(ndim: int, unit: int | Sequence[int], unit_dims: Sequence[int] | None, n_axes: int) -> Any:
    """The output elements that make up ``unit``."""
    if unit_dims is None:  # a conv net's output: (batch, channels, one dim per axis), or less once pooled
        values = per_axis(unit, n_axes)
        return (0, slice(None), *values) if ndim >= 2 + n_axes else 0
    values = (unit,) * len(unit_dims) if isinstance(unit, int) else tuple(unit)
    if len(values) != len(unit_dims):
        raise UsageError(f"unit {values} needs one index per unit dim {tuple(unit_dims)}")
    index: list[int | slice] = [slice(None)] * ndim
    for d, v in zip(unit_dims, values):
        index[d] = v
    return tuple(index)


def _extent(support: torch.Tensor, axis: int) -> tuple[int, int] | None:
    other = [d for d in range(support.dim()) if d != axis]
    hits = support.any(dim=other) if other else support
    positions = hits.nonzero().flatten().tolist()
    return (positions[0], positions[-1]) if positions else None


def _averaging_copy(model: nn.Module) -> nn.Module:
    """A float64 copy whose weights average with positive constants and whose biases are zero."""
    clone = copy.deepcopy(model).to(dtype=torch.float64, device="cpu").eval()
    with torch.no_grad():
        for module in clone.modules():
            for name, param in module.named_parameters(recurse=False):
                if name == "bias":
                    param.zero_()
                elif name == "weight" and param.dim() >= 2:
                    param.fill_(1.0 / param[0].numel())
                else:
                    param.fill_(1.0)
    return clone


def _in_float64(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64:
        return value.double()
    return value


class _Captured(BaseException):  # not Exception: a model that catches those must not swallow it
    """Ends the measurement's forward once the measured output exists."""


class _AveragingMode(TorchFunctionMode):
    """Max pooling as average pooling of the same geometry, products of floats as sums; normalisations and
    activations as the identity (in-place ones too: the input comes back unchanged)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        args, kwargs = tree_map(_in_float64, (args, kwargs or {}))  # tensors the model makes (RAFT's grid) too
        name, inplace = canonical_op_name(func)
        if name in PASSED_THROUGH:
            return args[0] if args else kwargs["input"]
        if name == "mul" and any(t.is_floating_point() for t in tensors_in((args, kwargs))):  # not index arithmetic
            return (torch.Tensor.add_ if inplace else torch.add)(*args, **kwargs)
        if name.startswith("max_pool"):
            return _with_indices(_average_pool(*args, **kwargs), name, kwargs)
        if name.startswith("adaptive_max_pool"):
            n = int(name.removesuffix("_with_indices")[-2])
            pooled = getattr(F, f"adaptive_avg_pool{n}d")(args[0], args[1] if len(args) > 1 else kwargs["output_size"])
            return _with_indices(pooled, name, kwargs)
        return func(*args, **kwargs)


def _with_indices(pooled: torch.Tensor, name: str, kwargs: dict[str, Any]) -> Any:
    """A max pool asked for its indices returns a pair; the stand-in's indices are never used."""
    wants = "indices" in name or kwargs.get("return_indices")
    return (pooled, torch.zeros_like(pooled, dtype=torch.long)) if wants else pooled


def _average_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> torch.Tensor:
    """A depthwise averaging convolution with a max pool's geometry (dilation and ceil_mode too)."""
    n = x.dim() - 2
    kernel = per_axis(kernel_size, n)
    stride = kernel if stride is None or stride in ([], ()) else per_axis(stride, n)
    padding, dilation = per_axis(padding, n), per_axis(dilation, n)
    pads: list[int] = []
    for k, s, p, d, size in zip(kernel, stride, padding, dilation, x.shape[2:]):
        span = d * (k - 1) + 1
        rounding = math.ceil if ceil_mode else math.floor
        out = rounding((size + 2 * p - span) / s) + 1
        if ceil_mode and (out - 1) * s >= size + p:
            out -= 1
        pads = [p, (out - 1) * s + span - size - p] + pads  # F.pad wants the last axis first
    padded = F.pad(x, pads)
    channels = x.shape[1]
    weight = torch.full((channels, 1, *kernel), 1.0 / math.prod(kernel), dtype=x.dtype)
    conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    return conv(padded, weight, stride=stride, dilation=dilation, groups=channels)
