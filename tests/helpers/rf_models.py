"""Random transformer and hybrid models for the input-layout tests (tests/test_rf_layouts.py).

Each strategy draws one idiom where an input axis leaves its own tensor dim: ViT patch tokens
(with a class token and attention), Swin windows in the batch dim (shifted by ``torch.roll``),
MaxViT block and grid partitions, space-to-depth by view/permute and by pixel (un)shuffle,
chunk/split along a spatial dim and cat back, a raw 1-D signal (layout ``T``) and token
sequences (layout ``LC``). Every stage is an ``nn.Module``, so that
``measure_receptive_field`` can address it by name; the functional steps run in their forwards.

A strategy gives a :class:`Case`: the model, the input size (batch excluded), the layout and the
parameters that the hand-derived checks need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn


@dataclass
class Case:
    model: nn.Module
    size: tuple[int, ...]
    layout: str | None
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"  # "cpu" where the analysis must see values (an attention mask)

    def __repr__(self) -> str:
        return (f"Case(size={self.size}, layout={self.layout!r}, device={self.device!r}, params={self.params})\n"
                f"{self.model}")


def conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


# -- attention blocks ---------------------------------------------------------------------------------


class TokenAttention(nn.Module):
    """Self-attention over dim 1 of (B, L, E): ``F.scaled_dot_product_attention`` on heads split
    from a qkv Linear, ``nn.MultiheadAttention(batch_first=True)``, ``softmax(q @ k^T) @ v`` or
    the same by ``torch.einsum``."""

    def __init__(self, dim: int, heads: int, kind: str, causal: bool = False) -> None:
        super().__init__()
        self.heads, self.kind, self.causal = heads, kind, causal
        if kind == "mha":
            self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "mha":
            return self.mha(x, x, x, need_weights=False)[0]
        b, n, e = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, e // self.heads).transpose(1, 2) for t in (q, k, v))
        if self.kind == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        elif self.kind == "einsum":
            y = torch.einsum("bhij,bhjd->bhid", torch.einsum("bhid,bhjd->bhij", q, k).softmax(dim=-1), v)
        else:  # "matmul"
            y = ((q @ k.transpose(-2, -1)) * (e // self.heads) ** -0.5).softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, e))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, heads={self.heads}, causal={self.causal}"


class WindowAttention(nn.Module):
    """Attention inside each window of (B*nW, N, C): q, k, v Linears, ``q @ k.transpose(-2, -1)``,
    softmax, ``@ v``, heads split off the features. Optionally Swin's relative position bias
    (a (heads, N, N) parameter added to the logits) and its shifted-window mask (a constant
    (nW, N, N) of 0 / -100 added through ``view(B, nW, heads, N, N)``: it hides no key)."""

    def __init__(self, dim: int, heads: int, tokens: int | None = None, windows: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.bias = nn.Parameter(torch.randn(heads, tokens, tokens) * 0.02) if tokens else None
        if windows:
            mask = torch.zeros(windows, tokens, tokens)
            mask[windows // 2:, : tokens // 2, tokens // 2:] = -100.0
            self.register_buffer("mask", mask)
        else:
            self.mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.heads
        q, k, v = (f(x).reshape(b, n, h, c // h).permute(0, 2, 1, 3) for f in (self.q, self.k, self.v))
        attn = (q @ k.transpose(-2, -1)) * (c // h) ** -0.5
        if self.bias is not None:
            attn = attn + self.bias.unsqueeze(0)
        if self.mask is not None:
            windows = self.mask.shape[0]
            attn = attn.view(b // windows, windows, h, n, n) + self.mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, h, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Residual(nn.Module):
    """``x + inner(norm(x))`` (a pre-norm transformer block's first half)."""

    def __init__(self, dim: int, inner: nn.Module) -> None:
        super().__init__()
        self.norm, self.inner = nn.LayerNorm(dim), inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(self.norm(x))


# -- ViT ----------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Conv2d with kernel = stride = patch, then ``flatten(2).transpose(1, 2)``: (B, L, E) tokens."""

    def __init__(self, cin: int, dim: int, patch: tuple[int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ClassToken(nn.Module):
    """A learned token prepended along the token dim with ``torch.cat``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)


class PositionEmbedding(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos


class TokenHead(nn.Module):
    """What a ViT does with its tokens: ``"map"`` drops the class token (a slice), back to a
    (B, E, nh, nw) map by ``transpose(1, 2).reshape`` and a conv (hybrid / dense heads);
    ``"mean"`` pools over tokens; ``"cls"`` reads the class token ``x[:, 0]``."""

    def __init__(self, kind: str, dim: int, grid: tuple[int, int], cls: bool, kernel: int) -> None:
        super().__init__()
        self.kind, self.grid, self.cls = kind, grid, cls
        self.conv = nn.Conv2d(dim, 2, kernel, padding=kernel // 2) if kind == "map" else None
        self.fc = nn.Linear(dim, 3) if kind != "map" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "map":
            x = x[:, 1:] if self.cls else x
            return self.conv(x.transpose(1, 2).reshape(x.shape[0], -1, *self.grid))
        return self.fc(x.mean(dim=1) if self.kind == "mean" else x[:, 0])

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, grid={self.grid}, cls={self.cls}"


class ViT(nn.Module):
    def __init__(self, cin: int, dim: int, patch: tuple[int, int], tokens: int, cls: bool, pos: bool,
                 attention: str | None, heads: int, residual: bool, head: nn.Module | None = None) -> None:
        super().__init__()
        self.embed = PatchEmbed(cin, dim, patch)
        self.cls = ClassToken(dim) if cls else None
        self.pos = PositionEmbedding(tokens + cls, dim) if pos else None
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)
        self.attn = None
        if attention is not None:
            self.attn = TokenAttention(dim, heads, attention)
            self.attn = Residual(dim, self.attn) if residual else self.attn
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        if self.cls is not None:
            x = self.cls(x)
        if self.pos is not None:
            x = self.pos(x)
        x = self.fc(self.norm(x))
        x = x if self.attn is None else self.attn(x)
        return x if self.head is None else self.head(x)


@st.composite
def vit_models(draw: Any, attention: bool | None = None, head: bool = True) -> Case:
    """``attention``: True always one block, False never, None either; ``head``: maybe a
    :class:`TokenHead` (never when False)."""
    ph, pw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    nh, nw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    rh, rw = draw(st.integers(0, ph - 1)), draw(st.integers(0, pw - 1))  # pixels the conv drops
    h, w = max(ph * nh + rh, 2), max(pw * nw + rw, 2)
    nh, nw = h // ph, w // pw
    cin, heads = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2]))
    dim = 4 * heads
    kinds = ["sdpa", "mha", "matmul", "einsum"]
    if attention is None:
        kind = draw(st.sampled_from([None, *kinds]))
    else:
        kind = draw(st.sampled_from(kinds)) if attention else None
    cls, pos, residual = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    readout = draw(st.sampled_from([None, "map", "map", "mean"] + (["cls"] if cls else []))) if head else None
    top = TokenHead(readout, dim, (nh, nw), cls, draw(st.sampled_from([1, 3]))) if readout else None
    model = ViT(cin, dim, (ph, pw), nh * nw, cls, pos, kind, heads, residual, top)
    params = dict(patch=(ph, pw), grid=(nh, nw), cls=cls, attention=kind, residual=residual, head=readout)
    return Case(model.eval(), (cin, h, w), "CHW", params)


# -- Swin window partition ----------------------------------------------------------------------------


class WindowPartition(nn.Module):
    """(B, C, H, W) -> (B, H, W, C) -> roll by -shift on (1, 2) -> windows (B*nW, w*w, C)."""

    def __init__(self, window: int, shift: int) -> None:
        super().__init__()
        self.window, self.shift = window, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.window
        x = x.permute(0, 2, 3, 1)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        x = x.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, s * s, c)

    def extra_repr(self) -> str:
        return f"window={self.window}, shift={self.shift}"


class WindowReverse(nn.Module):
    """The inverse of :class:`WindowPartition`: back to (B, C, H, W), rolled back."""

    def __init__(self, window: int, shift: int, height: int, width: int) -> None:
        super().__init__()
        self.window, self.shift, self.height, self.width = window, shift, height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, h, w = self.window, self.height, self.width
        c = x.shape[-1]
        b = x.shape[0] // ((h // s) * (w // s))
        x = x.view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return x.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"window={self.window}, shift={self.shift}, size=({self.height}, {self.width})"


def stem(draw: Any, cin: int, dim: int) -> tuple[nn.Module, int]:
    """A first conv, and the factor by which the input is larger than its output."""
    kind = draw(st.sampled_from(["1x1", "1x1", "3x3", "patch"]))
    if kind == "1x1":
        return nn.Conv2d(cin, dim, 1), 1
    if kind == "3x3":
        return nn.Conv2d(cin, dim, 3, padding=1), 1
    return nn.Conv2d(cin, dim, 2, 2), 2


def head_conv(draw: Any, cin: int, h: int, w: int) -> nn.Conv2d:
    k = draw(st.integers(1, min(3, h, w)))
    s = draw(st.integers(1, 2))
    p = draw(st.integers(0, k // 2))
    return nn.Conv2d(cin, draw(st.integers(1, 3)), k, s, p)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int, h: int, w: int, residual: bool,
                 bias: bool = False, mask: bool = False) -> None:
        super().__init__()
        self.partition = WindowPartition(window, shift)
        windows = (h // window) * (w // window) if mask else None
        attn = WindowAttention(dim, heads, window * window if bias or mask else None, windows)
        self.attn = Residual(dim, attn) if residual else attn
        self.reverse = WindowReverse(window, shift, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reverse(self.attn(self.partition(x)))


class PatchMerging(nn.Module):
    """Swin's downsampling on (B, C, H, W): to (B, H, W, C), the four pixels of every 2 x 2
    block by strided slices ``x[:, 0::2, 0::2]`` ..., cat along features, LayerNorm, Linear, back."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x0, x1 = x[:, 0::2, 0::2, :], x[:, 1::2, 0::2, :]
        x2, x3 = x[:, 0::2, 1::2, :], x[:, 1::2, 1::2, :]
        x = self.reduction(self.norm(torch.cat([x0, x1, x2, x3], -1)))
        return x.permute(0, 3, 1, 2)


class Swin(nn.Module):
    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.Sequential(*blocks), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


@st.composite
def swin_models(draw: Any, plain: bool = False) -> Case:
    """``plain``: a 1x1 stem, one unresidual block (so the hand-derived windows hold)."""
    window = draw(st.sampled_from([2, 3, 4]))
    nh, nw = draw(st.integers(1, 12 // window)), draw(st.integers(1, 12 // window))
    cin, heads = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2]))
    dim = 4 * heads
    if plain:
        first, factor = nn.Conv2d(cin, dim, 1), 1
    else:
        first, factor = stem(draw, cin, dim)
    h, w = window * nh, window * nw
    shifts = [draw(st.integers(0, window - 1))]
    if not plain and draw(st.booleans()):
        shifts.append(draw(st.integers(0, window - 1)))  # a second block, shifted differently
    residual = False if plain else draw(st.booleans())
    bias, mask = draw(st.booleans()), draw(st.booleans())
    blocks: list[nn.Module] = [SwinBlock(dim, heads, window, s, h, w, residual, bias, mask and s > 0) for s in shifts]
    size = (cin, h * factor, w * factor)
    merge = not plain and h % 2 == 0 and w % 2 == 0 and draw(st.booleans())
    if merge:
        blocks.append(PatchMerging(dim))
        dim, h, w = 2 * dim, h // 2, w // 2
    model = Swin(first, blocks, head_conv(draw, dim, h, w))
    params = dict(window=window, shifts=tuple(shifts), windows=(nh, nw), stem_factor=factor, residual=residual,
                  merge=merge, bias=bias, mask=mask)
    return Case(model.eval(), size, "CHW", params)


# -- MaxViT block and grid partitions -----------------------------------------------------------------


class BlockPartition(nn.Module):
    """(B, C, H, W) -> (B * H/w * W/w, w*w, C): a window is a w x w block of neighbours."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.window
        x = x.view(b, c, h // s, s, w // s, s).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(-1, s * s, c)


class BlockReverse(nn.Module):
    def __init__(self, window: int, height: int, width: int) -> None:
        super().__init__()
        self.window, self.height, self.width = window, height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, h, w = self.window, self.height, self.width
        c = x.shape[-1]
        x = x.view(-1, h // s, w // s, s, s, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(-1, c, h, w)


class GridPartition(nn.Module):
    """(B, C, H, W) -> (B * H/g * W/g, g*g, C): a cell's tokens are pixels H/g (W/g) apart."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = self.grid
        x = x.view(b, c, g, h // g, g, w // g).permute(0, 3, 5, 2, 4, 1)
        return x.reshape(-1, g * g, c)


class GridReverse(nn.Module):
    def __init__(self, grid: int, height: int, width: int) -> None:
        super().__init__()
        self.grid, self.height, self.width = grid, height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, h, w = self.grid, self.height, self.width
        c = x.shape[-1]
        x = x.view(-1, h // g, w // g, g, g, c).permute(0, 5, 3, 1, 4, 2)
        return x.reshape(-1, c, h, w)


class PartitionAttention(nn.Module):
    """partition -> (residual) window attention -> reverse."""

    def __init__(self, partition: nn.Module, attn: nn.Module, reverse: nn.Module) -> None:
        super().__init__()
        self.partition, self.attn, self.reverse = partition, attn, reverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reverse(self.attn(self.partition(x)))


@st.composite
def maxvit_models(draw: Any, stages: tuple[str, ...] | None = None) -> Case:
    """``stages``: the partitions in order ("block", "grid"); drawn when None. Given, the stem is
    a 1x1 conv and attention is not residual (for the hand-derived checks)."""
    plain = stages is not None
    if stages is None:
        stages = draw(st.sampled_from([("block", "grid"), ("grid",), ("grid", "block"), ("block",)]))
    window, grid = draw(st.sampled_from([2, 3, 4])), draw(st.sampled_from([2, 3, 4]))
    lcm = math.lcm(window if "block" in stages else 1, grid if "grid" in stages else 1)
    h, w = lcm * draw(st.integers(1, max(1, 12 // lcm))), lcm * draw(st.integers(1, max(1, 12 // lcm)))
    cin, heads = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2]))
    dim = 4 * heads
    if plain:
        first = nn.Conv2d(cin, dim, 1)
    else:
        first, factor = stem(draw, cin, dim)
        if factor != 1:
            first = nn.Conv2d(cin, dim, 3, padding=1)
    blocks: list[nn.Module] = []
    for stage in stages:
        residual = False if plain else draw(st.booleans())
        attn = Residual(dim, WindowAttention(dim, heads)) if residual else WindowAttention(dim, heads)
        if stage == "block":
            blocks.append(PartitionAttention(BlockPartition(window), attn, BlockReverse(window, h, w)))
        else:
            blocks.append(PartitionAttention(GridPartition(grid), attn, GridReverse(grid, h, w)))
    model = Swin(first, blocks, head_conv(draw, dim, h, w))
    return Case(model.eval(), (cin, h, w), "CHW", dict(stages=stages, window=window, grid=grid))


# -- space-to-depth and pixel (un)shuffle -------------------------------------------------------------


class SpaceToDepth(nn.Module):
    """``view(B, C, H/s, s, W/s, s).permute(0, 3, 5, 1, 2, 4).reshape(B, C*s*s, H/s, W/s)``."""

    def __init__(self, s: int) -> None:
        super().__init__()
        self.s = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.s
        x = x.view(b, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4)
        return x.reshape(b, c * s * s, h // s, w // s)

    def extra_repr(self) -> str:
        return f"s={self.s}"


class DepthToSpace(nn.Module):
    """The inverse of :class:`SpaceToDepth`."""

    def __init__(self, s: int) -> None:
        super().__init__()
        self.s = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.s
        x = x.view(b, s, s, c // (s * s), h, w).permute(0, 3, 4, 1, 5, 2)
        return x.reshape(b, c // (s * s), h * s, w * s)

    def extra_repr(self) -> str:
        return f"s={self.s}"


class Shuffle(nn.Module):
    """``F.pixel_shuffle`` (``up``) or ``F.pixel_unshuffle``."""

    def __init__(self, r: int, up: bool) -> None:
        super().__init__()
        self.r, self.up = r, up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(x, self.r) if self.up else F.pixel_unshuffle(x, self.r)

    def extra_repr(self) -> str:
        return f"r={self.r}, up={self.up}"


def same_conv(draw: Any, cin: int, cout: int) -> nn.Conv2d:
    """A stride-1 conv that keeps the size (odd kernel, half padding)."""
    k = draw(st.sampled_from([1, 3]))
    return nn.Conv2d(cin, cout, k, padding=k // 2)


@st.composite
def space_to_depth_models(draw: Any) -> Case:
    """[conv] -> space-to-depth (view/permute/reshape) -> conv [-> depth-to-space -> conv]."""
    s = draw(st.sampled_from([2, 3, 4]))
    h, w = s * draw(st.integers(1, 12 // s)), s * draw(st.integers(1, 12 // s))
    cin = draw(st.integers(1, 3))
    layers: list[nn.Module] = []
    c = cin
    if draw(st.booleans()):
        c = draw(st.integers(1, 3))
        layers.append(same_conv(draw, cin, c))
    layers.append(SpaceToDepth(s))
    back = draw(st.booleans())
    if back:  # a size-keeping conv, then back to full resolution
        layers += [same_conv(draw, c * s * s, c * s * s), DepthToSpace(s), head_conv(draw, c, h, w)]
    else:
        layers.append(head_conv(draw, c * s * s, h // s, w // s))
    return Case(nn.Sequential(*layers).eval(), (cin, h, w), "CHW", dict(s=s, back=back))


@st.composite
def pixel_shuffle_models(draw: Any) -> Case:
    """pixel_unshuffle -> conv -> pixel_shuffle -> conv, or the other way round (a channel-mixing
    conv between the two: the analysis does not track channels one by one)."""
    r = draw(st.sampled_from([2, 3]))
    cin = draw(st.integers(1, 2))
    down_first = draw(st.booleans())
    if down_first:
        h, w = r * draw(st.integers(1, 12 // r)), r * draw(st.integers(1, 12 // r))
        layers = [Shuffle(r, False), same_conv(draw, cin * r * r, cin * r * r), Shuffle(r, True),
                  head_conv(draw, cin, h, w)]
    else:
        h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        layers = [nn.Conv2d(cin, r * r, 1), Shuffle(r, True), same_conv(draw, 1, 1), Shuffle(r, False),
                  head_conv(draw, r * r, h, w)]
    return Case(nn.Sequential(*layers).eval(), (cin, h, w), "CHW", dict(r=r, down_first=down_first))


# -- chunk / split along a spatial dim ----------------------------------------------------------------


class SplitConvCat(nn.Module):
    """Split along ``dim`` (2: H, 3: W) by ``chunk`` or ``torch.split``, a conv per piece, cat back."""

    def __init__(self, dim: int, how: str, pieces: int | list[int], convs: list[nn.Module]) -> None:
        super().__init__()
        self.dim, self.how, self.pieces = dim, how, pieces
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.chunk(self.pieces, dim=self.dim) if self.how == "chunk" else torch.split(x, self.pieces, self.dim)
        return torch.cat([conv(p) for conv, p in zip(self.convs, parts)], dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, {self.how}({self.pieces})"


def chunk_sizes(n: int, chunks: int) -> list[int]:
    """The piece sizes of ``torch.chunk`` (there may be fewer than asked)."""
    each = -(-n // chunks)
    return [min(each, n - i) for i in range(0, n, each)]


@st.composite
def split_cat_models(draw: Any) -> Case:
    h, w = draw(st.integers(4, 14)), draw(st.integers(4, 14))
    cin = draw(st.integers(1, 2))
    c = draw(st.integers(1, 2))
    layers: list[nn.Module] = []
    if draw(st.booleans()):
        layers.append(nn.Conv2d(cin, c, 3, padding=1))
    else:
        c = cin
    dim = draw(st.sampled_from([2, 3]))
    n = (h, w)[dim - 2]
    if draw(st.booleans()):
        how, pieces = "chunk", draw(st.integers(2, 4))
        sizes = chunk_sizes(n, pieces)
    else:
        cuts = sorted(draw(st.sets(st.integers(1, n - 1), min_size=1, max_size=3)))
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, n])]
        how, pieces = "split", sizes
    convs = []
    for size in sizes:  # along the split dim anything that leaves >= 1 unit; the other dim kept
        k = draw(st.integers(1, min(3, size + 2)))
        p = draw(st.integers(0, k // 2))
        if size + 2 * p < k:
            p = (k - size + 1) // 2
        s = draw(st.integers(1, 2))
        ko = draw(st.sampled_from([1, 3]))
        kernel, stride, padding = ((k, ko), (s, 1), (p, ko // 2)) if dim == 2 else ((ko, k), (1, s), (ko // 2, p))
        convs.append(nn.Conv2d(c, c, kernel, stride, padding))
    layers.append(SplitConvCat(dim, how, pieces, convs))
    layers.append(nn.Conv2d(c, 1, 3, padding=1))
    return Case(nn.Sequential(*layers).eval(), (cin, h, w), "CHW", dict(dim=dim, sizes=sizes))


# -- raw 1-D signals (layout T) -----------------------------------------------------------------------


class Unsqueeze(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1)


class ConvLayerNorm(nn.Module):
    """wav2vec2's layer-norm conv layer: conv -> LayerNorm over channels (between transposes) -> GELU."""

    def __init__(self, cin: int, cout: int, k: int, s: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, k, s, padding, bias=False)
        self.norm = nn.LayerNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.gelu(self.norm(x.transpose(-2, -1)).transpose(-2, -1))


class PositionalConv(nn.Module):
    """wav2vec2's feature projection and positional conv on frames (B, C, T'): transpose, Linear,
    transpose, a grouped conv with padding k // 2 and, for an even kernel, the last frame dropped
    (``SamePad``), GELU, added to its input."""

    def __init__(self, cin: int, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.projection = nn.Linear(cin, dim)
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        self.drop = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection(x.transpose(1, 2)).transpose(1, 2)
        y = self.conv(x)
        y = y[:, :, : y.shape[-1] - self.drop]
        return x + F.gelu(y)


class SignalEncoder(nn.Module):
    """(B, T) -> unsqueeze(1) -> conv layers [-> positional conv]."""

    def __init__(self, layers: list[nn.Module], positional: nn.Module | None = None) -> None:
        super().__init__()
        self.unsqueeze = Unsqueeze()
        self.layers = nn.Sequential(*layers)
        self.positional = positional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.unsqueeze(x))
        return x if self.positional is None else self.positional(x)


WAV2VEC2 = ((10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2))  # (kernel, stride) per layer


def wav2vec2_encoder(channels: int = 4) -> SignalEncoder:
    layers = [ConvLayerNorm(1 if i == 0 else channels, channels, k, s) for i, (k, s) in enumerate(WAV2VEC2)]
    return SignalEncoder(layers).eval()


@st.composite
def signal_models(draw: Any) -> Case:
    t = draw(st.integers(8, 64))
    n, c, layers = t, 1, []
    for _ in range(draw(st.integers(1, 4))):
        k = draw(st.integers(1, min(6, n)))
        s = draw(st.integers(1, 3))
        p = draw(st.integers(0, k // 2))
        cout = draw(st.integers(1, 3))
        layers.append(ConvLayerNorm(c, cout, k, s, p) if draw(st.booleans()) else nn.Conv1d(c, cout, k, s, p))
        c, n = cout, conv_out(n, k, s, p)
        if n < 2:
            break
    positional = None
    if draw(st.booleans()):
        groups = draw(st.sampled_from([1, 2]))
        positional = PositionalConv(c, 2 * groups, draw(st.integers(1, 4)), groups)
    return Case(SignalEncoder(layers, positional).eval(), (t,), "T", dict(length=t))


# -- token sequences (layout LC) ----------------------------------------------------------------------


class MaskedAttention(nn.Module):
    """``nn.MultiheadAttention(batch_first=True)`` or ``nn.TransformerEncoderLayer(batch_first=True)``
    with a causal mask built in the forward (a boolean ``triu`` for MHA, -inf above the diagonal for
    the encoder layer): the analysis sees the mask's values only on real tensors (device "cpu")."""

    def __init__(self, dim: int, heads: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == "mha":
            self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)
        else:
            self.layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        if self.kind == "mha":
            hidden = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
            return self.mha(x, x, x, attn_mask=hidden, need_weights=False)[0]
        mask = nn.Transformer.generate_square_subsequent_mask(n, device=x.device, dtype=x.dtype)
        return self.layer(x, src_mask=mask, is_causal=True)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, causal mask"


class Encoder(nn.Module):
    """``nn.TransformerEncoderLayer(batch_first=True)`` without a mask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class SequenceModel(nn.Module):
    """(B, L, E): [Conv1d over tokens] -> attention -> [Conv1d over tokens]."""

    def __init__(self, dim: int, before: nn.Conv1d | None, attention: nn.Module, after: nn.Conv1d | None) -> None:
        super().__init__()
        self.before, self.attention, self.after = before, attention, after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.before is not None:
            x = self.before(x.transpose(1, 2)).transpose(1, 2)
        if isinstance(self.attention, nn.MultiheadAttention):
            x = self.attention(x, x, x)[0]
        else:
            x = self.attention(x)
        if self.after is not None:
            x = self.after(x.transpose(1, 2))
        return x


@st.composite
def sequence_models(draw: Any, local: bool | None = None) -> Case:
    """``local``: False for attention straight on the input (no conv before it); drawn when None."""
    tokens = draw(st.integers(2, 16))
    heads = draw(st.sampled_from([1, 2]))
    dim = heads * draw(st.integers(1, 3))
    kinds = ["mha", "mha", "causal", "sdpa", "matmul", "einsum", "encoder", "masked mha", "masked encoder"]
    kind = draw(st.sampled_from(kinds))
    if kind == "mha":
        attention: nn.Module = nn.MultiheadAttention(dim, heads, batch_first=True)
    elif kind == "encoder":
        attention = Encoder(dim, heads)
    elif kind.startswith("masked"):
        attention = MaskedAttention(dim, heads, kind.split()[1])
    else:
        attention = TokenAttention(dim, heads, "sdpa" if kind == "causal" else kind, causal=kind == "causal")
    before = None
    if local if local is not None else draw(st.booleans()):
        before = nn.Conv1d(dim, dim, draw(st.sampled_from([1, 3])), padding="same")
    after = None
    if draw(st.booleans()):
        k = draw(st.integers(1, min(3, tokens)))
        after = nn.Conv1d(dim, draw(st.integers(1, 3)), k, draw(st.integers(1, 2)), draw(st.integers(0, k // 2)))
    model = SequenceModel(dim, before, attention, after)
    params = dict(kind=kind, tokens=tokens, before=before is not None, causal=kind == "causal" or "masked" in kind)
    return Case(model.eval(), (tokens, dim), "LC", params, "cpu" if "masked" in kind else "auto")


# -- any dim order, any axis names --------------------------------------------------------------------


class FromLayout(nn.Module):
    """Takes its input in another dim order and permutes it to (B, C, H, W) for ``inner``."""

    def __init__(self, inner: nn.Module, order: tuple[int, ...]) -> None:
        super().__init__()
        self.inner, self.order = inner, order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, *self.order))

    def extra_repr(self) -> str:
        return f"permute(0, {', '.join(map(str, self.order))})"


@st.composite
def permuted(draw: Any, cases: st.SearchStrategy[Case]) -> Case:
    """A CHW case fed in a random dim order (channels-last ``HWC``, ``WCH``, ...) with random axis
    letters (``YX``, ``QP``, ...): the layout names the dims, the model permutes them back."""
    case = draw(cases)
    assert case.layout == "CHW"
    order = draw(st.permutations([0, 1, 2]))  # order[i]: which CHW dim sits at input dim i
    names = draw(st.lists(st.sampled_from("ABDEFGHIJKLMNOPQRSTUVWXYZ"), min_size=2, max_size=2, unique=True))
    letters = ["C", *names]
    layout = "".join(letters[d] for d in order)
    size = tuple(case.size[d] for d in order)
    back = tuple(1 + order.index(d) for d in range(3))  # input dim holding C, H, W
    params = dict(case.params, inner_layout=case.layout, names=tuple(names))
    return Case(FromLayout(case.model, back).eval(), size, layout, params, case.device)
