"""Re-indexing ops (flip, narrow, repeat, tile, repeat_interleave, roll), unit by unit against the
gradient measurement: each sits between two convolutions so that its geometry shows in the RF."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import torchprobe
from tests.helpers.rf_checks import assert_every_unit_matches

Op = Callable[[torch.Tensor], torch.Tensor]

OPS: dict[str, Op] = {
    "flip columns": lambda x: x.flip(3),
    "flip both": lambda x: torch.flip(x, dims=(2, 3)),
    "fliplr of one sample": lambda x: torch.stack([torch.fliplr(s[0]) for s in x]).unsqueeze(1),
    "narrow rows": lambda x: x.narrow(2, 1, 4),
    "narrow from the end": lambda x: torch.narrow(x, 3, -5, 3),
    "repeat columns": lambda x: x.repeat(1, 1, 1, 2),
    "repeat with a new leading dim": lambda x: x.repeat(2, 1, 1, 1, 3)[0],
    "tile rows": lambda x: x.tile((2, 1)),
    "repeat_interleave rows": lambda x: x.repeat_interleave(2, dim=2),
    "roll two dims": lambda x: x.roll((1, -2), (2, 3)),
}


class Between(nn.Module):
    """conv (asymmetric reach) -> op -> conv, so the op's index pattern shows in every span."""

    def __init__(self, op: Op) -> None:
        super().__init__()
        self.op = op
        self.first = nn.Conv2d(1, 1, (3, 2), padding=(1, 0))
        self.head = nn.Conv2d(1, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.op(self.first(x)))


@pytest.mark.parametrize("name", list(OPS))
def test_every_unit_matches_the_measurement(name: str) -> None:
    model = Between(OPS[name])
    result = torchprobe.receptive_field(model, (1, 7, 8))
    assert result.diagnostics == (), [str(n) for n in result.diagnostics]
    assert_every_unit_matches(model, (1, 7, 8))
