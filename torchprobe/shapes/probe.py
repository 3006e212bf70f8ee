"""The shape probe: what goes into and comes out of every call, and who produced each tensor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils.weak import WeakTensorKeyDictionary

from torchprobe.engine.events import ModuleCall, OpCall, shows_its_ops
from torchprobe.engine.probe import Probe
from torchprobe.engine.torch_utils import tensors_in
from torchprobe.shapes.result import CallRow
from torchprobe.shapes.tensors import describe


def call_inputs(args: Sequence[Any], kwargs: dict[str, Any], tensors_only: bool = False) -> dict[str, Any]:
    """Positional arguments as "0", "1", ...; keyword arguments by name. ``tensors_only`` keeps
    the arguments that hold tensors (for ops, so that ``dim=1`` does not clutter the table)."""
    named = [(str(i), a) for i, a in enumerate(args)] + list(kwargs.items())
    return {k: describe(v) for k, v in named if not tensors_only or tensors_in(v)}


class ShapeProbe(Probe):
    """Every module call (and with ``ops=True`` every functional op a composite module calls)."""

    def __init__(self, ops: bool = False) -> None:
        self.ops = ops
        self.rows: list[CallRow] = []
        self.producers: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.failed_op: OpCall | None = None
        self.failed_stack: list[ModuleCall] = []
        self.unbatched: ModuleCall | None = None  # the first conv that read a model input as unbatched
        self._open: dict[int, int] = {}  # id of a running ModuleCall -> its row

    def start(self, inputs: Sequence[Any]) -> None:
        self.rows, self._open, self.failed_op, self.failed_stack, self.unbatched = [], {}, None, [], None
        self.producers = WeakTensorKeyDictionary()
        for i, x in enumerate(tensors_in(list(inputs))):
            self.producers[x] = f"model input {i}"

    def module_enter(self, call: ModuleCall) -> None:
        if self.unbatched is None and _reads_an_input_unbatched(call, self.producer_of):
            self.unbatched = call
        self._open[id(call)] = len(self.rows)
        self.rows.append(CallRow(**call.site.site_dict(), inputs=call_inputs(call.args, call.kwargs)))

    def module_exit(self, call: ModuleCall) -> None:
        index = self._open.pop(id(call))
        row = self.rows[index] = replace(self.rows[index], outputs=describe(call.output), status="ok")
        for t in tensors_in(call.output):
            if call.leaf or t not in self.producers:  # a container hands on what a child made
                self.producers[t] = f"{row.label} ({row.type})"

    def function(self, op: OpCall) -> None:
        self.failed_op = None  # an earlier failure was caught by the model itself
        owner = op.owner
        label = f"{op.name} in {owner.name or '(model)'}" if owner is not None else op.name
        for t in op.outputs:
            self.producers.setdefault(t, label)
        if self.ops and shows_its_ops(owner):
            inputs = call_inputs(op.args, op.kwargs, tensors_only=True)
            self.rows.append(CallRow(**op.site.site_dict(), inputs=inputs, outputs=describe(op.output), status="ok"))

    def op_failed(self, op: OpCall) -> None:
        self.failed_op = op

    def failed(self, error: BaseException, stack: Sequence[ModuleCall]) -> None:
        self.failed_stack = list(stack)
        if stack:
            index = self._open[id(stack[-1])]
            self.rows[index] = replace(self.rows[index], status="failed")

    def producer_of(self, tensor: Any) -> str | None:
        return self.producers.get(tensor) if isinstance(tensor, torch.Tensor) else None

    def result(self) -> list[CallRow]:
        return self.rows


def _reads_an_input_unbatched(call: ModuleCall, producer_of: Any) -> bool:
    """A conv given a model input with one dim too few for a batch: the size given lacks an axis
    (torchprobe adds the batch dim), whatever fails later."""
    x = next(iter(tensors_in(call.args)), None)
    return (isinstance(call.module, nn.modules.conv._ConvNd) and x is not None
            and x.dim() == len(call.module.kernel_size) + 1 and (producer_of(x) or "").startswith("model input"))
