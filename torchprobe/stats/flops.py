"""FLOPs counted on meta shapes, whatever device the pass runs on.

The formulas are ``torch.utils.flop_counter``'s (a multiply and an add count as two), applied by a
small dispatch mode to the aten ops run on meta tensors. On a real device the mode lets the real
kernels through uncounted, and every torch function the pass sees runs once more on meta copies of
its arguments: the CPU's fused kernels (an LSTM, flash attention) hide their matmuls, their meta
kernels do not, so a count never depends on the device.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from torchprobe.engine.events import OpCall
from torchprobe.engine.torch_utils import META, tensors_in

_SIZE_QUERIES = {torch.ops.prim.device.default, torch.ops.aten.size.default, torch.ops.aten.stride.default,
                 torch.ops.aten.numel.default, torch.ops.aten.dim.default}


@cache
def _hides_nothing(func: torch._ops.OpOverload) -> bool:
    """A size query, a view or a pointwise op decomposes into no matmul or convolution: run it
    as it is (its Python decomposition costs more than the rest of a pass)."""
    return func in _SIZE_QUERIES or func.is_view or torch.Tag.pointwise in func.tags


class FlopCounter(TorchDispatchMode):
    """Adds up the FLOPs of the meta aten ops run under it (those ``flop_counter`` has a formula
    for, and what the others decompose into)."""

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

    def replay_on_meta(self, op: OpCall) -> None:
        """Count a real-device op by running it again on meta copies of its arguments; an op meta
        cannot run (one that reads values) has no matmul to count."""
        try:
            op.func(*_on_meta(op.args), **_on_meta(op.kwargs))  # this mode is active: it counts them
        except Exception:  # noqa: BLE001 - any op that meta cannot run counts nothing
            return


def ran_on_a_real_device(op: OpCall) -> bool:
    """The op's tensors hold values (its meta run already went through the counter otherwise)."""
    tensors = tensors_in(op.output) or tensors_in(op.args)
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
