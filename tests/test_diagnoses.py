"""Diagnoses that name the input size a model really takes: assertion messages, a missing axis,
admissible sizes that are not an interval (U-Net, MaxViT). Each fix is applied and must run."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models import video

import torchprobe
from torchprobe.shapes.smallest import sizes_text


def diagnosis(model: nn.Module, size: tuple[int, ...]) -> torchprobe.Diagnosis:
    with pytest.raises(torchprobe.ShapeError) as caught:
        torchprobe.trace(model, size)
    return caught.value.diagnosis


def suggested_sizes(fix: str) -> list[tuple[int, ...]]:
    """Every input size a fix names as ``CxHxW``."""
    return [tuple(int(n) for n in m.split("x")) for m in re.findall(r"\b\d+(?:x\d+)+\b", fix)]


def assert_fix_runs(model: nn.Module, fix: str) -> None:
    sizes = suggested_sizes(fix)
    assert sizes, fix
    for size in sizes:
        torchprobe.trace(model, size)  # raises if the suggestion does not fit


# -- 1. assertion messages -------------------------------------------------------------------------


def test_vit_assertion_is_quoted_and_its_size_applied() -> None:
    model = models.vit_b_16(weights=None)
    with pytest.raises(torchprobe.ShapeError) as caught:
        torchprobe.trace(model, (3, 200, 200))
    d = caught.value.diagnosis
    assert d.kind == "assertion"
    assert "Wrong image height! Expected 224 but got 200!" in d.expected
    assert "3x224x224" in d.fix and "_assert" not in d.fix
    assert caught.value.input_related
    assert_fix_runs(model, d.fix)


class Asserting(nn.Module):
    """A plain Python ``assert`` in the forward, with the message a timm PatchEmbed gives."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        assert (h, w) == (32, 32), f"Input image size ({h}*{w}) doesn't match model (32*32)."
        return self.conv(x)


BARE_ASSERT = """
from torch import nn


class Bare(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        assert x.shape[-1] % 16 == 0
        return self.conv(x)
"""


def test_python_assert_message_names_the_size() -> None:
    d = diagnosis(Asserting(), (3, 20, 20))
    assert d.kind == "assertion" and "doesn't match model (32*32)" in d.expected
    assert "3x32x32" in d.fix
    assert_fix_runs(Asserting(), d.fix)


def test_assert_without_message_quotes_its_source(tmp_path: Path) -> None:
    """A module pytest does not rewrite, so that the assertion has no message of its own."""
    (tmp_path / "bare_assert.py").write_text(BARE_ASSERT)
    spec = importlib.util.spec_from_file_location("bare_assert", tmp_path / "bare_assert.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Bare()
    d = diagnosis(model, (3, 20, 20))
    assert d.kind == "assertion" and '"assert x.shape[-1] % 16 == 0"' in d.expected
    assert "3x16x16" in d.fix and "3x32x32" in d.fix  # the sizes that pass, tried
    assert_fix_runs(model, d.fix)


# -- 2. a missing axis is a rank problem -----------------------------------------------------------


def test_video_model_without_a_time_axis() -> None:
    model = video.r3d_18(weights=None)
    d = diagnosis(model, (3, 112, 112))
    assert d.kind == "conv_rank"
    assert "4-D per-sample input C,T,H,W" in d.fix and "3,16,112,112" in d.fix
    assert "Conv3d(1" not in d.fix
    torchprobe.trace(model, (3, 16, 112, 112))


# -- 3. admissible sizes that are not an interval --------------------------------------------------


class UNet(nn.Module):
    """Three 2x poolings down, three 2x upsamplings up, skips joined by cat (or add, as HRNet
    joins branches): only multiples of 8 work."""

    def __init__(self, join: str = "cat") -> None:
        super().__init__()
        self.join = join
        wide = 16 if join == "cat" else 8
        self.inc = nn.Conv2d(3, 8, 3, padding=1)
        self.downs = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(3))
        self.ups = nn.ModuleList(nn.Conv2d(wide, 8, 3, padding=1) for _ in range(3))
        self.out = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc(x)
        skips = []
        for down in self.downs:
            skips.append(x)
            x = down(F.max_pool2d(x, 2))
        for up, skip in zip(self.ups, reversed(skips)):
            x = F.interpolate(x, scale_factor=2.0)
            x = up(torch.cat([x, skip], 1) if self.join == "cat" else x + skip)
        return self.out(x)


@pytest.mark.parametrize("join", ["cat", "add"])
def test_unet_at_an_odd_size_is_told_the_sizes_that_work(join: str) -> None:
    model = UNet(join)
    d = diagnosis(model, (3, 101, 101))
    assert d.kind == "input_size"
    assert "multiples of 8 from 8" in d.expected
    assert "3x96x96" in d.fix and "3x104x104" in d.fix
    assert_fix_runs(model, d.fix)


def test_unet_with_one_odd_axis_keeps_the_other() -> None:
    model = UNet()
    d = diagnosis(model, (3, 101, 96))
    assert d.kind == "input_size" and "3x104x96" in d.fix
    assert_fix_runs(model, d.fix)


def test_too_small_unet_is_not_told_every_larger_size_works() -> None:
    model = UNet()
    d = diagnosis(model, (3, 4, 4))
    assert d.kind == "too_small"
    assert "at least" not in d.expected + d.fix and "multiples of 8 from 8" in d.expected
    assert_fix_runs(model, d.fix)


@pytest.mark.parametrize(
    "passed, bound, text",
    [
        (list(range(64, 257, 32)), 256, "multiples of 32 from 64 (all sizes up to 256 tried)"),
        (list(range(20, 65)), 64, "every size from 20 (all sizes up to 64 tried)"),
        ([31, 32], 39, "only 31, 32 (all sizes up to 39 tried)"),
        ([5, 9, 13, 17, 21, 40], 64, "only 5, 9, 13, 17, 21, 40 (all sizes up to 64 tried)"),
    ],
)
def test_sizes_text_never_claims_more_than_was_tried(passed: list[int], bound: int, text: str) -> None:
    assert sizes_text(passed, bound) == text


# -- 4. MaxViT's window partition ------------------------------------------------------------------


def test_maxvit_at_200_needs_a_size_its_partitions_divide() -> None:
    model = models.maxvit_t(weights=None)
    d = diagnosis(model, (3, 200, 200))
    assert d.kind == "input_size"
    assert "flatten" not in d.fix and "3x224x224" in d.fix
    assert_fix_runs(model, d.fix)


def test_a_conv_that_read_the_input_unbatched_is_a_missing_axis_wherever_it_failed() -> None:
    """Net given (1, 28): its first conv reads [1, 1, 28] as an unbatched C,H,W and the pass
    fails at the BatchNorm after it, which was told to become BatchNorm2d(1); the cause is the
    input's rank, and the fix (a 3-D size) works."""
    from mnist_demo.model import Net

    with pytest.raises(torchprobe.ShapeError) as failure:
        torchprobe.trace(Net(), (1, 28))
    diagnosis = failure.value.diagnosis
    assert diagnosis.kind == "conv_rank" and diagnosis.module == "conv0"
    assert "lacks an axis" in diagnosis.fix and failure.value.input_related
    assert "such as 1,28,28" in diagnosis.fix
    torchprobe.trace(Net(), (1, 28, 28))


def test_an_error_without_a_specific_fix_is_quoted_in_the_one_line_summary() -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("boom")

    with pytest.raises(torchprobe.ShapeError) as failure:
        torchprobe.trace(Boom(), (3,))
    assert failure.value.summary == "(model) (Boom) failed: ValueError: boom"


def test_an_embedding_given_floats_is_told_the_dtype_to_pass() -> None:
    from tests.helpers.zoo import TokenClassifier

    with pytest.raises(torchprobe.ShapeError) as failure:
        torchprobe.trace(TokenClassifier(), (12,))
    assert failure.value.diagnosis.kind == "embedding_dtype" and "--dtype long" in failure.value.diagnosis.fix
    torchprobe.trace(TokenClassifier(), (12,), dtypes=["long"])
