"""Blocks and whole-axis ops against the gradient measurement, every unit of small models:
``F.unfold``/``F.fold`` with random geometry, unfold-based local attention (each pixel attends to
its k x k neighbourhood), ``Tensor.unfold`` windows, ``rot90`` and FFTs (global along the
transformed dims). Also the RF numbers (rf, jump) of rows after such ops: the convention beyond
the tensor must step on as the real units do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchprobe
from tests.test_rf_indexing import SIZE, OpModel, compare, notes


class LocalAttention(nn.Module):
    """conv -> unfold k x k neighbourhoods -> softmax(q . k) over them -> weighted sum of values ->
    conv: every pixel reads its neighbourhood of the first conv's output."""

    def __init__(self, kernel: int, dilation: int) -> None:
        super().__init__()
        self.kernel, self.dilation = kernel, dilation
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        n, c, h, w = x.shape
        k = self.kernel
        neighbours = F.unfold(x, k, dilation=self.dilation, padding=self.dilation * (k // 2)).view(n, c, k * k, h * w)
        weights = (x.view(n, c, 1, h * w) * neighbours).sum(1, keepdim=True).softmax(2)
        return self.head((weights * neighbours).sum(2).view(n, c, h, w))


@settings(max_examples=6, deadline=None)
@given(kernel=st.sampled_from([3, 5]), dilation=st.integers(1, 2))
def test_unfold_local_attention(kernel: int, dilation: int) -> None:
    model = LocalAttention(kernel, dilation).eval()
    result = torchprobe.receptive_field(model, SIZE)
    assert notes(result) == []
    assert compare(model, result) == (0, 0)
    reach = 3 + dilation * (kernel - 1) + 2  # conv, the neighbourhood, the head conv
    assert result.layer("head").rf == (reach, reach)
    assert result.layer("head").jump == (1, 1)


@settings(max_examples=8, deadline=None)
@given(kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 2), sw=st.integers(1, 3),
       ph=st.integers(0, 1), dw=st.integers(1, 2))
def test_unfold_then_fold_random_geometry(kh: int, kw: int, sh: int, sw: int, ph: int, dw: int) -> None:
    """fold(unfold(x)) with the same geometry: each pixel reads itself where a block covers it,
    nothing where none does (a stride past the kernel skips pixels)."""
    geometry = dict(kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, 0), dilation=(1, dw))

    def there_and_back(m: OpModel, x: torch.Tensor) -> torch.Tensor:
        return F.fold(F.unfold(x, **geometry), x.shape[-2:], **geometry)

    model = OpModel(there_and_back).eval()
    result = torchprobe.receptive_field(model, SIZE)
    assert compare(model, result) == (0, 0)


def test_unfold_strided_blocks_step_with_the_stride() -> None:
    """Blocks of 3 x 3 dilated by 2 every 2 pixels, summed: one unit per block, rf 3 + 4, jump 2;
    the head conv then reads 3 blocks: rf 7 + 2 * 2 = 11."""
    model = OpModel(lambda m, x: F.unfold(x, 3, dilation=2, padding=1, stride=2).view(1, 4, 9, -1).sum(2).view(
        1, 4, 4, 6)).eval()
    result = torchprobe.receptive_field(model, SIZE)
    assert compare(model, result) == (0, 0)
    head = result.layer("head")
    assert (head.rf, head.jump) == ((11, 11), (2, 2))


def test_tensor_unfold_windows() -> None:
    model = OpModel(lambda m, x: x.unfold(3, 4, 2).sum(-1)).eval()
    result = torchprobe.receptive_field(model, SIZE)
    assert compare(model, result) == (0, 0)
    head = result.layer("head")
    assert (head.rf, head.jump) == ((5, 3 + 3 + 2 * 2), (1, 2))


def test_rot90_turns_the_axes() -> None:
    for k in (1, 2, 3, -1):
        model = OpModel(lambda m, x, k=k: torch.rot90(x, k, (2, 3))).eval()
        result = torchprobe.receptive_field(model, SIZE)
        assert compare(model, result) == (0, 0), k
        assert result.layer("head").rf == (5, 5)  # conv 3, head 3, whichever way up


def test_fft_is_global_along_the_transformed_dims_only() -> None:
    cases = {
        "rfft": (lambda m, x: torch.view_as_real(torch.fft.rfft(x, dim=3)).flatten(-2)[..., :14], (False, True)),
        "fft2": (lambda m, x: torch.view_as_real(torch.fft.fft2(x)).sum(-1), (True, True)),
        "ifft_h": (lambda m, x: torch.fft.ifft(x, dim=-2).real, (True, False)),
    }
    for name, (op, is_global) in cases.items():
        model = OpModel(op).eval()
        result = torchprobe.receptive_field(model, SIZE)
        assert notes(result) == [], name
        assert result.layer("head").is_global == is_global, name
        assert compare(model, result)[0] == 0, name


class SqueezeExcite(nn.Module):
    """conv -> a gate from the globally pooled features (``pool``) -> the features times the gate:
    every unit sees the whole image, whichever way the pooling is spelled."""

    def __init__(self, pool: str, stride: int) -> None:
        super().__init__()
        self.pool = pool
        self.conv = nn.Conv2d(3, 8, 3, stride=stride, padding=1)
        self.fc = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        pools = {"adaptive": lambda: F.adaptive_avg_pool2d(x, 1), "adaptive max": lambda: F.adaptive_max_pool2d(x, 1),
                 "mean": lambda: x.mean((2, 3), keepdim=True), "amax": lambda: x.amax((2, 3), keepdim=True)}
        pooled = pools[self.pool]()
        return x * torch.sigmoid(self.fc(pooled))


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([1, 2, 3]), st.integers(9, 24))
def test_a_gate_from_global_pooling_reads_the_whole_image_however_it_pools(stride: int, size: int) -> None:
    """A one-unit operand broadcast over the features brings the same span to every unit: the
    rows after the gate must not depend on how the pooling was written (adaptive pooling's map
    steps on beyond its one unit; read as a broadcast it must not): every unit reads the same
    span, no wider than the image plus the padding the convolution reads."""
    rows = {}
    for pool in ("adaptive", "adaptive max", "mean", "amax"):
        output = torchprobe.receptive_field(SqueezeExcite(pool, stride).eval(), (3, size, size)).output
        rows[pool] = (output.rf, output.jump, output.start, output.is_global, output.uniform)
    assert len(set(rows.values())) == 1, rows
    rf, jump, _, _, uniform = rows["mean"]  # (global unless a stride leaves the last pixels unread)
    assert jump == (0, 0) and uniform and all(r <= size + 2 for r in rf)
