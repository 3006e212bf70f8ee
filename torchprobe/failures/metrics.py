"""The numbers read off a confusion matrix and the calibration bins, and the failures as CSV."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from torchprobe.failures.records import Failure
from torchprobe.failures.state import RESOLUTION

Label = Callable[[int], "str | int"]


def per_class(cm: np.ndarray, label: Label) -> list[dict[str, Any]]:
    """Per class ``class``, ``precision``, ``recall``, ``f1``, ``support``; 0 where undefined
    (no predictions or no samples of the class), as scikit-learn's ``zero_division=0``."""
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    return [
        {"class": label(c), "precision": _ratio(tp[c], predicted[c]), "recall": _ratio(tp[c], support[c]),
         "f1": _ratio(2 * tp[c], support[c] + predicted[c]), "support": int(support[c])}
        for c in range(len(cm))
    ]


def most_confused(cm: np.ndarray, k: int, label: Label) -> list[tuple[str | int, str | int, int]]:
    """The ``k`` largest off-diagonal cells as ``(true, predicted, count)``, largest first
    (ties by true, then predicted class)."""
    cm = cm.copy()
    np.fill_diagonal(cm, 0)
    true, predicted = np.nonzero(cm)
    order = np.lexsort((predicted, true, -cm[true, predicted]))[:k]
    return [(label(int(true[i])), label(int(predicted[i])), int(cm[true[i], predicted[i]])) for i in order]


def reliability(bins: np.ndarray, bin_confidence: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """Equal-width bins of the top-class probability from the ``RESOLUTION`` fine ones."""
    if not isinstance(n_bins, int) or n_bins < 1 or RESOLUTION % n_bins:
        raise ValueError(f"n_bins must divide {RESOLUTION} (the resolution the bins are kept at), got {n_bins}")
    pairs = bins.reshape(n_bins, -1, 2).sum(1)
    confidence = bin_confidence.reshape(n_bins, -1).sum(1)
    edges = np.linspace(0, 1, n_bins + 1)
    return {"edges": edges, "count": pairs.sum(1), "correct": pairs[:, 1], "confidence": confidence}


def calibration_error(bins: dict[str, np.ndarray]) -> float:
    """Sum over bins of ``count/N * |accuracy - mean confidence|`` (NaN for no samples)."""
    total = bins["count"].sum()
    return float(np.abs(bins["correct"] - bins["confidence"]).sum() / total) if total else math.nan


def write_csv(file: io.TextIOBase, failures: Sequence[Failure], label: Label | None) -> None:
    """One row per failure: index, true, predicted (their names when ``label`` names classes),
    confidence, self_confidence, loss, with every float as Python's exact ``repr``."""
    header = ["index", "true", "predicted"] + (["true_name", "predicted_name"] if label else [])
    writer = csv.writer(file)
    writer.writerow([*header, "confidence", "self_confidence", "loss"])
    for f in failures:
        names = [label(f.true), label(f.predicted)] if label else []
        numbers = [repr(f.confidence), repr(f.self_confidence), repr(f.loss)]
        writer.writerow([f.index, f.true, f.predicted, *names, *numbers])


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0
