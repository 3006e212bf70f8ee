"""Whole-model checks of the RF engine against the gradient measurement."""

from __future__ import annotations

import itertools

import torch
from torch import nn

import torchprobe


def assert_every_unit_matches(model: nn.Module, size: tuple[int, ...]) -> None:
    """At every unit of the model's output the analytic span is the measured one (analysed in
    float64 like the measurement, so that rounding agrees); no notes, nothing unknown."""
    result = torchprobe.receptive_field(model.double(), input_data=torch.zeros((1, *size), dtype=torch.float64))
    assert result.diagnostics == ()
    out = result.output
    assert out.known
    for unit in itertools.product(*(range(n) for n in out.units)):
        measured = torchprobe.measure_receptive_field(model, size, "", unit).spans
        assert out.span(unit) == measured, f"unit {unit}"
