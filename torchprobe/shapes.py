"""The shape probe: what goes into and comes out of every call, and who produced each tensor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from torchprobe.probe import ModuleCall, OpCall, Probe, register_probe, shows_its_ops
from torchprobe.trace import tensors_in

SHAPES_SCHEMA = "torchprobe.trace/1"


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one tensor (``[1, 10]``, ``[4, 7] int64``)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def __str__(self) -> str:
        dims = "[" + ", ".join(str(s) for s in self.shape) + "]"
        return dims if self.dtype == torch.float32 else f"{dims} {str(self.dtype).removeprefix('torch.')}"

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": str(self.dtype).removeprefix("torch.")}


def describe(value: Any) -> Any:
    """Tensors -> TensorSpec, containers kept, anything else by a short repr."""
    if isinstance(value, torch.Tensor):
        return TensorSpec(tuple(value.shape), value.dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(describe(v) for v in value)
    if isinstance(value, dict):
        return {k: describe(v) for k, v in value.items()}
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def spec_text(value: Any) -> str:
    """One cell of the table: ``[1, 3, 32, 32]``, ``([1, 10], [1, 5])``, ``{logits: [1, 10]}``."""
    if isinstance(value, TensorSpec):
        return str(value)
    if isinstance(value, (tuple, list)):
        inner = ", ".join(spec_text(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {spec_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def spec_json(value: Any) -> Any:
    if isinstance(value, TensorSpec):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [spec_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): spec_json(v) for k, v in value.items()}
    return value


@dataclass
class CallRow:
    """One module call (or functional op): its inputs by position/keyword, its outputs, its fate."""

    name: str
    type: str
    depth: int
    call: int
    kind: str  # "module" or "op"
    inputs: dict[str, Any]
    outputs: Any = None
    status: str = "running"  # "ok", "failed" (raised here) or "running" (an enclosing call of a failure)

    @property
    def label(self) -> str:
        return (self.name or "(model)") + (f" #{self.call + 1}" if self.call else "")

    def inputs_text(self) -> str:
        if list(self.inputs) == ["0"]:
            return spec_text(self.inputs["0"])
        return ", ".join((spec_text(v) if k.isdigit() else f"{k}={spec_text(v)}") for k, v in self.inputs.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "type": self.type, "kind": self.kind, "depth": self.depth, "call": self.call,
            "inputs": spec_json(self.inputs), "outputs": spec_json(self.outputs), "status": self.status,
        }


def call_inputs(args: Sequence[Any], kwargs: dict[str, Any], tensors_only: bool = False) -> dict[str, Any]:
    """Positional arguments as "0", "1", ...; keyword arguments by name. ``tensors_only`` keeps
    the arguments that hold tensors (for ops, so that ``dim=1`` does not clutter the table)."""
    named = [(str(i), a) for i, a in enumerate(args)] + list(kwargs.items())
    return {k: describe(v) for k, v in named if not tensors_only or tensors_in(v)}


@register_probe("shapes")
class ShapeProbe(Probe):
    """Every module call (and with ``ops=True`` every functional op a composite module calls)."""

    def __init__(self, ops: bool = False) -> None:
        self.ops = ops
        self.rows: list[CallRow] = []
        self.producers: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.failed_op: OpCall | None = None
        self.failed_stack: list[ModuleCall] = []
        self._open: dict[int, CallRow] = {}

    def start(self, inputs: Sequence[Any]) -> None:
        self.rows, self._open, self.failed_op, self.failed_stack = [], {}, None, []
        self.producers = WeakTensorKeyDictionary()
        for i, x in enumerate(tensors_in(list(inputs))):
            self.producers[x] = f"model input {i}"

    def module_enter(self, call: ModuleCall) -> None:
        row = CallRow(call.name, call.type, call.depth, call.call, "module", call_inputs(call.args, call.kwargs))
        self._open[id(call)] = row
        self.rows.append(row)

    def module_exit(self, call: ModuleCall) -> None:
        row = self._open.pop(id(call))
        row.outputs, row.status = describe(call.output), "ok"
        for t in tensors_in(call.output):
            if call.leaf or t not in self.producers:  # a container hands on what a child made
                self.producers[t] = f"{row.label} ({row.type})"

    def function(self, op: OpCall) -> None:
        self.failed_op = None  # an earlier failure was caught by the model itself
        owner = op.owner
        label = f"{op.name} in {owner.name or '(model)'}" if owner is not None else op.name
        for t in tensors_in(op.output):
            self.producers.setdefault(t, label)
        if self.ops and shows_its_ops(owner):
            name = f"{owner.name}.{op.name}" if owner is not None and owner.name else op.name
            self.rows.append(
                CallRow(name, op.name, (owner.depth + 1) if owner else 0, 0, "op",
                        call_inputs(op.args, op.kwargs, tensors_only=True), describe(op.output), "ok")
            )

    def op_failed(self, op: OpCall) -> None:
        self.failed_op = op

    def failed(self, error: BaseException, stack: Sequence[ModuleCall]) -> None:
        self.failed_stack = list(stack)
        if stack:
            self._open[id(stack[-1])].status = "failed"

    def producer_of(self, tensor: Any) -> str | None:
        return self.producers.get(tensor) if isinstance(tensor, torch.Tensor) else None

    def result(self) -> list[CallRow]:
        return self.rows


@dataclass(frozen=True)
class ShapeTrace:
    """The calls of one forward pass with their shapes; on failure, the calls up to it and why."""

    input_shapes: tuple[Any, ...]
    rows: tuple[CallRow, ...]
    device: str
    fallback_reason: str | None = None
    diagnosis: Any = None  # torchprobe.diagnose.Diagnosis when the forward failed

    @property
    def failed(self) -> bool:
        return self.diagnosis is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SHAPES_SCHEMA,
            "input_shapes": [spec_json(s) for s in self.input_shapes],
            "device": self.device,
            "fallback_reason": self.fallback_reason,
            "calls": [row.to_dict() for row in self.rows],
            "failure": self.diagnosis.to_dict() if self.diagnosis is not None else None,
        }

    def __rich__(self) -> Any:
        from torchprobe.report import trace_table

        return trace_table(self)

    def __str__(self) -> str:
        from torchprobe.report import render_text

        return render_text(self)
