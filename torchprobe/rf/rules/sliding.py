"""Sliding windows: convolutions (plain and transposed) and pooling (fixed and adaptive)."""

from __future__ import annotations

from torchprobe.rf.rules.core import RuleContext, RuleResult, n_spatial, per_axis, register_rf_rule, spatial


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
