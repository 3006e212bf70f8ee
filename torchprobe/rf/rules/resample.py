"""Resampling and padding: interpolation (ATen's rounding), pixel (un)shuffle, ``F.pad``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from torchprobe.rf.axis import AxisMap
from torchprobe.rf.rules.core import RuleContext, RuleResult, register_rf_rule, spatial
from torchprobe.rf.rules.sliding import adaptive_windows
from torchprobe.rf.state import UnknownRF


def interpolation_taps(
    size_in: int,
    size_out: int,
    mode: str,
    align_corners: bool,
    scale_factor: float | None,
    precision: type = np.float32,
) -> list[list[int]]:
    """Input units with a non-zero weight in each output unit, as ATen computes them: source
    coordinates in ``float`` for nearest modes and in the tensor's math precision (``precision``:
    float for float32/half, double for float64) for the others, so that its rounding is ours
    (nearest 28 -> 46 maps unit 23 to 13, not to 14)."""
    if mode == "area":
        return [list(w) for w in adaptive_windows(size_in, size_out)]
    last = size_in - 1
    out = np.arange(size_out)
    if mode in ("nearest", "nearest-exact"):
        if mode == "nearest" and size_out in (size_in, 2 * size_in):  # ATen's exact shortcuts
            return [[int(o) * size_in // size_out] for o in out]
        scale = _source_scale(size_in, size_out, scale_factor, np.float32)
        shift = np.float32(0.5) if mode == "nearest-exact" else np.float32(0)
        source = np.floor((out.astype(np.float32) + shift) * scale).astype(np.int64)
        return [[min(int(i), last)] for i in source]
    dst: np.ndarray = out.astype(precision)
    if align_corners:
        scale = precision(last) / precision(size_out - 1) if size_out > 1 else precision(0)
        real = scale * dst
    else:
        real = _source_scale(size_in, size_out, scale_factor, precision) * (dst + precision(0.5)) - precision(0.5)
        if mode != "bicubic":
            real = np.maximum(real, precision(0))
    base = np.floor(real)
    offsets = (-1, 0, 1, 2) if mode == "bicubic" else (0, 1)
    return [
        sorted({min(max(int(b) + k, 0), last) for k in (offsets if r != b else (0,))})
        for b, r in zip(base, real)
    ]


def _source_scale(size_in: int, size_out: int, scale_factor: float | None, precision: type) -> np.floating:
    """ATen's ``compute_scales_value``: ``1 / scale_factor`` when given, else ``in / out``."""
    if scale_factor is not None and scale_factor > 0:
        return precision(1.0 / scale_factor)
    return precision(size_in) / precision(size_out)


@register_rf_rule("interpolate", "upsample", "upsample_nearest", "upsample_bilinear")
def interpolate(ctx: RuleContext) -> RuleResult:
    defaults = {"upsample_nearest": ("nearest", False), "upsample_bilinear": ("bilinear", True)}
    mode, align = defaults.get(ctx.name, (ctx.arg(3, "mode", "nearest"), ctx.arg(4, "align_corners", None)))
    if ctx.arg(6, "antialias", False):
        return UnknownRF(f"{ctx.name}(antialias=True)", "")
    n = ctx.input.dim() - 2
    scale = ctx.arg(2, "scale_factor")
    recompute = ctx.arg(5, "recompute_scale_factor", None)
    scales = (None,) * n if scale is None or recompute else per_axis_float(scale, n)
    precision = np.float64 if ctx.input.dtype == torch.float64 else np.float32
    return spatial(
        ctx, n,
        lambda i, m, size_in, size_out: m.gathered(
            interpolation_taps(size_in, size_out, mode, bool(align), scales[i], precision)
        ),
    )


def per_axis_float(value: Any, n: int) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (float(value),) * n
    values = tuple(float(v) for v in value)
    return values * n if len(values) == 1 else values


@register_rf_rule("pixel_shuffle")
def pixel_shuffle(ctx: RuleContext) -> RuleResult:
    r = int(ctx.arg(1, "upscale_factor"))
    return spatial(ctx, 2, lambda i, m, _in, out: m.transposed(r, r, 0, 1, out))  # unit u is input unit u // r


@register_rf_rule("pixel_unshuffle")
def pixel_unshuffle(ctx: RuleContext) -> RuleResult:
    r = int(ctx.arg(1, "downscale_factor"))
    return spatial(ctx, 2, lambda i, m, _in, out: m.sliding(r, r, 0, 1, out))


@register_rf_rule("pad")
def pad(ctx: RuleContext) -> RuleResult:
    amounts = list(ctx.arg(1, "pad"))
    mode = ctx.arg(2, "mode", "constant")
    n = len(amounts) // 2

    def geometry(i: int, m: AxisMap, size_in: int, size_out: int) -> AxisMap:
        left = amounts[2 * (n - 1 - i)]  # F.pad lists the last dim first
        if mode == "constant":
            return m.sliding(1, 1, left, 1, size_out)
        return m.gathered([[_padded_source(o - left, size_in, mode)] for o in range(size_out)])

    return spatial(ctx, n, geometry)


def _padded_source(i: int, n: int, mode: str) -> int:
    if 0 <= i < n:
        return i
    if mode == "reflect":
        return -i if i < 0 else 2 * (n - 1) - i
    if mode == "replicate":
        return min(max(i, 0), n - 1)
    if mode == "circular":
        return i % n
    raise ValueError(f"unknown padding mode {mode!r}")
