"""Exceptions torchprobe raises on purpose; anything else is a bug."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchprobe.shapes.diagnose import Diagnosis
    from torchprobe.shapes.result import ShapeTrace


class TorchProbeError(Exception):
    """Base class: the message is one line a user can act on."""


class UsageError(TorchProbeError):
    """The request itself is wrong: a bad spec, input size or option."""


class ForwardError(TorchProbeError):
    """The model's forward raised; ``module`` names where, ``__cause__`` is the original error.

    ``input_related`` is True when the given input cannot fit the model (too small, or rejected
    by the first layer that reads it) rather than the model failing on a valid input.
    """

    def __init__(self, message: str, module: str | None = None, input_related: bool = False) -> None:
        super().__init__(message)
        self.module = module
        self.input_related = input_related


class RFError(TorchProbeError):
    """Strict mode: an op with spatial output has no receptive-field rule."""


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
