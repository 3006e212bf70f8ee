"""Writing the run folder: the summary and samples before training, ``metrics.json`` after every
epoch, and at the end the final metrics, the model, the failures CSV, the pictures and the report.
Only rank 0 writes (the callers check); the file names are those of ``files.py``."""

from __future__ import annotations

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
)
from mnist_demo.history import EpochMetrics
from mnist_demo.pictures import curves, samples
from mnist_demo.report import write_report
from torchprobe import plots


def write_start(out: Path, summary: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Before the first epoch: the model summary as text and a picture of what the network trains
    on (``images``: augmented, normalised)."""
    (out / SUMMARY).write_text(summary)
    samples(images, labels, out / SAMPLES)


def write_metrics(out: Path, metrics: dict[str, Any]) -> None:
    """After every epoch, so a stopped run still shows its history."""
    save_json(metrics, out / METRICS)


def write_final(
    out: Path, metrics: dict[str, Any], history: Sequence[EpochMetrics], model_state: dict[str, torch.Tensor],
    failures: torchprobe.FailureAnalyzer, summary: str,
) -> None:
    """After the final evaluation: ``metrics`` with the test scores, the weights, every validation
    failure, the curves, failure gallery and confusion matrix, and the report tying them together."""
    save_json(metrics, out / METRICS)
    save_tensors(model_state, out / MODEL)
    failures.to_csv(out / VAL_FAILURES)
    curves(history, out / CURVES)
    gallery = plots.gallery(failures, "loss", FINAL_FAILURES_KEPT, mean=MEAN, std=STD)
    for name, figure in ((FAILURES, gallery), (CONFUSION, plots.confusion(failures))):
        figure.savefig(out / name)
    write_report(out, metrics, history, failures, summary)
