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
BLOCK = 1 << 22  # confusion cells most_confused scans at once (temporaries: about 16 bytes a cell, 64 MiB)


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
    (ties by true, then predicted class). The matrix is read in blocks of rows of about ``BLOCK``
    cells, keeping the best ``k`` cells so far: no copy of the matrix, whatever its size."""
    c = len(cm)
    flat = cm.reshape(-1)  # a view: cm is C-contiguous
    best = (np.empty(0, np.int64), np.empty(0, np.int64))  # flat positions, counts
    for lo in range(0, c, max(1, BLOCK // c)):
        block = flat[lo * c:(lo + max(1, BLOCK // c)) * c]
        cells = np.flatnonzero(block) + lo * c
        cells = cells[cells // c != cells % c]  # off the diagonal
        best = _top(k, np.concatenate([best[0], cells]), np.concatenate([best[1], flat[cells]]))
    true, predicted = np.divmod(best[0], c)
    return [(label(t), label(p), n) for t, p, n in zip(true.tolist(), predicted.tolist(), best[1].tolist())]


def _top(k: int, cells: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` cells with the largest counts, ties by position (true class, then predicted)."""
    order = np.lexsort((cells, -counts))[:max(k, 0)]
    return cells[order], counts[order]


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
