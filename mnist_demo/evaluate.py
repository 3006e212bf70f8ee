"""Evaluation passes on clean (un-augmented) images: validation and test scores, failure analysis,
and the BatchNorm re-estimation that makes the statistics those of clean images. Under torchrun
each rank evaluates its share and every rank gets the merged result."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import nn

import torchprobe
from mnist_demo.augment import normalize, to_unit
from mnist_demo.data import MnistData, Split
from mnist_demo.distributed import ONE_PROCESS, Ranks, all_sum

EVAL_BATCH = 1000
NUM_CLASSES = 10
FINAL_FAILURES_KEPT = 32  # validation failures whose images the final analysis keeps (gallery, report)


class Scores(TypedDict):
    """Mean NLL and accuracy over a whole split (or a training epoch): ``metrics.json``'s ``test``."""

    loss: float
    accuracy: float


def clean_batches(
    split: Split, device: torch.device, dtype: torch.dtype = torch.float32, part: slice = slice(None)
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Normalised, un-augmented batches of ``EVAL_BATCH`` in order, with the index of their first
    image; ``part`` picks a contiguous share of the split (a rank's)."""
    first, stop, _ = part.indices(len(split.labels))
    for start in range(first, stop, EVAL_BATCH):
        end = min(start + EVAL_BATCH, stop)
        x = normalize(to_unit(split.images[start:end].to(device))).to(dtype)
        yield x, split.labels[start:end].to(device), start


def _dtype_of(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, device: torch.device, analyzer: torchprobe.FailureAnalyzer | None = None,
    ranks: Ranks = ONE_PROCESS,
) -> Scores:
    """Mean NLL and accuracy; every batch also goes to ``analyzer`` if given. Under torchrun each
    rank evaluates its share and the results are merged on every rank."""
    model.eval()
    loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for x, y, start in clean_batches(split, device, _dtype_of(model), ranks.shard(len(split.labels))):
        out = model(x)
        loss += F.nll_loss(out, y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
        if analyzer is not None:
            analyzer.update(out, y, inputs=x, indices=torch.arange(start, start + len(y), device=device))
    if analyzer is not None:
        analyzer.sync()
    total_loss, total_correct = all_sum([loss.item(), correct.item()], device).tolist()
    n = len(split.labels)
    return {"loss": total_loss / n, "accuracy": total_correct / n}


def final_evaluation(
    model: nn.Module, data: MnistData, device: torch.device, ranks: Ranks = ONE_PROCESS
) -> tuple[torchprobe.FailureAnalyzer, Scores]:
    """After the last epoch: the validation failures with their images kept (for the gallery and
    the report), and the official test set's scores."""
    failures = torchprobe.FailureAnalyzer(NUM_CLASSES, keep=FINAL_FAILURES_KEPT)
    evaluate(model, data.val, device, failures, ranks)
    return failures, evaluate(model, data.test, device, ranks=ranks)


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, split: Split, device: torch.device, batches: int = 50, ranks: Ranks = ONE_PROCESS
) -> None:
    """Re-estimate BatchNorm running statistics on clean images: training saw augmented ones.
    Dropout stays off, so the statistics are those the evaluation will see. Under torchrun each
    rank feeds its share of every batch and the global BatchNorm sees the whole batch."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    try:
        n = min(batches * EVAL_BATCH, len(split.labels))
        for start in range(0, n, EVAL_BATCH):
            share = ranks.shard(min(EVAL_BATCH, n - start))
            x = normalize(to_unit(split.images[start + share.start : start + share.stop].to(device)))
            model(x.to(_dtype_of(model)))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()
