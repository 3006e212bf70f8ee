"""Random conv / pool / resampling graphs for the receptive-field property tests.

:class:`GraphGen` draws a model layer by layer (through hypothesis' ``draw``) and keeps track of
the activation shape, so every parameter it picks is valid for the size it meets: spatial sizes
stay >= 1 and below a cap per dimensionality. Every layer is an ``nn.Module`` (so it has a name
that ``measure_receptive_field`` can address); functional forms are modules whose ``forward``
calls ``F.*`` themselves, or composite blocks (:class:`Inline`) that call ``F.*`` between children.

Left out on purpose: (bi/tri)linear interpolation whose source indices floating point cannot
compute exactly (a measurement artefact, see :func:`exact_in_floating_point`). Bicubic is not
generated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

CAP = {1: 64, 2: 40, 3: 12}  # largest spatial size per axis, by number of spatial dims
INPUT = {1: (8, 64), 2: (6, 40), 3: (4, 12)}  # input size range per axis

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONVT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
AVGPOOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
LPPOOL = {1: nn.LPPool1d, 2: nn.LPPool2d, 3: nn.LPPool3d}
AMAX = {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}
AAVG = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
LINEAR_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


@dataclass(frozen=True)
class Shape:
    channels: int
    sizes: tuple[int, ...]


# -- output sizes (PyTorch's formulas) -------------------------------------------------------------


def conv_out(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def pool_out(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    span = d * (k - 1) + 1
    if not ceil_mode:
        return (n + 2 * p - span) // s + 1
    out = -(-(n + 2 * p - span) // s) + 1
    if (out - 1) * s >= n + p:  # the last window must start inside the input or left padding
        out -= 1
    return out


def convt_out(n: int, k: int, s: int, p: int, d: int, op: int) -> int:
    return (n - 1) * s - 2 * p + d * (k - 1) + op + 1


# -- functional calls (plain callables with a readable repr) --------------------------------------


@dataclass(frozen=True)
class Call:
    """``F.<fn>(x, *args, **kwargs)``; shown as the code it runs."""

    fn: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(F, self.fn)(x, *self.args, **dict(self.kwargs))

    def __repr__(self) -> str:
        parts = ["x", *map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs)]
        return f"F.{self.fn}({', '.join(parts)})"


class Fn(nn.Module):
    """A leaf module whose forward is one functional call."""

    def __init__(self, call: Call) -> None:
        super().__init__()
        self.call = call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.call(x)

    def extra_repr(self) -> str:
        return repr(self.call)


class FConv(nn.Module):
    """Convolution through ``F.convNd`` / ``F.conv_transposeNd`` with the module's own weight."""

    def __init__(
        self,
        n: int,
        weight_shape: Sequence[int],
        bias: int | None,
        transposed: bool,
        kw: dict[str, Any],
        positional: bool,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(*weight_shape) * 0.1)
        self.bias = nn.Parameter(torch.zeros(bias)) if bias else None
        self.fn = f"conv_transpose{n}d" if transposed else f"conv{n}d"
        self.kw = kw
        self.positional = positional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = getattr(F, self.fn)
        if self.positional:
            if "transpose" in self.fn:
                order: tuple[str, ...] = ("stride", "padding", "output_padding", "groups", "dilation")
            else:
                order = ("stride", "padding", "dilation", "groups")
            return fn(x, self.weight, self.bias, *(self.kw[k] for k in order))
        return fn(x, self.weight, bias=self.bias, **self.kw)

    def extra_repr(self) -> str:
        weight = tuple(self.weight.shape)
        return f"F.{self.fn}(x, weight{weight}, bias={self.bias is not None}, {self.kw}, positional={self.positional})"


class Upsample(nn.Upsample):
    """``nn.Upsample`` whose repr shows ``align_corners`` too."""

    def extra_repr(self) -> str:
        return super().extra_repr() + f", align_corners={self.align_corners}"


def exact_in_floating_point(size_in: int, size_out: int, align_corners: bool, scale: float | None) -> bool:
    """Whether (bi/tri)linear interpolation computes its source indices exactly here.

    ATen computes ``ratio * (o + 0.5) - 0.5`` (or ``ratio * o`` with align_corners) in floating
    point. Where the exact value is an integer but the ratio is not a dyadic fraction, rounding
    can leave a fraction of 1e-15 and a neighbour tap of weight 1e-15: the gradient measurement
    sees that pixel, the exact analysis (rightly) does not. Such configurations are not generated.
    """
    if align_corners:
        ratio = Fraction(size_in - 1, size_out - 1) if size_out > 1 else Fraction(0)
    else:
        ratio = 1 / Fraction(scale) if scale else Fraction(size_in, size_out)
    if ratio.denominator & (ratio.denominator - 1) == 0:  # a power of two: every step is exact
        return True
    for o in range(1 if align_corners else 0, size_out):
        real = ratio * o if align_corners else ratio * (o + Fraction(1, 2)) - Fraction(1, 2)
        if real >= 0 and real.denominator == 1:
            return False
    return True


class Merge(nn.Module):
    """Two branches from the same input, combined by ``op`` (the residual / concat pattern)."""

    def __init__(self, a: nn.Module, b: nn.Module, op: str) -> None:
        super().__init__()
        self.a, self.b, self.op = a, b, op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ya, yb = self.a(x), self.b(x)
        if self.op == "add":
            return ya + yb
        if self.op == "torch.add":
            return torch.add(ya, yb)
        if self.op == "mul":
            return ya * yb
        if self.op == "cat":
            return torch.cat([ya, yb], dim=1)
        if self.op == "cat3":  # three operands, one of them repeated
            return torch.cat((ya, yb, ya), 1)
        raise ValueError(self.op)

    def extra_repr(self) -> str:
        return f"op={self.op!r}"


class SqueezeExcite(nn.Module):
    """``x * sigmoid(fc(mean(x)))``: a broadcast merge that makes the RF global."""

    def __init__(self, n: int, channels: int) -> None:
        super().__init__()
        self.pool = AAVG[n](1)
        self.fc = CONV[n](channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(self.pool(x)))


class Inline(nn.Module):
    """A composite module that runs child modules and functional calls (``F.max_pool2d`` in a
    ``forward``) in sequence: the calls show up as op rows inside it."""

    def __init__(self, steps: Sequence[nn.Module | Call]) -> None:
        super().__init__()
        self.layers = nn.ModuleList([s for s in steps if isinstance(s, nn.Module)])
        self.plan: list[tuple[str, Any]] = []
        i = 0
        for s in steps:
            if isinstance(s, nn.Module):
                self.plan.append(("m", i))
                i += 1
            else:
                self.plan.append(("f", s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for kind, item in self.plan:
            x = self.layers[item](x) if kind == "m" else item(x)
        return x

    def extra_repr(self) -> str:
        return "plan=[" + ", ".join(f"layers[{v}]" if k == "m" else repr(v) for k, v in self.plan) + "]"


class Twice(nn.Module):
    """The same module called twice (``call=1`` is the second call)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.inner(x))


# -- fixers: layers that map one size exactly onto another (for merges) ----------------------------


@cache
def conv_solutions(n: int, target: int) -> tuple[tuple[int, int, int, int], ...]:
    """(k, s, p, d) with conv_out == target, small parameters only."""
    return tuple(
        (k, s, p, d)
        for k in range(1, 6) for s in range(1, 4) for d in range(1, 4) for p in range(0, k // 2 + 1)
        if n + 2 * p >= d * (k - 1) + 1 and conv_out(n, k, s, p, d) == target and (k > 1 or d == 1)
    )


@cache
def pool_solutions(
    n: int, target: int, dilation: bool, within: bool = False
) -> tuple[tuple[int, int, int, int, bool], ...]:
    """(k, s, p, d, ceil_mode) with pool_out == target (``within``: kernel <= n, for avg_pool3d)."""
    return tuple(
        (k, s, p, d, c)
        for k in range(1, 5) for s in range(1, 4) for d in (range(1, 3) if dilation else (1,))
        for p in range(0, k // 2 + 1) for c in (False, True)
        if n + 2 * p >= d * (k - 1) + 1 and pool_out(n, k, s, p, d, c) == target and (k > 1 or d == 1)
        and (k <= n or not within)
    )


def pool_ceil_modes(solutions: Sequence[Sequence[tuple[int, int, int, int, bool]]]) -> list[bool]:
    """ceil_mode values for which every axis has a solution (PyTorch takes one flag for all)."""
    return [c for c in (False, True) if all(any(x[4] == c for x in sol) for sol in solutions)]


@cache
def convt_solutions(n: int, target: int) -> tuple[tuple[int, int, int, int, int], ...]:
    """(k, s, p, d, output_padding) with convt_out == target."""
    return tuple(
        (k, s, p, d, op)
        for k in range(1, 5) for s in range(1, 4) for d in range(1, 3) for p in range(0, 4)
        for op in range(0, max(s, d))
        if convt_out(n, k, s, p, d, op) == target and (k > 1 or d == 1)
    )


# -- the generator ---------------------------------------------------------------------------------

PLAIN = ("conv", "fconv", "maxpool", "avgpool", "fpool", "lppool", "act", "bn")
RESAMPLE = ("convT", "fconvT", "upsample", "pad", "shuffle", "unshuffle", "adaptive")
BLOCKS = ("merge", "inline", "se", "twice")


class GraphGen:
    """Draws layers for an ``n``-D model; ``draw`` is hypothesis' (``data.draw`` or a composite's)."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any], n: int) -> None:
        self.draw, self.n, self.cap = draw, n, CAP[n]

    # small helpers
    def i(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def b(self) -> bool:
        return self.draw(st.booleans())

    def pick(self, options: Sequence[Any]) -> Any:
        return self.draw(st.sampled_from(list(options)))

    def input_shape(self) -> Shape:
        lo, hi = INPUT[self.n]
        channels = self.i(1, 3)
        if self.b():
            size = self.i(lo, hi)
            return Shape(channels, (size,) * self.n)
        return Shape(channels, tuple(self.i(lo, hi) for _ in range(self.n)))

    # -- layers ----------------------------------------------------------------------------------

    def layer(self, shape: Shape, kinds: Sequence[str], depth: int) -> tuple[list[nn.Module], Shape]:
        kind = self.pick([k for k in kinds if k not in BLOCKS or depth < 2])
        built = getattr(self, f"_{kind}")(shape, depth) if kind in BLOCKS else getattr(self, f"_{kind}")(shape)
        if built is None:  # not possible at this shape
            return [nn.ReLU()], shape
        return built

    def stack(self, shape: Shape, length: int, kinds: Sequence[str], depth: int = 0) -> tuple[list[nn.Module], Shape]:
        layers: list[nn.Module] = []
        for _ in range(length):
            new, shape = self.layer(shape, kinds, depth)
            layers += new
        return layers, shape

    def _act(self, shape: Shape):
        return [self.pick([nn.ReLU, nn.GELU, nn.Sigmoid, nn.Identity, lambda: nn.Dropout(0.5)])()], shape

    def _bn(self, shape: Shape):
        return [BN[self.n](shape.channels)], shape

    def _conv_params(self, shape: Shape) -> tuple[Any, ...]:
        """kernel, stride, padding (ints, 'same' or 'valid'), dilation, out sizes."""
        n = self.n
        kernel = [self.i(1, 5) for _ in range(n)]
        dilation = [self.i(1, 3) if kernel[a] > 1 else 1 for a in range(n)]
        stride = [self.pick([1, 1, 2, 3]) for _ in range(n)]
        padding = [self.i(0, kernel[a] // 2) for a in range(n)]
        for a, size in enumerate(shape.sizes):
            if size + 2 * padding[a] < dilation[a] * (kernel[a] - 1) + 1:
                dilation[a] = 1
            if size + 2 * padding[a] < kernel[a]:
                kernel[a] = size
        style = self.pick(["ints", "ints", "same", "valid", "int"])
        if style == "same" and all(s == 1 for s in stride):
            return tuple(kernel), tuple(stride), "same", tuple(dilation), shape.sizes
        if style == "valid" and all(shape.sizes[a] >= dilation[a] * (kernel[a] - 1) + 1 for a in range(n)):
            out = tuple(conv_out(shape.sizes[a], kernel[a], stride[a], 0, dilation[a]) for a in range(n))
            return tuple(kernel), tuple(stride), "valid", tuple(dilation), out
        out = tuple(conv_out(shape.sizes[a], kernel[a], stride[a], padding[a], dilation[a]) for a in range(n))
        return tuple(kernel), tuple(stride), tuple(padding), tuple(dilation), out

    def _channels(self, cin: int, cout: int | None = None) -> tuple[int, int]:
        """(groups, out channels)."""
        groups = self.pick([g for g in range(1, cin + 1) if cin % g == 0])
        if cout is not None:
            groups = math.gcd(groups, cout)
            return groups, cout
        return groups, groups * self.i(1, max(1, 4 // groups))

    def _conv(self, shape: Shape, functional: bool = False, cout: int | None = None):
        kernel, stride, padding, dilation, out = self._conv_params(shape)
        groups, cout = self._channels(shape.channels, cout)
        if functional:
            kw = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
            bias = cout if self.b() else None
            layer = FConv(self.n, (cout, shape.channels // groups, *kernel), bias, False, kw, self.b())
        else:
            mode = self.pick(["zeros", "zeros", "zeros", "reflect", "replicate", "circular"])
            if isinstance(padding, str):
                pads = [(0, 0)] * self.n if padding == "valid" else [
                    (d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)
                ]
            else:
                pads = [(p, p) for p in padding]
            limit = {"reflect": lambda p, s: p < s, "circular": lambda p, s: p <= s}.get(mode, lambda p, s: True)
            if not all(limit(p, s) for pair, s in zip(pads, shape.sizes) for p in pair):
                mode = "zeros"
            layer = CONV[self.n](shape.channels, cout, kernel, stride, padding, dilation, groups, self.b(), mode)
        return [layer], Shape(cout, out)

    def _fconv(self, shape: Shape):
        return self._conv(shape, functional=True)

    def _pool_params(self, shape: Shape, dilated: bool, padded: bool = True, within: bool = False):
        """``within``: the kernel must fit the unpadded input (avg_pool3d checks that)."""
        n = self.n
        kernel = [self.i(1, 4) for _ in range(n)]
        dilation = [self.i(1, 2) if dilated and kernel[a] > 1 else 1 for a in range(n)]
        padding = [self.i(0, kernel[a] // 2) if padded else 0 for a in range(n)]
        for a, size in enumerate(shape.sizes):
            if size + 2 * padding[a] < dilation[a] * (kernel[a] - 1) + 1:
                dilation[a] = 1
            if size + 2 * padding[a] < kernel[a] or (within and size < kernel[a]):
                kernel[a] = size
                padding[a] = min(padding[a], kernel[a] // 2)
        default_stride = self.draw(st.booleans())
        stride = list(kernel) if default_stride else [self.pick([1, 1, 2, 3]) for _ in range(n)]
        ceil_mode = self.b()
        out = tuple(
            pool_out(shape.sizes[a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode) for a in range(n)
        )
        stride_arg = None if default_stride else tuple(stride)
        return tuple(kernel), stride_arg, tuple(padding), tuple(dilation), ceil_mode, out

    def _maxpool(self, shape: Shape, functional: bool = False):
        kernel, stride, padding, dilation, ceil_mode, out = self._pool_params(shape, dilated=True)
        if functional:
            kw = (("stride", stride), ("padding", padding), ("dilation", dilation), ("ceil_mode", ceil_mode))
            call = Call(f"max_pool{self.n}d", (kernel,), kw)
            return [Fn(call)], Shape(shape.channels, out)
        return [MAXPOOL[self.n](kernel, stride, padding, dilation, ceil_mode=ceil_mode)], Shape(shape.channels, out)

    def _avgpool(self, shape: Shape, functional: bool = False):
        kernel, stride, padding, _, ceil_mode, out = self._pool_params(shape, dilated=False, within=self.n == 3)
        include = self.b()
        if functional:
            if self.b():  # positional
                call = Call(f"avg_pool{self.n}d", (kernel, stride, padding, ceil_mode, include))
            else:
                kw = (
                    ("stride", stride), ("padding", padding), ("ceil_mode", ceil_mode), ("count_include_pad", include)
                )
                call = Call(f"avg_pool{self.n}d", (kernel,), kw)
            return [Fn(call)], Shape(shape.channels, out)
        return [AVGPOOL[self.n](kernel, stride, padding, ceil_mode, include)], Shape(shape.channels, out)

    def _fpool(self, shape: Shape):
        return self._maxpool(shape, True) if self.b() else self._avgpool(shape, True)

    def _lppool(self, shape: Shape):
        kernel, stride, _, _, ceil_mode, out = self._pool_params(shape, dilated=False, padded=False)
        if self.n == 1:  # F.lp_pool1d multiplies by kernel_size: it must be an int
            kernel, stride = kernel[0], None if stride is None else stride[0]
        return [LPPOOL[self.n](2, kernel, stride, ceil_mode)], Shape(shape.channels, out)

    def _transposed(self, shape: Shape) -> tuple[tuple[int, ...], ...] | None:
        """kernel, stride, padding, output_padding, dilation, out sizes (out <= cap)."""
        params = []
        for size in shape.sizes:
            k, d = self.i(1, 4), self.i(1, 2)
            d = d if k > 1 else 1
            strides = [s for s in (1, 2, 3) if (size - 1) * s + 1 <= self.cap] or [1]
            s = self.pick(strides)
            op = self.i(0, max(s, d) - 1)
            base = convt_out(size, k, s, 0, d, op)
            lo, hi = max(0, -(-(base - self.cap) // 2)), min(3, (base - 1) // 2)
            if lo > hi:
                k, s, d, op, lo, hi = 1, 1, 1, 0, 0, 0
            p = self.i(lo, hi)
            params.append((k, s, p, op, d, convt_out(size, k, s, p, d, op)))
        return tuple(zip(*params))

    def _convT(self, shape: Shape, functional: bool = False):
        kernel, stride, padding, output_padding, dilation, out = self._transposed(shape)
        groups, cout = self._channels(shape.channels)
        if functional:
            kw = {
                "stride": stride, "padding": padding, "output_padding": output_padding, "groups": groups,
                "dilation": dilation,
            }
            bias = cout if self.b() else None
            layer = FConv(self.n, (shape.channels, cout // groups, *kernel), bias, True, kw, self.b())
        else:
            layer = CONVT[self.n](
                shape.channels, cout, kernel, stride, padding, output_padding, groups, self.b(), dilation
            )
        return [layer], Shape(cout, out)

    def _fconvT(self, shape: Shape):
        return self._convT(shape, functional=True)

    def _upsample(self, shape: Shape):
        n = self.n
        mode = self.pick(["nearest", "nearest-exact", "linear", "linear", "area"])
        mode = LINEAR_MODE[n] if mode == "linear" else mode
        align = self.b() if mode == LINEAR_MODE[n] else None
        scales = [s for s in (0.5, 1.5, 2.0, 2.5, 3.0) if all(1 <= math.floor(x * s) <= self.cap for x in shape.sizes)]
        size: Any = None
        scale: Any = None
        if scales and self.b():
            scale = self.pick(scales) if self.b() else tuple(self.pick(scales) for _ in range(n))
            per_axis = scale if isinstance(scale, tuple) else (scale,) * n
            out = tuple(math.floor(x * s) for x, s in zip(shape.sizes, per_axis))
        else:
            out = size = tuple(self.i(max(1, x // 3), min(self.cap, 3 * x)) for x in shape.sizes)
            per_axis = (None,) * n
        if mode == LINEAR_MODE[n] and not all(
            exact_in_floating_point(x, o, bool(align), s) for x, o, s in zip(shape.sizes, out, per_axis)
        ):
            mode, align = "nearest", None
        if self.b():  # the functional form
            kw = {"size": size, "scale_factor": scale, "mode": mode, "align_corners": align}
            return [Fn(Call("interpolate", (), tuple(kw.items())))], Shape(shape.channels, out)
        return [Upsample(size=size, scale_factor=scale, mode=mode, align_corners=align)], Shape(shape.channels, out)

    def _pad(self, shape: Shape):
        mode = self.pick(["constant", "constant", "reflect", "replicate", "circular"])
        padded = self.i(1, self.n)  # F.pad may pad only the last few axes
        amounts: list[int] = []
        out = list(shape.sizes)
        for a in reversed(range(self.n - padded, self.n)):
            size = shape.sizes[a]
            if mode == "constant":  # negative amounts crop; PyTorch crops before it pads
                left = self.i(max(-2, -(size - 1)), 3)
                right = self.i(max(-2, 1 - size - min(left, 0)), 3)
            else:
                hi = {"reflect": size - 1, "circular": size}.get(mode, 3)
                left, right = self.i(0, min(3, hi)), self.i(0, min(3, hi))
            if size + left + right > self.cap:
                left = right = 0
            amounts += [left, right]
            out[a] = size + left + right
        if mode != "constant" and len(amounts) // 2 != self.n:
            # reflect/replicate/circular pad exactly the spatial dims of a batched input
            return None
        call = Call("pad", (tuple(amounts),), (("mode", mode),) + ((("value", 0.5),) if mode == "constant" else ()))
        return [Fn(call)], Shape(shape.channels, tuple(out))

    def _shuffle(self, shape: Shape):
        if self.n != 2:
            return None
        factors = [r for r in (2, 3) if all(x * r <= self.cap for x in shape.sizes)]
        if not factors:
            return None
        r = self.pick(factors)
        # a channel-mixing conv first, always: the analysis does not track which channel holds
        # which sub-position, so an unshuffle undone by this shuffle would be an over-estimate
        # (test_pixel_shuffle_undoing_an_unshuffle_is_an_over_estimate)
        layers: list[nn.Module] = [nn.Conv2d(shape.channels, r * r, 1)]
        shape = Shape(r * r, shape.sizes)
        layers.append(nn.PixelShuffle(r) if self.b() else Fn(Call("pixel_shuffle", (r,))))
        return layers, Shape(shape.channels // (r * r), tuple(x * r for x in shape.sizes))

    def _unshuffle(self, shape: Shape):
        if self.n != 2:
            return None
        factors = [r for r in (2, 3) if all(x % r == 0 for x in shape.sizes)]
        if not factors:
            return None
        r = self.pick(factors)
        layer = nn.PixelUnshuffle(r) if self.b() else Fn(Call("pixel_unshuffle", (r,)))
        return [layer], Shape(shape.channels * r * r, tuple(x // r for x in shape.sizes))

    def _adaptive(self, shape: Shape):
        out = [self.i(1, min(self.cap, x + 3)) for x in shape.sizes]
        arg: Any = tuple(out)
        kind = self.pick(["avg", "max"])
        if self.n > 1 and self.b():  # None keeps that axis
            keep = self.i(0, self.n - 1)
            out[keep] = shape.sizes[keep]
            arg = tuple(None if a == keep else o for a, o in enumerate(out))
        if self.b():
            layer = (AAVG if kind == "avg" else AMAX)[self.n](arg)
        else:
            layer = Fn(Call(f"adaptive_{kind}_pool{self.n}d", (tuple(out),)))
        return [layer], Shape(shape.channels, tuple(out))

    # -- blocks ----------------------------------------------------------------------------------

    def fixer(self, shape: Shape, target: Sequence[int], channels: int | None) -> tuple[list[nn.Module], Shape]:
        """Layers that take ``shape`` exactly to spatial sizes ``target`` (and ``channels``)."""
        target = tuple(target)
        options = []
        if shape.sizes != target:
            if all(conv_solutions(n, t) for n, t in zip(shape.sizes, target)):
                options += ["conv", "conv"]
            if pool_ceil_modes([pool_solutions(n, t, True) for n, t in zip(shape.sizes, target)]):
                options.append("maxpool")
            if pool_ceil_modes([pool_solutions(n, t, False, self.n == 3) for n, t in zip(shape.sizes, target)]):
                options.append("avgpool")
            if all(convt_solutions(n, t) for n, t in zip(shape.sizes, target)):
                options.append("convT")
            options += ["adaptive", "upsample", "pad"]
        layers: list[nn.Module] = []
        if options:
            kind = self.pick(options)
            cin = shape.channels
            if kind == "conv":
                k, s, p, d = zip(*(self.pick(conv_solutions(n, t)) for n, t in zip(shape.sizes, target)))
                groups, cout = self._channels(cin, channels)
                layers.append(CONV[self.n](cin, cout, k, s, p, d, groups))
                shape = Shape(cout, target)
            elif kind in ("maxpool", "avgpool"):
                within = kind == "avgpool" and self.n == 3
                sols = [pool_solutions(n, t, kind == "maxpool", within) for n, t in zip(shape.sizes, target)]
                ceil_mode = self.pick(pool_ceil_modes(sols))  # one flag for every axis
                k, s, p, d, _ = zip(*(self.pick([x for x in sol if x[4] == ceil_mode]) for sol in sols))
                if kind == "maxpool":
                    layers.append(MAXPOOL[self.n](k, s, p, d, ceil_mode=ceil_mode))
                else:
                    layers.append(AVGPOOL[self.n](k, s, p, ceil_mode))
                shape = Shape(cin, target)
            elif kind == "convT":
                k, s, p, d, op = zip(*(self.pick(convt_solutions(n, t)) for n, t in zip(shape.sizes, target)))
                groups, cout = self._channels(cin, channels)
                layers.append(CONVT[self.n](cin, cout, k, s, p, op, groups, True, d))
                shape = Shape(cout, target)
            elif kind == "adaptive":
                layers.append(self.pick([AAVG, AMAX])[self.n](target))
                shape = Shape(cin, target)
            elif kind == "upsample":
                mode = self.pick(["nearest", LINEAR_MODE[self.n]])
                align = self.b() if mode != "nearest" else None
                if mode != "nearest" and not all(
                    exact_in_floating_point(n, t, bool(align), None) for n, t in zip(shape.sizes, target)
                ):
                    mode, align = "nearest", None
                layers.append(Upsample(size=target, mode=mode, align_corners=align))
                shape = Shape(cin, target)
            else:  # pad / crop with a constant
                amounts: list[int] = []
                for n, t in reversed(list(zip(shape.sizes, target))):
                    left = self.i(min(0, t - n), max(0, t - n))
                    amounts += [left, t - n - left]
                layers.append(Fn(Call("pad", (tuple(amounts),))))
                shape = Shape(cin, target)
        if channels is not None and shape.channels != channels:
            layers.append(CONV[self.n](shape.channels, channels, 1))
            shape = Shape(channels, shape.sizes)
        return layers, shape

    def _merge(self, shape: Shape, depth: int):
        op = self.pick(["add", "torch.add", "mul", "cat", "cat3"])
        kinds = ("conv", "conv", "maxpool", "avgpool", "fpool", "act", "adaptive", "convT", "pad", "merge")
        a, a_shape = self.stack(shape, self.i(0, 3), kinds, depth + 1)
        b, b_shape = self.stack(shape, self.i(0, 2), kinds, depth + 1)
        fix, b_shape = self.fixer(b_shape, a_shape.sizes, None if op.startswith("cat") else a_shape.channels)
        b += fix
        channels = {"cat": a_shape.channels + b_shape.channels, "cat3": 2 * a_shape.channels + b_shape.channels}
        out = Shape(channels.get(op, a_shape.channels), a_shape.sizes)
        return [Merge(nn.Sequential(*a), nn.Sequential(*b), op)], out

    def _se(self, shape: Shape, depth: int):
        return [SqueezeExcite(self.n, shape.channels)], shape

    def _inline(self, shape: Shape, depth: int):
        steps: list[nn.Module | Call] = []
        for _ in range(self.i(1, 4)):
            kind = self.pick(["conv", "fpool", "fpool", "pad", "upsample", "adaptive"])
            layers, shape = getattr(self, f"_{kind}")(shape) or ([nn.ReLU()], shape)
            for layer in layers:  # functional ones run inline, in the composite's forward
                steps.append(layer.call if isinstance(layer, Fn) else layer)
        return [Inline(steps)], shape

    def _twice(self, shape: Shape, depth: int):
        kind = self.pick(["conv", "maxpool", "avgpool", "convT", "adaptive"])
        first, mid = getattr(self, f"_{kind}")(shape) if kind != "conv" else self._conv(shape, cout=shape.channels)
        if kind == "convT" and first[0].out_channels != shape.channels:
            return None
        layer = first[-1]
        if len(first) != 1:
            return None
        try:  # the second call must accept the first one's output
            with torch.no_grad():
                out = layer(layer(torch.zeros(1, shape.channels, *shape.sizes)))
        except RuntimeError:
            return None
        if any(x > self.cap or x < 1 for x in out.shape[2:]):  # a transposed conv twice can leave nothing
            return None
        return [Twice(layer)], Shape(out.shape[1], tuple(out.shape[2:]))


def build(
    draw: Callable[[st.SearchStrategy[Any]], Any], n: int, kinds: Sequence[str], length: tuple[int, int]
) -> tuple[nn.Module, tuple[int, ...]]:
    """A random ``nn.Sequential`` of ``n``-D layers drawn from ``kinds``, and its input size."""
    gen = GraphGen(draw, n)
    shape = gen.input_shape()
    layers, _ = gen.stack(shape, gen.i(*length), kinds)
    return nn.Sequential(*layers).eval(), (shape.channels, *shape.sizes)
