"""Reads at tensor-held indices and writes into part of a tensor, against the gradient measurement.

Every unit of a small conv -> op -> conv model: ``span(unit)`` equals the measured support where
the index is a constant the pass sees (``device="cpu"``); where it is not (meta, or an index
computed from the input) a note says so and the spans contain the measured ones, global along
the indexed dims. Writes of a box (``copy_`` into a view, slice assignment) are exact, on a
canvas that read nothing before or one that did; other writes are noted as an over-estimate.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchprobe

SIZE = (3, 10, 14)
Op = Callable[["OpModel", torch.Tensor], torch.Tensor]


class OpModel(nn.Module):
    """conv (same size) -> ``op`` -> conv 3x3: the last conv makes every unit read a window."""

    def __init__(self, op: Op, out_channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.op = op
        self.head = nn.Conv2d(out_channels, 4, 3)
        self.register_buffer("index", torch.tensor([3, 1, 1, 7, 0, 5, 6]))
        self.register_buffer("mask", torch.tensor([1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 0], dtype=torch.bool))
        self.register_buffer("grid", F.affine_grid(torch.tensor([[[0.8, 0.0, 0.1], [0.0, 0.6, -0.2]]]),
                                                   [1, 4, 9, 11], align_corners=False))
        self.register_buffer("turned", F.affine_grid(torch.tensor([[[0.8, 0.3, 0.1], [-0.3, 0.6, -0.2]]]),
                                                     [1, 4, 9, 11], align_corners=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.op(self, self.conv(x)))


def compare(model: nn.Module, result: torchprobe.RFResult, layer: str = "head") -> tuple[int, int]:
    """(misses, over-estimates) over every unit of ``layer``; a miss: a measured pixel not in the span."""
    row = result.layer(layer)
    misses = over = 0
    for unit in itertools.product(*(range(n) for n in row.units)):
        truth = torchprobe.measure_receptive_field(model, SIZE, layer, unit, unit_dims=row.unit_dims).spans
        got = row.span(unit)
        got = (None,) * len(got) if None in got else got
        if got == truth:
            continue
        contains = all(t is None or (g is not None and g[0] <= t[0] and t[1] <= g[1]) for g, t in zip(got, truth))
        over += contains
        misses += not contains
    return misses, over


def notes(result: torchprobe.RFResult) -> list[str]:
    return [str(note) for note in result.diagnostics]


EXACT: dict[str, Op] = {
    "index_select": lambda m, x: x.index_select(2, m.index),
    "gather": lambda m, x: x.gather(3, m.index.view(1, 1, 1, 7).expand(1, 4, 10, 7)),
    "take_along_dim": lambda m, x: torch.take_along_dim(x, m.index.view(1, 1, 7, 1), dim=2),
    "take_along_dim_flat": lambda m, x: torch.take_along_dim(x, m.index * 9, dim=None).view(1, 1, 7, 1).expand(
        1, 4, 7, 3),
    "getitem_tensor": lambda m, x: x[:, :, m.index],
    "getitem_list": lambda m, x: x[:, :, :, [4, 2, 2, 9, 0]],
    "getitem_mask": lambda m, x: x[..., m.mask],
    "grid_sample": lambda m, x: F.grid_sample(x, m.grid, align_corners=False),
    "grid_sample_nearest_border": lambda m, x: F.grid_sample(x, m.grid, mode="nearest", padding_mode="border",
                                                             align_corners=True),
    "grid_sample_bicubic_reflection": lambda m, x: F.grid_sample(x, m.grid, mode="bicubic",
                                                                 padding_mode="reflection", align_corners=False),
}


@pytest.mark.parametrize("name", EXACT)
def test_a_visible_constant_index_is_exact(name: str) -> None:
    model = OpModel(EXACT[name]).eval()
    result = torchprobe.receptive_field(model, SIZE, device="cpu")
    # a flat take puts both axes on one dim: the head conv says its pixel sets are products of hulls
    assert all(name == "take_along_dim_flat" and "holds several input axes" in n for n in notes(result))
    assert compare(model, result) == (0, 0)


@pytest.mark.parametrize("name", ["index_select", "gather", "getitem_tensor", "grid_sample"])
def test_an_index_the_meta_pass_cannot_see_makes_the_indexed_dims_global(name: str) -> None:
    model = OpModel(EXACT[name]).eval()
    result = torchprobe.receptive_field(model, SIZE, device="meta")
    assert any("reads where the values of its" in n and "not visible on the meta device" in n for n in notes(result))
    misses, _ = compare(model, result)
    assert misses == 0
    head = result.layer("head")
    indexed = {"index_select": [0], "getitem_tensor": [0], "gather": [1], "grid_sample": [0, 1]}[name]
    assert all(head.is_global[a] for a in indexed)


def test_an_index_computed_from_the_input_is_named() -> None:
    def top_rows(m: OpModel, x: torch.Tensor) -> torch.Tensor:
        rows = x.sum((1, 3)).argsort(dim=1, descending=True)[0, :5]
        return x.index_select(2, rows)

    model = OpModel(top_rows).eval()
    result = torchprobe.receptive_field(model, SIZE, device="cpu")
    assert any("computed from the input" in n for n in notes(result))
    assert result.layer("head").is_global[0] and not result.layer("head").is_global[1]
    assert compare(model, result)[0] == 0


def test_an_index_that_varies_across_other_dims_is_noted_and_contains_the_truth() -> None:
    model = OpModel(lambda m, x: F.grid_sample(x, m.turned, align_corners=False)).eval()
    result = torchprobe.receptive_field(model, SIZE, device="cpu")
    assert any("differs along the other dims" in n and "over-estimate" in n for n in notes(result))
    assert compare(model, result)[0] == 0


# -- writes into part of a tensor ------------------------------------------------------------------


class Canvas(nn.Module):
    """conv -> zero canvas -> ``canvas[0, c0:c0+4, top:top+h, left:left+w].copy_(x[0])`` (or by slice
    assignment) -> conv: torchvision's detection batching, with a box anywhere in the canvas."""

    def __init__(self, box: tuple[int, int, int], canvas: tuple[int, int, int], assign: bool, keep: bool) -> None:
        super().__init__()
        self.box, self.canvas, self.assign, self.keep = box, canvas, assign, keep
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(canvas[0], 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        c0, top, left = self.box
        h, w = x.shape[-2:]
        if self.keep:  # a canvas that already reads the input: a plain upsampled copy of x
            canvas = F.interpolate(x.mean(1, keepdim=True), size=self.canvas[1:]).expand(1, *self.canvas).clone()
        else:
            canvas = x.new_zeros(1, *self.canvas)
        if self.assign:
            canvas[:, c0:c0 + 4, top:top + h, left:left + w] = x
        else:
            canvas[0, c0:c0 + 4, top:top + h, left:left + w].copy_(x[0])
        return self.head(canvas)


@settings(max_examples=8, deadline=None)
@given(c0=st.integers(0, 2), top=st.integers(0, 5), left=st.integers(0, 6), assign=st.booleans())
def test_a_box_written_into_a_zero_canvas_is_exact(c0: int, top: int, left: int, assign: bool) -> None:
    model = Canvas((c0, top, left), (4 + c0, 15, 20 + c0), assign, keep=False).eval()
    result = torchprobe.receptive_field(model, SIZE)
    assert notes(result) == []
    assert result.layer("head").unknown is None
    assert compare(model, result) == (0, 0)


@settings(max_examples=6, deadline=None)
@given(c0=st.integers(0, 2), top=st.integers(0, 5), left=st.integers(0, 6), assign=st.booleans())
def test_a_box_written_into_a_canvas_that_read_the_input_is_exact(c0: int, top: int, left: int, assign: bool) -> None:
    """Inside the box the units read what was written, outside what the canvas held (MViT's
    relative-position add into the attention map's token block)."""
    model = Canvas((c0, top, left), (4 + c0, 15, 20), assign, keep=True).eval()
    result = torchprobe.receptive_field(model, SIZE)
    # each row's unit now depends on the column too (inside the box or not): the head conv notes
    # that its pixel sets are products of per-axis hulls; the spans themselves are exact
    assert all("slides along a dim that holds several input axes" in n for n in notes(result))
    assert compare(model, result) == (0, 0)


def test_a_constant_written_into_part_of_a_tensor_reads_nothing_there() -> None:
    def blanked(m: OpModel, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, :, 2:6, 3:] = 0.0
        return x

    model = OpModel(blanked).eval()
    result = torchprobe.receptive_field(model, SIZE)
    assert all("slides along a dim that holds several input axes" in n for n in notes(result))
    assert compare(model, result) == (0, 0)


def test_a_scattered_write_is_noted() -> None:
    def scattered(m: OpModel, x: torch.Tensor) -> torch.Tensor:
        canvas = x.new_zeros(1, 4, 12, 14)
        canvas[:, :, m.index] = x[:, :, :7]
        return canvas

    model = OpModel(scattered).eval()
    result = torchprobe.receptive_field(model, SIZE)
    assert any("not a box of the tensor" in n for n in notes(result))
    assert compare(model, result)[0] == 0


SCATTERS: dict[str, Op] = {
    "index_put": lambda m, x: x.new_zeros(1, 4, 12, 14).index_put_(
        (torch.tensor([0]), torch.tensor([1]), torch.tensor([3]), torch.tensor([5])), x[0, 0, 0, 0]),
    "scatter": lambda m, x: x.new_zeros(1, 4, 12, 14).scatter_(
        2, m.index.view(1, 1, 7, 1).expand(1, 4, 7, 14), x[:, :, :7]),
    "index_add": lambda m, x: x.new_zeros(1, 4, 12, 14).index_add_(2, m.index, x[:, :, :7]),
}


@pytest.mark.parametrize("name", SCATTERS)
def test_a_write_at_tensor_held_indices_is_noted_and_contains_the_truth(name: str) -> None:
    model = OpModel(SCATTERS[name]).eval()
    result = torchprobe.receptive_field(model, SIZE)
    assert any("not a box of the tensor" in n for n in notes(result))
    assert result.layer("head").unknown is None
    assert compare(model, result)[0] == 0


def test_repeat_interleave_with_a_count_per_unit() -> None:
    counts = torch.tensor([2, 0, 1, 3, 1, 1, 2, 0, 1, 1])
    model = OpModel(lambda m, x: x.repeat_interleave(counts, dim=2)).eval()
    exact = torchprobe.receptive_field(model, SIZE, device="cpu")
    assert notes(exact) == []
    assert compare(model, exact) == (0, 0)
    from_input = OpModel(lambda m, x: x.repeat_interleave((x[0, 0, :, 0] > 0).long() + 1, dim=2)[:, :, :10]).eval()
    hidden = torchprobe.receptive_field(from_input, SIZE, device="cpu")
    assert hidden.layer("head").is_global == (True, False)
    assert any("repeat_interleave repeats each unit" in n for n in notes(hidden))
