"""FLOPs counted on shapes, whatever device the pass runs on.

The formulas are ``torch.utils.flop_counter``'s (a multiply and an add count as two). They are
applied at the level the tracer already sees, torch functions, so a pass pays for no second
dispatch layer under every op:

- a convolution, ``linear``, ``mm``, ``bmm``, ``addmm`` or ``baddbmm`` is counted from the shapes
  of its arguments and output, exactly as its aten op would be;
- a function that can hide no matmul (pointwise, views, pools, normalisations, reductions) counts
  0 without running anything more;
- any other function (``matmul``, ``einsum``, an LSTM, attention, a composite nobody listed) runs
  under :class:`FlopCounter`, a small dispatch mode that applies the same formulas to its aten ops
  on meta. On a real device it runs once more, on meta copies of its arguments: the CPU's fused
  kernels hide their matmuls, their meta kernels do not, so a count never depends on the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import bmm_flop, conv_flop_count, flop_registry, mm_flop

from torchprobe.engine.events import OpCall
from torchprobe.engine.torch_utils import META, is_pointwise_aten, tensors_in

_SIZE_QUERIES = {torch.ops.prim.device.default, torch.ops.aten.size.default, torch.ops.aten.stride.default,
                 torch.ops.aten.numel.default, torch.ops.aten.dim.default}


@cache
def _hides_nothing(func: torch._ops.OpOverload) -> bool:
    """A size query, a view or a pointwise op decomposes into no matmul or convolution: run it
    as it is (its Python decomposition costs more than the rest of a pass)."""
    return func in _SIZE_QUERIES or func.is_view or torch.Tag.pointwise in func.tags


class FlopCounter(TorchDispatchMode):
    """Adds up the FLOPs of the meta aten ops run under it (those ``flop_counter`` has a formula
    for, and what the others decompose into); ``total`` also takes what is counted on shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        kwargs = kwargs or {}
        if _holds_values(args):
            return func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is None:
            if not _hides_nothing(func):
                with self:
                    decomposed = func.decompose(*args, **kwargs)
                if decomposed is not NotImplemented:
                    return decomposed
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        self.total += formula(*args, **kwargs, out_val=out)
        return out

    def count(self, op: OpCall) -> None:
        """Count a function that returned: on its shapes, or, when only its aten ops can tell and
        it ran on a real device (or no formula fits its arguments), by running it again on meta
        copies of its arguments under this mode (one that meta cannot run has no matmul to count)."""
        if counted_by_dispatch(op.name):
            if not _ran_on_a_real_device(op):
                return  # it ran under this mode (see counted_by_dispatch)
        else:
            flops = flops_on_shapes(op)
            if flops is not None:
                self.total += flops
                return
        try:
            with self:
                op.func(*_on_meta(op.args), **_on_meta(op.kwargs))
        except Exception:  # noqa: BLE001 - any op that meta cannot run counts nothing
            return


def counted_by_dispatch(name: str) -> bool:
    """Whether the function called ``name`` must run under :class:`FlopCounter` (decided before
    it runs, by name): it has no formula on shapes and may hide a matmul."""
    return name not in _ON_SHAPES and not hides_no_matmul(name)


def flops_on_shapes(op: OpCall) -> int | None:
    """FLOPs of a function with a formula on shapes (0 for one that hides no matmul); None when
    the formula does not fit its arguments (a 1-d weight given to ``linear``, say)."""
    formula = _ON_SHAPES.get(op.name)
    if formula is None:
        return 0 if hides_no_matmul(op.name) else None
    try:
        return formula(op)
    except (AttributeError, IndexError, TypeError, ValueError):  # arguments the formula does not know
        return None


def _conv(transposed: bool) -> Callable[[OpCall], int | None]:
    def flops(op: OpCall) -> int | None:
        x, weight, out = op.arg(0, "input"), op.arg(1, "weight"), op.output
        x_shape, out_shape = list(x.shape), list(out.shape)
        if x.dim() == weight.dim() - 1:  # unbatched: aten sees a batch of one
            x_shape, out_shape = [1, *x_shape], [1, *out_shape]
        return conv_flop_count(x_shape, list(weight.shape), out_shape, transposed=transposed)
    return flops


def _linear(op: OpCall) -> int | None:
    x, weight = op.arg(0, "input"), op.arg(1, "weight")
    if weight.dim() != 2 or x.dim() < 1:
        return None
    return int(mm_flop((math.prod(x.shape[:-1]), x.shape[-1]), tuple(weight.shape[::-1])))


def _mm(first: int) -> Callable[[OpCall], int | None]:
    """``mm``/``bmm`` (operands from 0) and ``addmm``/``baddbmm`` (from 1)."""
    def flops(op: OpCall) -> int | None:
        a, b = op.args[first], op.args[first + 1]
        formula = mm_flop if a.dim() == 2 else bmm_flop
        return int(formula(tuple(a.shape), tuple(b.shape)))
    return flops


_ON_SHAPES: dict[str, Callable[[OpCall], int | None]] = {
    **{f"conv{n}d": _conv(False) for n in (1, 2, 3)},
    **{f"conv_transpose{n}d": _conv(True) for n in (1, 2, 3)},
    "linear": _linear, "mm": _mm(0), "bmm": _mm(0), "addmm": _mm(1), "baddbmm": _mm(1),
}

# Functions whose aten ops are views, copies, pointwise ops, pools, normalisations or reductions:
# none holds a matmul or a convolution, whatever the arguments (pointwise ATen ops need no entry).
_NO_MATMUL = frozenset({
    "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel", "permute",
    "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "T", "mT", "contiguous", "clone", "detach",
    "expand", "expand_as", "broadcast_to", "narrow", "chunk", "split", "split_with_sizes", "tensor_split", "unbind",
    "cat", "concat", "concatenate", "stack", "getitem", "setitem", "flip", "roll", "repeat", "tile",
    "repeat_interleave", "pad", "size", "dim", "numel", "to", "type", "type_as", "float", "half", "double",
    "bfloat16", "cpu", "cuda", "new_empty", "new_zeros", "new_ones", "new_full", "empty_like", "zeros_like",
    "ones_like", "full_like", "rand_like", "randn_like", "copy", "fill", "zero", "masked_fill", "index_select",
    "gather", "scatter", "scatter_add", "embedding", "unfold",
    *(f"{kind}_pool{n}d" for kind in ("max", "avg", "lp", "adaptive_avg", "adaptive_max") for n in (1, 2, 3)),
    *(f"{kind}_pool{n}d_with_indices" for kind in ("max", "adaptive_max") for n in (1, 2, 3)),
    "batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "local_response_norm", "normalize",
    "softmax", "log_softmax", "softmin", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "relu", "relu6", "gelu", "silu", "hardswish", "hardsigmoid", "mish", "elu", "selu",
    "leaky_relu", "sigmoid", "tanh", "softplus", "glu", "threshold", "hardtanh", "prelu",
    "sum", "mean", "amax", "amin", "max", "min", "argmax", "argmin", "std", "var", "prod", "cumsum", "logsumexp",
    "norm", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "pixel_shuffle", "pixel_unshuffle",
    "channel_shuffle", "native_channel_shuffle",
})


def hides_no_matmul(name: str) -> bool:
    return name in _NO_MATMUL or is_pointwise_aten(name)


def _ran_on_a_real_device(op: OpCall) -> bool:
    """The op's tensors hold values (on meta it already went through the counter)."""
    tensors = op.outputs or tensors_in(op.args)
    return bool(tensors) and tensors[0].device.type != META


def _holds_values(args: tuple) -> bool:
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return arg.device.type != META
        if isinstance(arg, (tuple, list)) and arg and isinstance(arg[0], torch.Tensor):
            return bool(arg[0].device.type != META)
    return False


def _on_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to(META)
    if isinstance(value, (tuple, list)):
        return type(value)(_on_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: _on_meta(v) for k, v in value.items()}
    return value
