"""``cat`` and ``stack`` along every kind of dim, unit by unit against the gradient measurement
(regression tests: cat along a spatial axis crashed its rule, stack off the last dim moved the
spatial axes onto the wrong dims)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchprobe
from tests.helpers.rf_checks import assert_every_unit_matches


class CatAlongSpace(nn.Module):
    """Two branches of different reach, side by side along ``dim`` (2: rows, 3: columns)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.narrow = nn.Conv2d(1, 2, 3, padding=1)
        self.wide = nn.Conv2d(1, 2, 5, padding=2)
        self.head = nn.Conv2d(2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.narrow(x), self.wide(x)], dim=self.dim))


class ChunkAndCatBack(nn.Module):
    """Split the columns in two, treat the halves differently, put them back."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(1, 1, 3, padding=1)
        self.head = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=3)
        return self.head(torch.cat([self.left(a), b], dim=3))


class StackThenMix(nn.Module):
    """Stack two branches on a new dim ``dim`` before the channels, fold it into them, mix."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.a = nn.Conv2d(1, 3, 3, padding=1)
        self.b = nn.Conv2d(1, 3, 1)
        self.head = nn.Conv2d(6, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack([self.a(x), self.b(x)], dim=self.dim)  # (N, 2, C, H, W) or (N, C, 2, H, W)
        return self.head(stacked.flatten(1, 2))


@pytest.mark.parametrize("dim", [2, 3, -1])
def test_cat_along_a_spatial_axis(dim: int) -> None:
    assert_every_unit_matches(CatAlongSpace(dim), (1, 6, 5))


def test_chunk_and_cat_back_along_a_spatial_axis() -> None:
    assert_every_unit_matches(ChunkAndCatBack(), (1, 5, 8))


@pytest.mark.parametrize("dim", [1, 2])
def test_stack_before_the_spatial_dims(dim: int) -> None:
    """Channels = H = W, so dims put on the wrong tensor dim would not crash, only mislead."""
    model = StackThenMix(dim)
    result = torchprobe.receptive_field(model, (1, 7, 7))
    assert result.layer("head").rf == (5, 5) and not any(result.layer("head").is_global)
    assert_every_unit_matches(model, (1, 7, 7))
