"""Writing the run folder: the summary and samples before training, ``metrics.json`` after every
epoch, and at the end the model, the failures CSV, the pictures, the report and, last, the final
metrics (``finished: true``: every other file is written by then). Only rank 0 writes (the callers
check); the file names are those of ``files.py``, every write is its atomic ``write_file``."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import torchprobe
from mnist_demo.augment import MEAN, STD
from mnist_demo.evaluate import FINAL_FAILURES_KEPT
from mnist_demo.files import (
    CONFUSION,
    CONFUSION_ERRORS,
    CURVES,
    ERF,
    FAILURES,
    METRICS,
    MODEL,
    MOST_CONFUSED,
    PER_CLASS,
    RELIABILITY,
    RF,
    SAMPLES,
    SUMMARY,
    VAL_FAILURES,
    save_json,
    save_tensors,
    save_text,
)
from mnist_demo.history import EpochMetrics
from mnist_demo.pictures import (
    confusion_errors_figure,
    curves,
    erf_picture,
    per_class_figure,
    rf_picture,
    samples,
    save_figure,
)
from mnist_demo.report import write_report
from mnist_demo.watch import Board
from torchprobe import plots

# TensorBoard's image tags for the pictures of the run folder
BOARD_PICTURES = {
    "pictures/curves": CURVES, "pictures/samples": SAMPLES, "pictures/rf": RF, "pictures/erf": ERF,
    "failures/gallery": FAILURES, "failures/confusion": CONFUSION, "failures/confusion_errors": CONFUSION_ERRORS,
    "failures/reliability": RELIABILITY, "failures/most_confused": MOST_CONFUSED, "failures/per_class": PER_CLASS,
}


def write_start(out: Path, summary: str, images: torch.Tensor, labels: torch.Tensor, *,
                model: torch.nn.Module | None = None, digit: torch.Tensor | None = None) -> None:
    """Before the first epoch: the model summary as text, a picture of what the network trains
    on (``images``: augmented, normalised) and, given the ``model`` and a validation ``digit``
    (normalised), the theoretical receptive fields of its stages over that digit."""
    save_text(summary, out / SUMMARY)
    samples(images, labels, out / SAMPLES)
    if model is not None and digit is not None:
        rf_picture(model, digit, out / RF)


def write_metrics(out: Path, metrics: dict[str, Any]) -> None:
    """After every epoch, so a stopped run still shows its history."""
    save_json(metrics, out / METRICS)


def write_final(
    out: Path, metrics: dict[str, Any], history: Sequence[EpochMetrics], model_state: dict[str, torch.Tensor],
    failures: torchprobe.FailureAnalyzer, summary: str, *, lrs: Sequence[float] | None = None,
    erf: tuple[torchprobe.ERFResult, torchprobe.ERFResult] | None = None, board: Board | None = None,
) -> None:
    """After the final evaluation: the weights, every validation failure, the curves (``lrs``: the
    learning rate of every step), the failure gallery, the confusion matrix (all of it, and the
    errors only), the reliability diagram, the most-confused pairs, the per-class accuracy, the
    ERF per stage (``erf``: initial and trained), the report tying them together and, last,
    ``metrics`` with the test scores (``finished: true``), so a ``metrics.json`` marked finished
    has every file. ``board``: the pictures also go to TensorBoard."""
    save_tensors(model_state, out / MODEL)
    table = io.StringIO(newline="")
    failures.to_csv(table)
    save_text(table.getvalue(), out / VAL_FAILURES)
    curves(history, out / CURVES, lrs)
    save_figure(plots.gallery(failures, "loss", FINAL_FAILURES_KEPT, mean=MEAN, std=STD), out / FAILURES, dpi=None)
    save_figure(plots.confusion(failures), out / CONFUSION, dpi=None)
    save_figure(confusion_errors_figure(failures), out / CONFUSION_ERRORS, dpi=None)
    save_figure(plots.reliability(failures), out / RELIABILITY, dpi=None)
    save_figure(plots.most_confused(failures), out / MOST_CONFUSED, dpi=None)
    save_figure(per_class_figure(failures), out / PER_CLASS, dpi=None)
    if erf is not None:
        erf_picture(*erf, out / ERF)
    write_report(out, metrics, history, failures, summary)
    if board is not None:
        board.pictures(out, BOARD_PICTURES, history[-1].epoch if history else 0)
    save_json(metrics, out / METRICS)
