"""The per-epoch history: one typed row per epoch, for the trainer, the report and the curves.

A row's fields are the keys of ``metrics.json``'s ``history`` entries, in the same order, so runs
and docs written before this class existed stay valid; the checkpoint stores rows as those same
plain dicts because ``torch.load(weights_only=True)`` admits no custom classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch did: training and validation scores, failure counts, schedule and time."""

    epoch: int  # 1-based
    train_loss: float  # mean NLL over the epoch's (augmented) training samples, every rank's
    train_accuracy: float
    val_loss: float  # mean NLL on the validation split after the epoch
    val_accuracy: float
    val_errors: int  # misclassified validation images
    val_calibration_error: float  # expected calibration error on the validation split
    flipped_to_wrong: int  # validation images right after the previous epoch and wrong after this one
    lr: float  # the learning rate at the epoch's first step
    optimizer_steps: int  # steps taken since the start of the run
    epoch_seconds: float  # wall time of the training pass (validation excluded)

    def to_dict(self) -> dict[str, Any]:
        """The JSON row of ``metrics.json`` (and of the checkpoint)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> EpochMetrics:
        """Back from :meth:`to_dict`'s row, as stored in checkpoints (also those written before this class)."""
        return cls(**row)


def history_rows(history: list[EpochMetrics]) -> list[dict[str, Any]]:
    """The history as ``metrics.json`` and the checkpoint store it."""
    return [row.to_dict() for row in history]
