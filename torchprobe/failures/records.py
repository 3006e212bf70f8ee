"""What the analyzer reports: one failure, one closed epoch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Failure:
    """One misclassified sample. ``confidence`` is the probability of the (wrong) prediction,
    ``loss`` the cross-entropy ``-log p(true)``; ``input`` is set for the kept worst ones only."""

    index: int
    true: int
    predicted: int
    confidence: float
    loss: float
    input: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @property
    def self_confidence(self) -> float:
        """The probability of the given label (cleanlab's word): low means "probably mislabelled"."""
        return math.exp(-self.loss)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "true": self.true, "predicted": self.predicted,
                "confidence": json_float(self.confidence), "loss": json_float(self.loss)}


@dataclass(frozen=True)
class EpochRecord:
    """One epoch as :meth:`FailureAnalyzer.end_epoch` closed it (``epoch`` counts from 1)."""

    epoch: int
    samples: int
    errors: int
    calibration_error: float
    failed: np.ndarray = field(repr=False, compare=False)  # distinct indices that failed, sorted
    seen: np.ndarray = field(repr=False, compare=False)  # indices seen, as [start, stop) rows

    @property
    def error_rate(self) -> float:
        return self.errors / self.samples if self.samples else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "samples": self.samples, "errors": self.errors,
                "error_rate": json_float(self.error_rate), "calibration_error": json_float(self.calibration_error)}

    def state(self) -> dict[str, Any]:
        """Everything, as tensors and numbers: checkpoints load with ``torch.load(weights_only=True)``."""
        return {**self.to_dict(), "failed": torch.from_numpy(self.failed), "seen": torch.from_numpy(self.seen)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochRecord:
        return cls(int(state["epoch"]), int(state["samples"]), int(state["errors"]), float(state["calibration_error"]),
                   state["failed"].numpy(), state["seen"].numpy())


def json_float(value: float) -> float | None:
    """JSON has no NaN or infinity: they become null."""
    return float(value) if math.isfinite(value) else None
