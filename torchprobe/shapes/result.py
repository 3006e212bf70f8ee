"""What ``torchprobe.trace`` returns: every call with the shapes in and out, and on failure why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torchprobe.display import Displayable
from torchprobe.engine.events import CallSite
from torchprobe.errors import ForwardError
from torchprobe.notes import Note, fallback_notes
from torchprobe.shapes.diagnose import Diagnosis
from torchprobe.shapes.tensors import desc_json, desc_text

SHAPES_SCHEMA = "torchprobe.trace/1"


CallStatus = Literal["ok", "failed", "running"]


@dataclass(frozen=True)
class CallRow(CallSite):
    """One module call (or functional op): its inputs by position/keyword, its outputs, its fate."""

    inputs: dict[str, Any]
    outputs: Any = None
    status: CallStatus = "running"  # "failed": raised here; "running": an enclosing call of a failure

    def inputs_text(self) -> str:
        if list(self.inputs) == ["0"]:
            return desc_text(self.inputs["0"])
        return ", ".join((desc_text(v) if k.isdigit() else f"{k}={desc_text(v)}") for k, v in self.inputs.items())

    def to_dict(self) -> dict[str, Any]:
        return {**self.site_dict(), "inputs": desc_json(self.inputs), "outputs": desc_json(self.outputs),
                "status": self.status}


@dataclass(frozen=True)
class ShapeTrace(Displayable):
    """The calls of one forward pass with their shapes; on failure, the calls up to it and why."""

    input_shapes: tuple[Any, ...]
    rows: tuple[CallRow, ...]
    device: str
    fallback_reason: str | None = None
    diagnosis: Diagnosis | None = None  # when the forward failed

    @property
    def failed(self) -> bool:
        return self.diagnosis is not None

    @property
    def notes(self) -> tuple[Note, ...]:
        return fallback_notes(self.device, self.fallback_reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SHAPES_SCHEMA,
            "input_shapes": [desc_json(s) for s in self.input_shapes],
            "device": self.device,
            "fallback_reason": self.fallback_reason,
            "calls": [row.to_dict() for row in self.rows],
            "failure": self.diagnosis.to_dict() if self.diagnosis is not None else None,
            "notes": [note.to_dict() for note in self.notes],
        }


class ShapeError(ForwardError):
    """The forward failed; ``trace`` holds the calls up to the failure and ``diagnosis`` the why.

    Its message is the partial table followed by the diagnosis; ``summary`` is one line of it.
    """

    def __init__(
        self, message: str, summary: str, trace: ShapeTrace, diagnosis: Diagnosis, input_related: bool
    ) -> None:
        super().__init__(message, diagnosis.module, input_related)
        self.summary = summary
        self.trace = trace
        self.diagnosis = diagnosis
