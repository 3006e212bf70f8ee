"""Receptive fields of the reference network per stage: the exact theoretical RF (``rf.png``) and
the effective one (``erf.png``, Luo et al. 2016), measured with torchprobe on validation images
with the initial weights (before the first step) and the trained ones (after the last epoch).

A stage is the conv blocks between two max pools; its output is the last block's (after BatchNorm
and ReLU: its dropout module, the identity in eval mode). The network's output is the global
average pool, whose 44x44 RF covers the 28x28 input and more."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import torchprobe
from mnist_demo.augment import normalize, to_unit
from mnist_demo.data import Split

# (module, label): the output of each stage, then of the network
STAGES: tuple[tuple[str, str], ...] = (
    ("dropout1", "stage 1 (28x28)"), ("dropout3", "stage 2 (14x14)"), ("dropout5", "stage 3 (3x3)"),
    ("gap", "output (GAP)"),
)
ERF_IMAGES = 256  # validation images the ERF is averaged over


def erf_inputs(split: Split, device: torch.device, dtype: torch.dtype, count: int = ERF_IMAGES) -> torch.Tensor:
    """The first ``count`` images of ``split``, clean and normalised as the model sees them."""
    return normalize(to_unit(split.images[:count].to(device))).to(dtype)


def measure(model: nn.Module, inputs: torch.Tensor) -> torchprobe.ERFResult:
    """The ERF of each stage's centre unit on ``inputs`` (the model itself is left as it was)."""
    return torchprobe.effective_receptive_field(model, layer=[name for name, _ in STAGES], input_data=inputs)


def stage_label(name: str) -> str:
    return dict(STAGES).get(name, name)


def erf_numbers(result: torchprobe.ERFResult) -> list[dict[str, Any]]:
    """Per stage, what ``metrics.json`` and the report show: the RF, its clipped box, and the ERF's
    share inside it, the fewest pixels holding 50% and 95% of the mass (share of the box) and the
    central 95% extent per axis."""
    rows = []
    for layer in result.layers:
        rows.append({
            "layer": layer.name, "stage": stage_label(layer.name), "rf": list(layer.theory.rf),
            "box": layer.box_area, "inside": layer.inside, "area50": layer.area50, "area95": layer.area95,
            "size95": None if layer.size95 is None else list(layer.size95),
            "std": None if layer.std is None else list(layer.std),
        })
    return rows
