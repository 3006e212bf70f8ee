"""Receptive-field rules: how each torch function moves the span maps of its input.

A rule is written once per function (``conv2d`` covers ``nn.Conv2d`` and ``F.conv2d``) and gets a
:class:`RuleContext`. It returns the output's :class:`~torchprobe.rf.state.TensorRF` (or a list,
one per output tensor), None when the output does not depend on the input's values, or an
:class:`~torchprobe.rf.state.UnknownRF`. This package is the plugin API: register rules for your
own ops or modules with :func:`register_rf_rule` (or the ``torchprobe.rf_rules`` entry-point group)
and build them with :func:`merge`, :func:`spatial`, :func:`reduce_dims` and :func:`per_axis`.
Ops that ATen tags ``pointwise`` need no rule.

The rules by family (``coverage()`` gives the same table from the registry; a test holds them equal):

- ``sliding``: adaptive_avg_pool1d, adaptive_avg_pool1d_with_indices, adaptive_avg_pool2d,
  adaptive_avg_pool2d_with_indices, adaptive_avg_pool3d, adaptive_avg_pool3d_with_indices,
  adaptive_max_pool1d, adaptive_max_pool1d_with_indices, adaptive_max_pool2d,
  adaptive_max_pool2d_with_indices, adaptive_max_pool3d, adaptive_max_pool3d_with_indices, avg_pool1d,
  avg_pool2d, avg_pool3d, conv1d, conv2d, conv3d, conv_transpose1d, conv_transpose2d, conv_transpose3d, fold,
  lp_pool1d, lp_pool2d, lp_pool3d, max_pool1d, max_pool1d_with_indices, max_pool2d, max_pool2d_with_indices,
  max_pool3d, max_pool3d_with_indices, unfold
- ``resample``: interpolate, pad, pixel_shuffle, pixel_unshuffle, upsample, upsample_bilinear,
  upsample_nearest
- ``elementwise``: alias, alpha_dropout, batch_norm, bfloat16, broadcast_to, celu, channel_shuffle, clone,
  contiguous, cpu, cuda, data, detach, dim, double, dropout, dropout1d, dropout2d, dropout3d, elu, empty_like,
  expand, expand_as, feature_alpha_dropout, float, full_like, gelu, glu_, group_norm, half, hardshrink,
  hardswish, instance_norm, layer_norm, local_response_norm, logsigmoid, mish, native_channel_shuffle,
  new_empty, new_full, new_ones, new_tensor, new_zeros, numel, ones_like, prelu, rand_like, randint_like,
  randn_like, real, relu, requires_grad, rms_norm, rrelu, selu, silu, size, softplus, softshrink, softsign,
  tanhshrink, threshold, to, type, type_as, zeros_like
- ``joins``: cat, concat, concatenate, stack
- ``reductions``: all, amax, amin, any, argmax, argmin, bilinear, count_nonzero, fft_fft, fft_fft2, fft_fftn,
  fft_hfft, fft_hfft2, fft_hfftn, fft_ifft, fft_ifft2, fft_ifftn, fft_ihfft, fft_ihfft2, fft_ihfftn,
  fft_irfft, fft_irfft2, fft_irfftn, fft_rfft, fft_rfft2, fft_rfftn, linear, log_softmax, logsumexp, max,
  mean, median, min, nanmean, nanmedian, nansum, norm, normalize, prod, softmax, softmin, std, std_mean, sum,
  var, var_mean, view_as_complex, view_as_real
- ``attention``: bmm, einsum, matmul, mm, multi_head_attention_forward, scaled_dot_product_attention
- ``layout``: T, chunk, cummax, cummin, cumprod, cumsum, flatten, flip, fliplr, flipud, logcumsumexp, mT,
  moveaxis, movedim, narrow, permute, ravel, repeat, repeat_interleave, reshape, reshape_as, roll, rot90,
  split, split_with_sizes, squeeze, swapaxes, swapdims, t, tensor_split, tile, transpose, unbind, unflatten,
  unsqueeze, view, view_as
- ``gathers``: gather, getitem, grid_sample, index_select, take_along_dim
- ``writes``: copy, fill, index_add, index_copy, index_fill, index_put, index_reduce, masked_scatter, put,
  scatter, scatter_add, scatter_reduce, setitem, zero
"""

from torchprobe.rf.rules import attention, elementwise, gathers, joins, layout, reductions, resample, sliding, writes
from torchprobe.rf.rules.core import (
    RULE_ENTRY_POINT_GROUP,
    RULES,
    Rule,
    RuleContext,
    RuleRegistry,
    RuleResult,
    merge,
    per_axis,
    pointwise,
    reduce_dims,
    register_rf_rule,
    spatial,
)

FAMILIES = (sliding, resample, elementwise, joins, reductions, attention, layout, gathers, writes)


def coverage() -> dict[str, list[str]]:
    """The ops each built-in family has rules for, by family (module) name."""
    names = {family.__name__: family.__name__.rsplit(".", 1)[1] for family in FAMILIES}
    table: dict[str, list[str]] = {name: [] for name in names.values()}
    for op, rule in RULES.ops.items():
        if rule.__module__ in names:
            table[names[rule.__module__]].append(op)
    return {family: sorted(ops) for family, ops in table.items()}


__all__ = [
    "FAMILIES", "RULES", "RULE_ENTRY_POINT_GROUP", "Rule", "RuleContext", "RuleRegistry", "RuleResult", "coverage",
    "merge", "per_axis", "pointwise", "reduce_dims", "register_rf_rule", "spatial",
]
