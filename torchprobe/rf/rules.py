"""Receptive-field rules: how each torch function moves the span maps of its input.

A rule is written once per function (``conv2d`` covers ``nn.Conv2d`` and ``F.conv2d``) and gets a
:class:`RuleContext`. It returns the output's :class:`TensorRF` (or a list, one per output tensor),
None when the output does not depend on the input's values, or an :class:`UnknownRF`.
Third parties register rules for their own ops or modules with :func:`register_rf_rule` or the
``torchprobe.rf_rules`` entry-point group (loading the entry point registers its rules).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any

import numpy as np
import torch
from torch import nn

from torchprobe.rf.axis import AxisMap
from torchprobe.trace import tensors_in
from torchprobe.rf.state import RFState, TensorRF, UnknownRF

RULE_ENTRY_POINT_GROUP = "torchprobe.rf_rules"
RuleResult = RFState | Sequence[RFState | None] | None


@dataclass
class RuleContext:
    """What a rule sees: the call's arguments, its output, and the RF state of any tensor."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any
    state_of: Callable[[torch.Tensor], RFState | None]
    module: nn.Module | None = None
    notes: list[str] = field(default_factory=list)  # approximations the rule had to make

    def note(self, message: str) -> None:
        self.notes.append(message)

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[index] if index < len(self.args) else default

    @property
    def tensors(self) -> list[torch.Tensor]:
        """Every tensor among the arguments, in order (inside lists too)."""
        return tensors_in((self.args, self.kwargs))

    @property
    def input(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def input_state(self) -> RFState | None:
        return self.state_of(self.input)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(tensors_in(self.output)[0].shape)


Rule = Callable[[RuleContext], RuleResult]


@dataclass
class RuleRegistry:
    """Rules by canonical op name and by module class (a module rule replaces its internals)."""

    ops: dict[str, Rule] = field(default_factory=dict)
    modules: dict[type, Rule] = field(default_factory=dict)
    _loaded_entry_points: bool = False

    def register(self, *targets: str | Callable[..., Any] | type[nn.Module]) -> Callable[[Rule], Rule]:
        """Decorator: ``@register_rf_rule("my_op", MyLayer)``; strings and functions name ops."""

        def decorate(rule: Rule) -> Rule:
            for target in targets:
                if isinstance(target, type) and issubclass(target, nn.Module):
                    self.modules[target] = rule
                else:
                    self.ops[target if isinstance(target, str) else target.__name__] = rule
            return rule

        return decorate

    def for_op(self, name: str) -> Rule | None:
        self._load_entry_points()
        if name in self.ops:
            return self.ops[name]
        return pointwise if is_pointwise_aten(name) else None

    def for_module(self, module: nn.Module) -> Rule | None:
        self._load_entry_points()
        return next((self.modules[c] for c in type(module).__mro__ if c in self.modules), None)

    def _load_entry_points(self) -> None:
        if not self._loaded_entry_points:
            self._loaded_entry_points = True
            for ep in entry_points(group=RULE_ENTRY_POINT_GROUP):
                ep.load()


RULES = RuleRegistry()
register_rf_rule = RULES.register


@cache
def is_pointwise_aten(name: str) -> bool:
    """PyTorch tags elementwise ATen ops ``pointwise``: those keep every unit's RF as is."""
    packet = getattr(torch.ops.aten, name, None)
    if packet is None or not hasattr(packet, "overloads"):
        return False
    return any(torch.Tag.pointwise in getattr(packet, o).tags for o in packet.overloads())


# -- helpers ---------------------------------------------------------------------------------------


def _first_unknown(states: Sequence[RFState | None]) -> UnknownRF | None:
    return next((s for s in states if isinstance(s, UnknownRF)), None)


def merge(tensors: Sequence[torch.Tensor], states: Sequence[RFState | None], out_shape: Sequence[int]) -> RFState | None:
    """Broadcasting merge: each output unit sees the union of what its operands' units see.

    An operand broadcast along an axis (size 1 there) brings the same span to every unit: that is
    how squeeze-excitation makes the RF global. Operands whose unit grids differ are misaligned.
    """
    distinct = {(tuple(t.shape), s): t for t, s in zip(tensors, states) if s is not None}  # DenseNet cats many alike
    known = [(t, s) for (_, s), t in distinct.items()]
    if not known:
        return None
    unknown = _first_unknown([s for _, s in known])
    if unknown:
        return unknown
    n_axes = len(known[0][1].axes)
    axes, dims, aligned = [], [], all(s.aligned for _, s in known)
    for a in range(n_axes):
        merged: AxisMap | None = None
        dim: int | None = None
        grids = set()
        for t, s in known:
            m, d = s.axes[a], s.dims[a]
            if d is not None and (-d > t.dim() or t.shape[d] == 1) and -d <= len(out_shape) and out_shape[d] != 1:
                m = m.reduced()
            elif d is not None:
                grids.add((m.jump, m.start))
            dim = d if dim is None else dim
            units = 1 if dim is None or -dim > len(out_shape) else out_shape[dim]
            merged = m if merged is None else merged.union(m, units)
        aligned = aligned and len(grids) <= 1
        axes.append(merged.broadcast(units))
        dims.append(dim)
    return TensorRF(tuple(axes), tuple(dims), aligned)


def pointwise(ctx: RuleContext) -> RuleResult:
    """Elementwise ops, activations, normalisations, dropout: a merge of the tensor operands."""
    tensors = ctx.tensors
    return merge(tensors, [ctx.state_of(t) for t in tensors], ctx.out_shape)


def spatial(
    ctx: RuleContext,
    n: int,
    geometry: Callable[[int, AxisMap, int, int], AxisMap],
    mixes_channels: bool = False,
) -> RuleResult:
    """Apply ``geometry(i, map, in_units, out_units)`` to the last ``n`` dims (spatial axis ``i``)."""
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    in_shape, out_shape = tuple(ctx.input.shape), ctx.out_shape

    def move(a: int, m: AxisMap, d: int | None) -> tuple[AxisMap, int | None]:
        if d is None:
            return m, None
        if -n <= d <= -1:
            return geometry(n + d, m, in_shape[d], out_shape[d]), d
        return state.reduced(a, keep_dim=True) if mixes_channels else (m, d)

    return state.map_axes(move)


def per_axis(value: Any, n: int) -> tuple[int, ...]:
    """``3`` or ``(3,)`` or ``(3, 5)`` -> one int per spatial axis."""
    if isinstance(value, int):
        return (value,) * n
    values = tuple(int(v) for v in value)
    return values * n if len(values) == 1 else values


def _n_spatial(name: str) -> int:
    """``max_pool2d_with_indices`` -> 2."""
    return int(name.removesuffix("_with_indices")[-2])


# -- convolution and pooling -----------------------------------------------------------------------


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
        ctx, n, lambda i, m, _in, out: m.transposed(kernel[i], stride[i], padding[i], dilation[i], out), mixes_channels=True
    )


def _pool_rule(kernel_pos: int, has_padding: bool, has_dilation: bool) -> Rule:
    def rule(ctx: RuleContext) -> RuleResult:
        n = _n_spatial(ctx.name)
        kernel = per_axis(ctx.arg(kernel_pos, "kernel_size"), n)
        stride = ctx.arg(kernel_pos + 1, "stride")
        stride = kernel if stride is None or stride == [] or stride == () else per_axis(stride, n)
        padding = per_axis(ctx.arg(kernel_pos + 2, "padding", 0), n) if has_padding else (0,) * n
        dilation = per_axis(ctx.arg(kernel_pos + 3, "dilation", 1), n) if has_dilation else (1,) * n
        return spatial(ctx, n, lambda i, m, _in, out: m.sliding(kernel[i], stride[i], padding[i], dilation[i], out))

    return rule


for _n in (1, 2, 3):
    register_rf_rule(f"max_pool{_n}d", f"max_pool{_n}d_with_indices")(_pool_rule(1, True, True))
    register_rf_rule(f"avg_pool{_n}d")(_pool_rule(1, True, False))
    register_rf_rule(f"lp_pool{_n}d")(_pool_rule(2, False, False))


def adaptive_windows(in_units: int, out_units: int) -> list[range]:
    """PyTorch's adaptive pooling windows: ``[floor(o*in/out), ceil((o+1)*in/out))``."""
    return [range(o * in_units // out_units, -(-(o + 1) * in_units // out_units)) for o in range(out_units)]


@register_rf_rule(
    *(f"adaptive_{kind}_pool{n}d{suffix}" for kind in ("avg", "max") for n in (1, 2, 3) for suffix in ("", "_with_indices"))
)
def adaptive_pool(ctx: RuleContext) -> RuleResult:
    n = _n_spatial(ctx.name)
    return spatial(ctx, n, lambda i, m, size_in, size_out: m.gathered(adaptive_windows(size_in, size_out)))


# -- resampling ------------------------------------------------------------------------------------


def interpolation_taps(
    size_in: int, size_out: int, mode: str, align_corners: bool, scale_factor: float | None, precision: type = np.float32
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
    dst = out.astype(precision)
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
        lambda i, m, size_in, size_out: m.gathered(interpolation_taps(size_in, size_out, mode, bool(align), scales[i], precision)),
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


# -- elementwise, merges, identities ---------------------------------------------------------------

POINTWISE = (
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm", "local_response_norm",
    "hardswish", "prelu", "rrelu", "channel_shuffle", "native_channel_shuffle", "threshold",
    "clone", "contiguous", "detach", "to", "float", "double", "half", "bfloat16", "type", "type_as",
    "cpu", "cuda", "data", "real", "requires_grad", "alias", "relu", "silu", "mish", "gelu", "elu",
    "selu", "celu", "glu_", "softsign", "tanhshrink", "hardshrink", "softshrink", "logsigmoid", "softplus",
)
register_rf_rule(*POINTWISE)(pointwise)


@register_rf_rule(
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
    "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "size", "dim", "numel",
)
def value_free(ctx: RuleContext) -> RuleResult:
    """The output depends on the input's shape, not on its values."""
    return None


@register_rf_rule("cat", "concat", "concatenate")
def cat(ctx: RuleContext) -> RuleResult:
    tensors = [t for t in ctx.arg(0, "tensors") if isinstance(t, torch.Tensor)]
    states = [ctx.state_of(t) for t in tensors]
    out_shape = ctx.out_shape
    dim = ctx.arg(1, "dim", 0)
    dim = dim - len(out_shape) if dim >= 0 else dim
    carried = [s for s in states if isinstance(s, TensorRF)]
    if not carried or dim not in carried[0].dims:
        return merge(tensors, states, out_shape)
    unknown = _first_unknown(states)
    if unknown:
        return unknown
    # concatenation along a spatial axis: units come from one operand after the other
    axis = carried[0].dims.index(dim)
    new_axis = AxisMap.concatenated([(s.axes[axis] if s else None, t.shape[dim]) for t, s in zip(tensors, states)], carried[0].axes[axis].size)
    others = merge(tensors, [s if s is None else _without_axis(s, axis) for s in states], out_shape)
    base = others if isinstance(others, TensorRF) else carried[0]
    # every part's support terms, in the order the new axis lists them
    axes = [new_axis if b == axis else m.with_terms(term.broadcast(m.units) for s in carried for term in s.axes[b].terms)
            for b, m in enumerate(base.axes)]
    return TensorRF(tuple(axes), base.dims[:axis] + (dim,) + base.dims[axis + 1 :], base.aligned)


def _without_axis(state: RFState, axis: int) -> RFState:
    """The same state with ``axis`` detached from its dim (its map is replaced by the caller)."""
    if not isinstance(state, TensorRF):
        return state
    dims = list(state.dims)
    dims[axis] = None
    return TensorRF(state.axes, tuple(dims), state.aligned)


@register_rf_rule("stack")
def stack(ctx: RuleContext) -> RuleResult:
    tensors = [t for t in ctx.arg(0, "tensors") if isinstance(t, torch.Tensor)]
    states = [ctx.state_of(t) for t in tensors]
    ndim = tensors[0].dim()
    dim = ctx.arg(1, "dim", 0)
    dim = dim + ndim + 1 if dim < 0 else dim
    moved = [s if not isinstance(s, TensorRF) else s.with_dims(lambda d: d - 1 if ndim + d >= dim else d) for s in states]
    return merge([t.unsqueeze(dim) for t in tensors], moved, ctx.out_shape)


@register_rf_rule("setitem")
def setitem(ctx: RuleContext) -> RuleResult:
    """``x[idx] = value`` in place: every unit of ``x`` may now also see what ``value`` sees."""
    x, value = ctx.args[0], ctx.args[2]
    if not isinstance(value, torch.Tensor) or ctx.state_of(value) is None:
        return ctx.state_of(x)
    ctx.note("an indexed assignment is counted as reaching every unit, an over-estimate")
    return merge([x, value], [ctx.state_of(x), reduce_dims(ctx.state_of(value), tuple(value.shape), list(range(-value.dim(), 0)), keepdim=False)], tuple(x.shape))


@register_rf_rule("expand", "expand_as", "broadcast_to")
def expand(ctx: RuleContext) -> RuleResult:
    return merge([ctx.input], [ctx.input_state], ctx.out_shape)


# -- reductions and contractions -------------------------------------------------------------------


def _normalise_dims(dim: Any, ndim: int) -> list[int]:
    """Dims as negative indices; None or () means every dim."""
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return list(range(-ndim, 0))
    dims = [dim] if isinstance(dim, int) else list(dim)
    return [d - ndim if d >= 0 else d for d in dims]


def reduce_dims(state: RFState | None, shape: Sequence[int], dims: Sequence[int], keepdim: bool) -> RFState | None:
    """Units combined along ``dims``: an axis there sees its whole hull; others move left."""
    if not isinstance(state, TensorRF):
        return state

    def move(d: int) -> int | None:
        if d in dims:
            return d if keepdim else None
        return d if keepdim else d + sum(1 for r in dims if r > d)

    kept = state.with_dims(move)
    if keepdim:  # the reduced axes keep their (now size-1) dim
        return kept.map_axes(lambda a, m, d: state.reduced(a, keep_dim=True) if d in dims else (m, d))
    return kept


@register_rf_rule(
    "mean", "sum", "nansum", "nanmean", "amax", "amin", "prod", "std", "var", "logsumexp", "median",
    "nanmedian", "all", "any", "argmax", "argmin", "count_nonzero", "max", "min", "norm", "std_mean", "var_mean",
)
def reduction(ctx: RuleContext) -> RuleResult:
    tensors = ctx.tensors
    if ctx.name in ("max", "min") and len(tensors) > 1:  # torch.max(a, b) is elementwise
        return pointwise(ctx)
    x = ctx.input
    dim = ctx.arg(2 if ctx.name == "norm" else 1, "dim")
    if not isinstance(dim, (int, tuple, list, type(None))):  # e.g. norm's p given positionally
        dim = None
    keepdim = len(ctx.out_shape) == x.dim() and x.dim() > 0
    return reduce_dims(ctx.input_state, tuple(x.shape), _normalise_dims(dim, x.dim()), keepdim)


@register_rf_rule("softmax", "log_softmax", "softmin", "normalize")
def along_dim(ctx: RuleContext) -> RuleResult:
    """Each unit depends on every unit along ``dim``, and the dim stays."""
    x = ctx.input
    dim = ctx.arg(2 if ctx.name == "normalize" else 1, "dim", 1 if ctx.name == "normalize" else None)
    dims = _normalise_dims(dim, x.dim())
    return reduce_dims(ctx.input_state, tuple(x.shape), dims, keepdim=True)


@register_rf_rule("linear", "bilinear")
def linear(ctx: RuleContext) -> RuleResult:
    """A Linear contracts the last dim: an axis there becomes global; the others are untouched."""
    states = [reduce_dims(ctx.state_of(t), tuple(t.shape), [-1], keepdim=True) for t in ctx.tensors]
    return merge(ctx.tensors, states, ctx.out_shape)


@register_rf_rule("matmul", "mm", "bmm")
def matmul(ctx: RuleContext) -> RuleResult:
    a, b = ctx.tensors[:2]
    if a.dim() < 2 or b.dim() < 2:
        return UnknownRF(f"{ctx.name} of a 1-D operand", "")
    sa = reduce_dims(ctx.state_of(a), tuple(a.shape), [-1], keepdim=True)
    sb = reduce_dims(ctx.state_of(b), tuple(b.shape), [-2], keepdim=True)
    out = ctx.out_shape
    return merge([a[..., :1].expand(*a.shape[:-1], out[-1]), b[..., :1, :].expand(*b.shape[:-2], out[-2], b.shape[-1])], [sa, sb], out)


# -- views and re-indexing -------------------------------------------------------------------------


def view_groups(in_shape: Sequence[int], out_shape: Sequence[int]) -> dict[int, int] | None:
    """Input dims that survive a view unchanged -> their output dim (both as negative indices).

    Dims are grouped by equal running products, as ``Tensor.view`` does; a group keeps a dim only
    when it holds exactly one dim of size > 1 on each side. Others are merged or split.
    """
    kept: dict[int, int] = {}
    i = j = 0
    n_in, n_out = len(in_shape), len(out_shape)
    while i < n_in or j < n_out:
        gi, gj = [i], [j]
        p_in = in_shape[i] if i < n_in else 1
        p_out = out_shape[j] if j < n_out else 1
        i, j = i + 1, j + 1
        while p_in != p_out:
            if p_in < p_out and i < n_in:
                p_in *= in_shape[i]
                gi.append(i)
                i += 1
            elif j < n_out:
                p_out *= out_shape[j]
                gj.append(j)
                j += 1
            else:
                return None
        big_in = [d for d in gi if d < n_in and in_shape[d] > 1]
        big_out = [d for d in gj if d < n_out and out_shape[d] > 1]
        if len(big_in) == 1 and len(big_out) == 1:
            kept[big_in[0] - n_in] = big_out[0] - n_out
    return kept


@register_rf_rule("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel")
def view(ctx: RuleContext) -> RuleResult:
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    in_shape = tuple(ctx.input.shape)
    groups = view_groups(in_shape, ctx.out_shape)
    if groups is None:
        return UnknownRF(ctx.name, "")
    if math.prod(ctx.out_shape[1:]) and len(ctx.out_shape) > len(in_shape) and any(
        d is not None and d not in groups and in_shape[d] > 1 for d in state.dims
    ):
        ctx.note(f"{ctx.name} splits a spatial dim into several (windows, patches): the axis is treated as reduced, an over-estimate")
    return state.with_dims(groups.get)


def _permutation(ctx: RuleContext) -> list[int]:
    """``perm`` with output dim ``j`` = input dim ``perm[j]`` (non-negative)."""
    ndim = ctx.input.dim()
    if ctx.name == "permute":
        dims = ctx.args[1:] if len(ctx.args) > 2 or isinstance(ctx.arg(1, "dims"), int) else ctx.arg(1, "dims")
        return [d % ndim for d in dims]
    perm = list(range(ndim))
    if ctx.name in ("T", "t"):
        return perm[::-1]
    if ctx.name == "mT":
        perm[-2], perm[-1] = perm[-1], perm[-2]
        return perm
    a, b = ctx.arg(1, "dim0"), ctx.arg(2, "dim1")
    if ctx.name in ("movedim", "moveaxis"):
        sources = [a] if isinstance(a, int) else list(a)
        targets = [b] if isinstance(b, int) else list(b)
        sources, targets = [s % ndim for s in sources], [t % ndim for t in targets]
        rest = [d for d in perm if d not in sources]
        out = [None] * ndim
        for s, t in zip(sources, targets):
            out[t] = s
        it = iter(rest)
        return [d if d is not None else next(it) for d in out]
    a, b = a % ndim, b % ndim
    perm[a], perm[b] = perm[b], perm[a]
    return perm


@register_rf_rule("permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "T", "mT")
def permute(ctx: RuleContext) -> RuleResult:
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    ndim = ctx.input.dim()
    perm = _permutation(ctx)
    return state.with_dims(lambda d: perm.index(d + ndim) - ndim)


@register_rf_rule("getitem")
def getitem(ctx: RuleContext) -> RuleResult:
    """Basic indexing: slices crop and stride an axis, an integer picks one unit of it."""
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    x = ctx.input
    index = ctx.args[1] if isinstance(ctx.args[1], tuple) else (ctx.args[1],)
    if any(isinstance(i, (torch.Tensor, list, bool)) for i in index):
        return UnknownRF("getitem with tensor indices", "")
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for i in index:
        expanded += [slice(None)] * (x.dim() - n_real) if i is Ellipsis else [i]
    expanded += [slice(None)] * (x.dim() - sum(1 for i in expanded if i is not None))
    axes, dims = list(state.axes), list(state.dims)
    in_dim = out_dim = 0
    out_ndim = len(ctx.out_shape)
    new_dims: dict[int, int | None] = {}
    for item in expanded:
        if item is None:
            out_dim += 1
            continue
        neg_in = in_dim - x.dim()
        if isinstance(item, slice):
            new_dims[neg_in] = out_dim - out_ndim
            if neg_in in dims:
                a = dims.index(neg_in)
                picked = range(*item.indices(x.shape[neg_in]))
                axes[a] = axes[a].sliding(1, picked.step, -picked.start, 1, len(picked))
            out_dim += 1
        else:  # an integer: the dim disappears, the axis keeps that unit's span
            new_dims[neg_in] = None
            if neg_in in dims:
                a = dims.index(neg_in)
                axes[a] = axes[a].picked(int(item) % x.shape[neg_in])
        in_dim += 1
    return TensorRF(tuple(axes), tuple(None if d is None else new_dims.get(d) for d in dims), state.aligned)


def _along(ctx: RuleContext, dim: int, geometry: Callable[[AxisMap, int, int], AxisMap]) -> RuleResult:
    """Apply ``geometry(map, in_units, out_units)`` to the axis carried by tensor dim ``dim``."""
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    x = ctx.input
    neg = dim - x.dim() if dim >= 0 else dim
    out_shape = ctx.out_shape
    return state.map_axes(lambda a, m, d: (geometry(m, x.shape[d], out_shape[d]), d) if d == neg else (m, d))


@register_rf_rule("chunk", "split", "split_with_sizes", "tensor_split", "unbind")
def split(ctx: RuleContext) -> RuleResult:
    """Pieces along a dim: along a spatial axis each piece is a crop of it (unbind: one unit)."""
    state = ctx.input_state
    if not isinstance(state, TensorRF):
        return state
    x = ctx.input
    pieces = tensors_in(ctx.output)
    dim = ctx.arg(1, "dim", 0) if ctx.name == "unbind" else ctx.arg(2, "dim", 0)
    neg = dim - x.dim() if dim >= 0 else dim
    if neg not in state.dims:
        return [state] * len(pieces)
    axis = state.dims.index(neg)
    results: list[RFState | None] = []
    offset = 0
    for piece in pieces:
        m = state.axes[axis]
        if ctx.name == "unbind":
            new, dim_out = m.picked(offset), None
            offset += 1
        else:
            new, dim_out = m.sliding(1, 1, -offset, 1, piece.shape[neg]), neg
            offset += piece.shape[neg]
        axes, dims = list(state.axes), list(state.dims)
        axes[axis], dims[axis] = new, dim_out
        if dim_out is None:  # the dim is gone: dims to its left move one closer to the end
            dims = [d if d is None or d > neg else d + 1 for d in dims]
            dims[axis] = None
        results.append(TensorRF(tuple(axes), tuple(dims), state.aligned))
    return results


@register_rf_rule("roll")
def roll(ctx: RuleContext) -> RuleResult:
    """Circular shift: unit ``o`` holds what unit ``o - shift`` held (mod the size)."""
    shifts, dims = ctx.arg(1, "shifts"), ctx.arg(2, "dims")
    if dims is None:
        return UnknownRF("roll without dims (flattened)", "")
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    state = ctx.input_state
    for shift, dim in zip(shifts, dims):
        step = RuleContext(ctx.name, ctx.args, ctx.kwargs, ctx.output, lambda t, s=state: s)
        state = _along(step, dim, lambda m, n, _out, k=shift: m.gathered([[(o - k) % n] for o in range(n)]))
    return state


@register_rf_rule("cumsum", "cumprod", "cummax", "cummin", "logcumsumexp")
def cumulative(ctx: RuleContext) -> RuleResult:
    """Unit ``o`` along ``dim`` depends on units ``0 .. o``."""
    return _along(ctx, ctx.arg(1, "dim"), lambda m, _in, _out: m.cumulative())


def _attention(ctx: RuleContext, query: torch.Tensor, keys: Sequence[torch.Tensor], seq_dim: int) -> RuleResult:
    """Each output token sees its query token and every key/value token."""
    states = [ctx.state_of(query)] + [reduce_dims(ctx.state_of(k), tuple(k.shape), [seq_dim], keepdim=True) for k in keys]
    like_query = [query] + [query for _ in keys]  # keys reduced to a constant: broadcast as the query
    return merge(like_query, states, ctx.out_shape)


@register_rf_rule("multi_head_attention_forward")
def multi_head_attention(ctx: RuleContext) -> RuleResult:
    query, key, value = ctx.args[:3]
    return _attention(ctx, query, [key, value], -3 if query.dim() == 3 else -2)


@register_rf_rule("scaled_dot_product_attention")
def scaled_dot_product_attention(ctx: RuleContext) -> RuleResult:
    query, key, value = ctx.args[:3]
    return _attention(ctx, query, [key, value], -2)
