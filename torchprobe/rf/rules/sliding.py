"""Sliding windows: convolutions (plain and transposed), pooling (fixed and adaptive), and the
blocks of ``unfold``/``fold`` (im2col and back)."""

from __future__ import annotations

import math

import numpy as np

from torchprobe.rf.axis import AxisMap
from torchprobe.rf.placement import NO_UNIT, Placement
from torchprobe.rf.rules.core import RuleContext, RuleResult, n_spatial, per_axis, register_rf_rule, spatial
from torchprobe.rf.rules.layout import windows
from torchprobe.rf.state import TensorRF, reindexed, sole


@register_rf_rule("conv1d", "conv2d", "conv3d")
def conv(ctx: RuleContext) -> RuleResult:
    weight = ctx.arg(1, "weight")
    n = weight.dim() - 2
    kernel = tuple(weight.shape[2:])
    stride = per_axis(ctx.arg(3, "stride", 1), n)
    dilation = per_axis(ctx.arg(5, "dilation", 1), n)
    padding = ctx.arg(4, "padding", 0)
    if padding == "valid":
        left = (0,) * n
    elif padding == "same":
        left = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    else:
        left = per_axis(padding, n)
    return spatial(
        ctx, n, lambda i, m, _in, out: m.sliding(kernel[i], stride[i], left[i], dilation[i], out), mixes_channels=True
    )


@register_rf_rule("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def conv_transpose(ctx: RuleContext) -> RuleResult:
    weight = ctx.arg(1, "weight")
    n = weight.dim() - 2
    kernel = tuple(weight.shape[2:])
    stride = per_axis(ctx.arg(3, "stride", 1), n)
    padding = per_axis(ctx.arg(4, "padding", 0), n)
    dilation = per_axis(ctx.arg(7, "dilation", 1), n)
    return spatial(
        ctx,
        n,
        lambda i, m, _in, out: m.transposed(kernel[i], stride[i], padding[i], dilation[i], out),
        mixes_channels=True,
    )


def _pool(ctx: RuleContext, kernel_pos: int, has_padding: bool, has_dilation: bool) -> RuleResult:
    """Pools of every family share the sliding geometry; where their arguments sit differs."""
    n = n_spatial(ctx.name)
    kernel = per_axis(ctx.arg(kernel_pos, "kernel_size"), n)
    stride = ctx.arg(kernel_pos + 1, "stride")
    stride = kernel if stride is None or stride == [] or stride == () else per_axis(stride, n)
    padding = per_axis(ctx.arg(kernel_pos + 2, "padding", 0), n) if has_padding else (0,) * n
    dilation = per_axis(ctx.arg(kernel_pos + 3, "dilation", 1), n) if has_dilation else (1,) * n
    return spatial(ctx, n, lambda i, m, _in, out: m.sliding(kernel[i], stride[i], padding[i], dilation[i], out))


@register_rf_rule(*(f"max_pool{n}d{suffix}" for n in (1, 2, 3) for suffix in ("", "_with_indices")))
def max_pool(ctx: RuleContext) -> RuleResult:
    return _pool(ctx, kernel_pos=1, has_padding=True, has_dilation=True)


@register_rf_rule("avg_pool1d", "avg_pool2d", "avg_pool3d")
def avg_pool(ctx: RuleContext) -> RuleResult:
    return _pool(ctx, kernel_pos=1, has_padding=True, has_dilation=False)


@register_rf_rule("lp_pool1d", "lp_pool2d", "lp_pool3d")
def lp_pool(ctx: RuleContext) -> RuleResult:
    return _pool(ctx, kernel_pos=2, has_padding=False, has_dilation=False)


def adaptive_windows(in_units: int, out_units: int) -> list[range]:
    """PyTorch's adaptive pooling windows: ``[floor(o*in/out), ceil((o+1)*in/out))``."""
    return [range(o * in_units // out_units, -(-(o + 1) * in_units // out_units)) for o in range(out_units)]


@register_rf_rule(
    *(f"adaptive_{kind}_pool{n}d{suffix}"
      for kind in ("avg", "max") for n in (1, 2, 3) for suffix in ("", "_with_indices"))
)
def adaptive_pool(ctx: RuleContext) -> RuleResult:
    n = n_spatial(ctx.name)
    return spatial(ctx, n, lambda i, m, size_in, size_out: m.gathered(adaptive_windows(size_in, size_out)))


SPREAD_NOTE = ("{op} on a tensor whose input axes do not each sit on one dim of its blocks: every unit is "
               "counted as reading all of such an axis, an over-estimate")


@register_rf_rule("unfold")
def unfold(ctx: RuleContext) -> RuleResult:
    """``F.unfold`` (im2col): row ``(c, i, j)`` of block ``l = (oh, ow)`` is pixel
    ``(oh*s - p + i*d, ow*s - p + j*d)``. An axis's unit is then (block position, kernel offset),
    placed on both dims. ``Tensor.unfold`` (a new
    last dim: the rank grows) is a layout op."""
    x = ctx.input
    if len(ctx.out_shape) > x.dim():
        return windows(ctx)
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    n = x.dim() - 2 if x.dim() == 4 else x.dim() - 1  # spatial dims: (N, C, *S) or (C, *S)
    shape = tuple(x.shape)
    kernel, dilation = per_axis(ctx.arg(1, "kernel_size"), n), per_axis(ctx.arg(2, "dilation", 1), n)
    padding, stride = per_axis(ctx.arg(3, "padding", 0), n), per_axis(ctx.arg(4, "stride", 1), n)
    grid = [(shape[i - n] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(n)]
    rows, blocks = np.arange(ctx.out_shape[-2]), np.arange(ctx.out_shape[-1])
    spatial_dims = list(range(-n, 0))
    if any(d not in spatial_dims for p in state.places for d in p.dims):
        ctx.note(SPREAD_NOTE.format(op=ctx.name))
        state = state.reduced_over([d for d in state.unit_dims() if d not in spatial_dims], shape)

    def step(_a: int, m: AxisMap, p: Placement) -> tuple[AxisMap, Placement]:
        if not p.dims:
            return m, p
        if len(p.dims) > 1:
            ctx.note(SPREAD_NOTE.format(op=ctx.name))
            return m.reduced(), Placement.nowhere()
        m, p = sole(m, p)
        i = p.dims[0] + n
        inner, outer = math.prod(kernel[i + 1 :]), math.prod(grid[i + 1 :])
        offsets = (rows // inner) % kernel[i]  # this axis's kernel offset in each row
        positions = (blocks // outer) % grid[i]  # and its block position in each block
        unfolded = m.unfolded(kernel[i], stride[i], padding[i], dilation[i], grid[i])
        return unfolded, Placement.of([(-2, offsets), (-1, positions * kernel[i])])

    return state.map_axes(step)


@register_rf_rule("fold")
def fold(ctx: RuleContext) -> RuleResult:
    """``F.fold`` (col2im): pixel ``(y, x)`` sums every (row, block) whose window covers it; the
    union of their units, spelled out per pixel and compacted."""
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    x, out_shape = ctx.input, ctx.out_shape
    n = len(out_shape) - 2 if x.dim() == 3 else len(out_shape) - 1
    size = per_axis(ctx.arg(1, "output_size"), n)
    kernel, dilation = per_axis(ctx.arg(2, "kernel_size"), n), per_axis(ctx.arg(3, "dilation", 1), n)
    padding, stride = per_axis(ctx.arg(4, "padding", 0), n), per_axis(ctx.arg(5, "stride", 1), n)
    grid = [(size[i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(n)]
    channels = x.shape[-2] // math.prod(kernel)
    # every (row, block): its pixel along each axis
    c, *offsets = np.meshgrid(np.arange(channels), *(np.arange(k) for k in kernel), indexing="ij")
    row = np.ravel_multi_index((c, *offsets), (channels, *kernel)).reshape(-1)
    block = np.arange(math.prod(grid))
    places = np.unravel_index(block, grid)
    pixel = [(places[i][None, :] * stride[i] - padding[i] + offsets[i].reshape(-1)[:, None] * dilation[i])
             for i in range(n)]
    inside = np.logical_and.reduce([(p >= 0) & (p < size[i]) for i, p in enumerate(pixel)])
    rows_at, blocks_at = np.broadcast_arrays(row[:, None], block[None, :])
    target = np.ravel_multi_index(tuple(np.where(inside, p, 0) for p in pixel), size)[inside]
    order = np.argsort(target, kind="stable")  # the (row, block) pairs grouped by the pixel they add to
    sources = (rows_at[inside][order], blocks_at[inside][order])
    splits = np.searchsorted(target[order], np.arange(1, math.prod(size)))
    out_dims = list(range(-n, 0))
    shape = tuple(x.shape)

    def step(_a: int, m: AxisMap, p: Placement) -> tuple[AxisMap, Placement]:
        if not p.dims:
            return m, p
        if any(d not in (-2, -1) for d in p.dims):
            ctx.note(SPREAD_NOTE.format(op=ctx.name))
            return m.reduced(), Placement.nowhere()
        units = p.grid([-2, -1], shape)[sources]
        read = [np.unique(u[u != NO_UNIT]).tolist() for u in np.split(units, splits)]
        return reindexed(m.gathered(read), np.arange(len(read)), out_dims, out_shape)

    return state.map_axes(step)
