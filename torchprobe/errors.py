"""Exceptions torchprobe raises on purpose; anything else is a bug."""

from __future__ import annotations


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


class ModelCodeError(TorchProbeError):
    """The user's own code failed outside a forward: importing or building the model."""


class RFError(TorchProbeError):
    """Strict mode: an op with spatial output has no receptive-field rule."""
