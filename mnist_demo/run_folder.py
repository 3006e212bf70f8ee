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
    CURVES,
    FAILURES,
    METRICS,
    MODEL,
    SAMPLES,
    SUMMARY,
    VAL_FAILURES,
    save_json,
    save_tensors,
    save_text,
)
from mnist_demo.history import EpochMetrics
from mnist_demo.pictures import curves, samples, save_figure
from mnist_demo.report import write_report
from torchprobe import plots


def write_start(out: Path, summary: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Before the first epoch: the model summary as text and a picture of what the network trains
    on (``images``: augmented, normalised)."""
    save_text(summary, out / SUMMARY)
    samples(images, labels, out / SAMPLES)


def write_metrics(out: Path, metrics: dict[str, Any]) -> None:
    """After every epoch, so a stopped run still shows its history."""
    save_json(metrics, out / METRICS)


def write_final(
    out: Path, metrics: dict[str, Any], history: Sequence[EpochMetrics], model_state: dict[str, torch.Tensor],
    failures: torchprobe.FailureAnalyzer, summary: str,
) -> None:
    """After the final evaluation: the weights, every validation failure, the curves, failure
    gallery and confusion matrix, the report tying them together and, last, ``metrics`` with the
    test scores (``finished: true``), so a ``metrics.json`` marked finished has every file."""
    save_tensors(model_state, out / MODEL)
    table = io.StringIO(newline="")
    failures.to_csv(table)
    save_text(table.getvalue(), out / VAL_FAILURES)
    curves(history, out / CURVES)
    save_figure(plots.gallery(failures, "loss", FINAL_FAILURES_KEPT, mean=MEAN, std=STD), out / FAILURES, dpi=None)
    save_figure(plots.confusion(failures), out / CONFUSION, dpi=None)
    write_report(out, metrics, history, failures, summary)
    save_json(metrics, out / METRICS)
