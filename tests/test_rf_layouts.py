"""Input layouts and transformer idioms: the analytic span equals the gradient-measured one.

Random ViT, Swin, MaxViT, space-to-depth, pixel (un)shuffle, split/cat, raw-signal (layout ``T``)
and token-sequence (layout ``LC``) models come from ``tests/helpers/rf_models.py``. For each: no
note says a rule is missing, failed or does not support the call; on the model's own row and a
few sampled module rows, at the first, the last and a random unit (an index per ``unit_dims``),
``layer.span(unit)`` must equal ``measure_receptive_field(..., unit_dims=layer.unit_dims).spans``.
Then facts derived by hand (a patch token sees its patch, a window token its window, attention
over a sequence sees every token, wav2vec2's encoder has RF 400 and jump 320) and the layout
errors.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Callable, Sequence

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import torchprobe
from tests.helpers.rf_models import (
    BlockPartition,
    BlockReverse,
    Case,
    GridPartition,
    maxvit_models,
    permuted,
    pixel_shuffle_models,
    sequence_models,
    signal_models,
    space_to_depth_models,
    split_cat_models,
    swin_models,
    vit_models,
    wav2vec2_encoder,
)

SETTINGS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
FAILURES = {"no_rule", "rule_failed", "unsupported"}



# -- the check ----------------------------------------------------------------------------------------


def analyse(case: Case) -> torchprobe.RFResult:
    """In float64 like the measurement, so that both sides round alike."""
    model = copy.deepcopy(case.model).double()
    return torchprobe.receptive_field(model, input_data=torch.zeros((1, *case.size), dtype=torch.float64),
                                      layout=case.layout, device=case.device)


def measured(case: Case, layer: torchprobe.LayerRF, unit: Sequence[int]) -> tuple:
    return torchprobe.measure_receptive_field(case.model, case.size, layer.name, tuple(unit), call=layer.call,
                                              layout=case.layout, unit_dims=layer.unit_dims).spans


def sample_units(units: tuple[int, ...], rng: random.Random, n: int) -> list[tuple[int, ...]]:
    """The first and the last unit and ``n`` random ones (``()`` for a row without unit dims)."""
    picks = [tuple(0 for _ in units), tuple(u - 1 for u in units)]
    picks += [tuple(rng.randrange(u) for u in units) for _ in range(n)]
    return list(dict.fromkeys(picks))


def unit_at(layer: torchprobe.LayerRF, index: dict[int, int]) -> tuple[int, ...]:
    """The unit at an output index (``{dim: index}``, batch = dim 0; dims not named: 0), spelled
    by ``layer.unit_dims`` (the other dims do not tell units apart)."""
    return tuple(index.get(d, 0) for d in layer.unit_dims)


def assert_no_failed_rule(result: torchprobe.RFResult, case: Case) -> None:
    failed = [f"{note.code}: {note}" for note in result.diagnostics if note.code in FAILURES]
    assert not failed, f"{failed}\n{case}"


def check_other_dims(case: Case, result: torchprobe.RFResult, layer: torchprobe.LayerRF, rng: random.Random) -> None:
    """A dim left out of ``unit_dims`` is one along which every index sees the same pixels: check
    that at one random index of dim 0 (windows of Swin and MaxViT, cells; a batch of one
    elsewhere) and, for a 3-D output, of dim 1 (tokens of (B, L, E); channels of a Conv1d, which
    all see the same span in these models)."""
    shape = layer.output_shape or ()
    dims = [d for d in ((0, 1) if len(shape) == 3 else (0,)) if d < len(shape)]
    n_axes = len(result.axis_names)
    for d in dims:
        if shape[d] == 1 or d in layer.unit_dims:
            continue
        unit = sample_units(layer.units, rng, 1)[-1]
        where = rng.randrange(shape[d])
        full = dict(zip(layer.unit_dims, unit)) | {d: where}
        order = sorted(full)
        truth = torchprobe.measure_receptive_field(
            case.model, case.size, layer.name, tuple(full[k] for k in order), call=layer.call, layout=case.layout,
            unit_dims=tuple(order)).spans
        analytic = layer.span(unit)
        expected = (None,) * n_axes if None in analytic else analytic
        assert expected == truth, (
            f"layer {layer.name or '(model)'!r} call {layer.call} ({layer.type}, output {shape}), unit_dims "
            f"{layer.unit_dims}, unit {unit}: analytic span {analytic}, but index {where} along dim {d} (not a "
            f"unit dim) measures {truth}; notes {[str(n) for n in result.diagnostics]}\n{case}\n{result}"
        )


def check_case(case: Case, rng: random.Random, rows: int = 3, units: int = 2) -> torchprobe.RFResult:
    """The model's row and ``rows`` random module rows, at sampled units: analytic == measured."""
    result = analyse(case)
    assert_no_failed_rule(result, case)
    modules = [layer for layer in result.layers if layer.kind == "module" and layer is not result.output]
    chosen = [result.output, *rng.sample(modules, min(rows, len(modules)))]
    n_axes = len(result.axis_names)
    for layer in chosen:
        where = f"layer {layer.name or '(model)'!r} call {layer.call} ({layer.type}, output {layer.output_shape})"
        assert layer.unknown is None and layer.maps is not None, f"{where}: unknown RF ({layer.unknown})\n{case}"
        for unit in sample_units(layer.units, rng, units):
            analytic = layer.span(unit)
            expected = (None,) * n_axes if None in analytic else analytic  # no pixel on one axis: none at all
            truth = measured(case, layer, unit)
            assert expected == truth, (
                f"{where}, unit_dims {layer.unit_dims} units {layer.units}, unit {unit}: analytic span {analytic}, "
                f"measured {truth}; notes {[str(n) for n in result.diagnostics]}\n{case}\n{result}"
            )
        check_other_dims(case, result, layer, rng)
    return result


def run(case: Case, seed: int) -> torchprobe.RFResult:
    return check_case(case, random.Random(seed))


SEEDS = st.integers(0, 2**16)


# -- random models against the measurement ------------------------------------------------------------


@settings(max_examples=12, **SETTINGS)
@given(case=vit_models(), seed=SEEDS)
def test_vit_patch_tokens_and_attention(case: Case, seed: int) -> None:
    """Conv patch embedding -> flatten(2).transpose(1, 2) -> [class token by cat] [+ position
    embedding] -> LayerNorm -> Linear -> [SDPA on heads / nn.MultiheadAttention / softmax(q k^T) v,
    maybe residual]."""
    run(case, seed)


@settings(max_examples=10, **SETTINGS)
@given(case=swin_models(), seed=SEEDS)
def test_swin_windows(case: Case, seed: int) -> None:
    """Window partition into the batch dim after a roll, attention inside windows by matmul,
    reverse, roll back, a conv; one or two blocks with different shifts."""
    run(case, seed)


@settings(max_examples=10, **SETTINGS)
@given(case=maxvit_models(), seed=SEEDS)
def test_maxvit_block_and_grid(case: Case, seed: int) -> None:
    """Block partition (neighbours) and grid partition (strided pixels), attention in each."""
    run(case, seed)


class WindowMeanResidual(nn.Module):
    """``x + mean over the window's tokens``: every token keeps its own pixel and sees its window."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x.mean(1, keepdim=True)


def test_maxvit_block_then_grid_every_unit() -> None:
    """MaxViT's order, smallest form: block attention (2 x 2 blocks), then the grid partition
    (g = 2) of its output. After the block stage column c carries the unit of block c // 2, so
    the grid's split of W = 6 into (2, 3) is no sum of one table per new dim: the view spells the
    columns out first. A token sees its pixel's block; cell 0 (pixels at rows 0, 2 and columns
    0, 3) sees the four blocks of rows 0..3, columns 0..3. Regression: this over-counted columns."""
    model = nn.Sequential(BlockPartition(2), WindowMeanResidual(), BlockReverse(2, 4, 6), GridPartition(2)).eval()
    case = Case(model, (1, 4, 6), "CHW")
    result = analyse(case)
    assert_no_failed_rule(result, case)
    assert not result.diagnostics
    out = result.output
    for unit in itertools.product(*(range(n) for n in out.units)):
        truth = measured(case, out, unit)
        assert out.span(unit) == truth, f"unit {unit} of {out.unit_dims}: analytic {out.span(unit)}, measured {truth}"
    token = torchprobe.measure_receptive_field(model, (1, 4, 6), "", (0, 0), unit_dims=(0, 1)).spans
    cell = torchprobe.measure_receptive_field(model, (1, 4, 6), "", (0,), unit_dims=(0,)).spans
    assert (token, cell) == (((0, 1), (0, 1)), ((0, 3), (0, 3)))
    assert out.span(unit_at(out, {0: 0, 1: 0})) == token


@settings(max_examples=12, **SETTINGS)
@given(case=space_to_depth_models(), seed=SEEDS)
def test_space_to_depth(case: Case, seed: int) -> None:
    """view/permute/reshape space-to-depth, a conv, sometimes depth-to-space back and a conv."""
    run(case, seed)


@settings(max_examples=12, **SETTINGS)
@given(case=pixel_shuffle_models(), seed=SEEDS)
def test_pixel_unshuffle_shuffle_pairs(case: Case, seed: int) -> None:
    run(case, seed)


@settings(max_examples=15, **SETTINGS)
@given(case=split_cat_models(), seed=SEEDS)
def test_split_convs_cat(case: Case, seed: int) -> None:
    """chunk / torch.split along H or W, a different conv per piece, cat back, a conv across the seams."""
    run(case, seed)


@settings(max_examples=15, **SETTINGS)
@given(case=signal_models(), seed=SEEDS)
def test_raw_signal_layout_t(case: Case, seed: int) -> None:
    """Input (T,) with layout T: unsqueeze(1), Conv1d stacks (some with LayerNorm between transposes)."""
    result = run(case, seed)
    assert result.axis_names == ("T",)


@settings(max_examples=15, **SETTINGS)
@given(case=sequence_models(), seed=SEEDS)
def test_token_sequences_layout_lc(case: Case, seed: int) -> None:
    """Input (L, E) with layout LC: [Conv1d over tokens] -> MHA / causal SDPA -> [Conv1d over tokens]."""
    result = run(case, seed)
    assert result.axis_names == ("L",)


@settings(max_examples=12, **SETTINGS)
@given(case=permuted(st.one_of(split_cat_models(), space_to_depth_models(), vit_models(), swin_models())), seed=SEEDS)
def test_any_dim_order_and_axis_names(case: Case, seed: int) -> None:
    """The CHW models above fed as HWC, WCH, ... with other axis letters: the layout says which
    input dim is which; the spans come per spatial axis in the layout's order, named by it."""
    result = run(case, seed)
    assert result.axis_names == tuple(letter for letter in case.layout if letter != "C")
    assert result.spatial_size == tuple(n for n, letter in zip(case.size, case.layout) if letter != "C")


# -- facts derived by hand ----------------------------------------------------------------------------


@settings(max_examples=10, **SETTINGS)
@given(case=vit_models(attention=False, head=False))
def test_a_patch_token_sees_exactly_its_patch(case: Case) -> None:
    """Before attention, token ``t`` (after the class token, which sees no pixel) is patch
    ``(t // nw, t % nw)``: pixels ``r*ph .. r*ph+ph-1`` by ``c*pw .. c*pw+pw-1``, every unit."""
    (ph, pw), (nh, nw), cls = case.params["patch"], case.params["grid"], case.params["cls"]
    result = analyse(case)
    assert_no_failed_rule(result, case)
    for name in ("embed", "norm", "fc", ""):
        layer = result.layer(name)
        first = cls and name != "embed"  # the class token is prepended after the embedding
        assert set(layer.unit_dims) <= {1}, name
        assert layer.output_shape[1] == nh * nw + first, name
        if first:
            assert layer.span(unit_at(layer, {1: 0})) == (None, None), name
        for t in range(nh * nw):
            r, c = divmod(t, nw)
            patch = ((r * ph, r * ph + ph - 1), (c * pw, c * pw + pw - 1))
            assert layer.span(unit_at(layer, {1: t + first})) == patch, f"{name} token {t + first}\n{case}"
    out = result.output
    assert measured(case, out, unit_at(out, {1: nh * nw + cls - 1})) == patch


class TokenNextToOne(nn.Module):
    """A learned token prepended to a sequence of one token: the token of a ViT whose image is one
    patch (``pool=False``), or a global-pooled one (``pool=True``)."""

    def __init__(self, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1) if pool else nn.Conv2d(1, 4, 2, 2)
        self.pool = nn.AdaptiveAvgPool2d(1) if pool else nn.Identity()
        self.token = nn.Parameter(torch.zeros(1, 1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv(x)).flatten(2).transpose(1, 2)  # (B, 1, 4)
        return torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 2, 4)


@pytest.mark.parametrize(("pool", "size"), [(False, (1, 2, 2)), (True, (1, 6, 6))])
def test_a_learned_token_next_to_a_single_token_sees_nothing(pool: bool, size: tuple[int, ...]) -> None:
    """Token 0 is a parameter: no pixel; token 1 sees the whole image."""
    case = Case(TokenNextToOne(pool).eval(), size, "CHW")
    out = analyse(case).output
    everything = ((0, size[1] - 1), (0, size[2] - 1))
    truth = [torchprobe.measure_receptive_field(case.model, size, "", (t,), unit_dims=(1,)).spans for t in (0, 1)]
    assert truth == [(None, None), everything]
    spans = [out.span(unit_at(out, {1: t})) for t in (0, 1)]
    assert spans == truth, f"unit_dims {out.unit_dims}, is_global {out.is_global}: analytic {spans}, measured {truth}"


@settings(max_examples=6, **SETTINGS)
@given(case=vit_models(attention=True, head=False))
def test_a_token_after_attention_sees_every_patch(case: Case) -> None:
    (ph, pw), (nh, nw), cls = case.params["patch"], case.params["grid"], case.params["cls"]
    result = analyse(case)
    assert_no_failed_rule(result, case)
    everything = ((0, nh * ph - 1), (0, nw * pw - 1))  # the pixels the patch conv drops are seen by none
    out = result.output
    assert out.is_global == (nh * ph == case.size[1], nw * pw == case.size[2])
    for t in range(nh * nw + cls):  # the class token too
        assert out.span(unit_at(out, {1: t})) == everything, f"token {t}\n{case}"
    assert measured(case, out, unit_at(out, {1: 0})) == everything


def window_pixels(first: int, window: int, shift: int, size: int) -> tuple[int, int]:
    """The hull of the pixels of a window starting at ``first`` after ``roll(-shift)``."""
    pixels = [(first + i + shift) % size for i in range(window)]
    return min(pixels), max(pixels)


@settings(max_examples=8, **SETTINGS)
@given(case=swin_models(plain=True))
def test_a_window_attention_unit_sees_exactly_its_window(case: Case) -> None:
    """After a 1x1 conv, every token of window ``n = i * nW + j`` sees exactly the pixels of
    window (i, j) of the rolled image, and nothing else."""
    w, (shift,), (nh, nw) = case.params["window"], case.params["shifts"], case.params["windows"]
    h, width = w * nh, w * nw
    result = analyse(case)
    assert_no_failed_rule(result, case)
    attn = result.layer("blocks.0.attn")
    assert attn.output_shape[:2] == (nh * nw, w * w) and set(attn.unit_dims) <= {0, 1}
    for n in range(nh * nw):
        i, j = divmod(n, nw)
        window = (window_pixels(i * w, w, shift, h), window_pixels(j * w, w, shift, width))
        for token in (0, w * w - 1):
            assert attn.span(unit_at(attn, {0: n, 1: token})) == window, f"window {n} token {token}\n{case}"
    truth = torchprobe.measure_receptive_field(case.model, case.size, "blocks.0.attn", (nh * nw - 1, 0),
                                               unit_dims=(0, 1))
    support = truth.support
    i, j = divmod(nh * nw - 1, nw)
    rows = {(i * w + r + shift) % h for r in range(w)}
    cols = {(j * w + c + shift) % width for c in range(w)}
    assert {(int(a), int(b)) for a, b in support.nonzero().tolist()} == set(itertools.product(rows, cols))


@settings(max_examples=6, **SETTINGS)
@given(case=maxvit_models(stages=("grid",)))
def test_a_grid_attention_unit_sees_its_strided_cell(case: Case) -> None:
    """Grid cell ``(a, b)`` holds pixels ``a, a + H/g, ..`` by ``b, b + W/g, ..``: its hull."""
    g = case.params["grid"]
    _, h, w = case.size
    result = analyse(case)
    assert_no_failed_rule(result, case)
    attn = result.layer("blocks.0.attn")
    cells = (h // g) * (w // g)
    assert attn.output_shape[:2] == (cells, g * g) and set(attn.unit_dims) <= {0, 1}
    for n in range(cells):
        a, b = divmod(n, w // g)
        cell = ((a, a + (g - 1) * (h // g)), (b, b + (g - 1) * (w // g)))
        assert attn.span(unit_at(attn, {0: n, 1: g * g - 1})) == cell, f"cell {n}\n{case}"


@settings(max_examples=6, **SETTINGS)
@given(case=maxvit_models(stages=("block",)))
def test_a_block_attention_unit_sees_its_block(case: Case) -> None:
    s = case.params["window"]
    _, h, w = case.size
    result = analyse(case)
    assert_no_failed_rule(result, case)
    attn = result.layer("blocks.0.attn")
    assert attn.output_shape[:2] == ((h // s) * (w // s), s * s) and set(attn.unit_dims) <= {0, 1}
    for n in range((h // s) * (w // s)):
        a, b = divmod(n, w // s)
        block = ((a * s, a * s + s - 1), (b * s, b * s + s - 1))
        assert attn.span(unit_at(attn, {0: n, 1: s * s - 1})) == block, f"block {n}\n{case}"


@settings(max_examples=8, **SETTINGS)
@given(case=sequence_models(local=False))
def test_attention_over_a_sequence_sees_every_earlier_token(case: Case) -> None:
    """Self-attention: every token sees all L tokens; causal: token i sees tokens 0..i."""
    tokens, causal = case.params["tokens"], case.params["causal"]
    result = analyse(case)
    assert_no_failed_rule(result, case)
    attn = result.layer("attention")
    assert attn.is_global == (not causal,)
    for t in range(tokens):
        assert attn.span(unit_at(attn, {1: t})) == ((0, t if causal else tokens - 1),), f"token {t}\n{case}"
    assert measured(case, attn, unit_at(attn, {1: 0})) == ((0, 0 if causal else tokens - 1),)


def test_wav2vec2_feature_encoder() -> None:
    """Kernels 10,3,3,3,3,2,2 and strides 5,2,2,2,2,2,2 on one second at 16 kHz: 49 frames of
    400 samples (25 ms) every 320 (20 ms)."""
    case = Case(wav2vec2_encoder(), (16000,), "T")
    result = torchprobe.receptive_field(case.model, case.size, layout="T")
    assert result.diagnostics == ()
    out = result.output
    assert result.axis_names == ("T",)
    assert out.output_shape == (1, 4, 49) and out.units == (49,)
    assert out.rf == (400,) and out.jump == (320,)
    for frame in (0, 1, 48):
        assert out.span(frame) == ((320 * frame, 320 * frame + 399),)
        assert measured(case, out, (frame,)) == out.span(frame)
    first = result.layer("layers.0.conv")
    assert first.rf == (10,) and first.jump == (5,)


# -- layout errors ------------------------------------------------------------------------------------


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.mark.parametrize(
    ("model", "size", "layout", "message"),
    [
        (nn.Conv2d(3, 1, 3), (3, 8, 8), "HW", "has 2 letters but input 0 has 3 dims"),
        (nn.Conv2d(3, 1, 3), (3, 8, 8), "CHWT", "has 4 letters but input 0 has 3 dims"),
        (nn.Conv2d(3, 1, 3), (3, 8, 8), "CHH", "names axis H twice"),
        (nn.Conv2d(3, 1, 3), (3, 8, 8), "chw", "must be capital letters"),
        (nn.Conv2d(3, 1, 3), (3, 8, 8), "C-W", "must be capital letters"),
        (Tokens(), (6, 4), "CC", "no spatial axis"),
        (Tokens(), (4,), None, "no spatial axis"),  # a rank-1 input defaults to features only
        (Tokens(), (4,), "C", "no spatial axis"),
    ],
    ids=["too few letters", "too many letters", "an axis twice", "lowercase", "not a letter", "only features",
         "rank 1 by default", "rank 1 as C"],
)
def test_layout_errors(model: nn.Module, size: tuple[int, ...], layout: str | None, message: str) -> None:
    with pytest.raises(torchprobe.UsageError, match=message) as caught:
        torchprobe.receptive_field(model, size, layout=layout)
    if layout is not None:
        assert repr(layout) in str(caught.value)


def test_layout_errors_in_the_measurement() -> None:
    with pytest.raises(torchprobe.UsageError, match="has 2 letters but input 0 has 3 dims"):
        torchprobe.measure_receptive_field(nn.Conv2d(3, 1, 3), (3, 8, 8), "", (0, 0), layout="HW")
    with pytest.raises(torchprobe.UsageError, match="names axis H twice"):
        torchprobe.measure_receptive_field(nn.Conv2d(3, 1, 3), (3, 8, 8), "", (0, 0), layout="CHH")


def test_one_layout_per_input() -> None:
    class Two(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x + y

    with pytest.raises(torchprobe.UsageError, match="3 layouts for 2 inputs"):
        torchprobe.receptive_field(Two(), [(3, 8), (3, 8)], layout=["CL", "CL", "CL"])


class Then(nn.Module):
    """``layer(f(x))``: a reshuffle of the input's dims, then one layer."""

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor], layer: nn.Module, text: str) -> None:
        super().__init__()
        self.f, self.layer, self.text = f, layer, text

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.f(x))

    def extra_repr(self) -> str:
        return self.text


OTHER_LAYOUTS = {
    "CCL: two feature dims flattened into channels": (
        Then(lambda x: x.flatten(1, 2), nn.Conv1d(6, 2, 3, 2), "flatten(1, 2)"), (2, 3, 9), "CCL", ("L",)),
    "HCW: channels in the middle": (
        Then(lambda x: x.permute(0, 2, 1, 3), nn.Conv2d(2, 2, 3, 2), "permute(0, 2, 1, 3)"), (7, 2, 9), "HCW",
        ("H", "W")),
    "THWC: a channels-last video": (
        Then(lambda x: x.permute(0, 4, 1, 2, 3), nn.Conv3d(2, 2, (2, 3, 3), (2, 1, 2)), "permute(0, 4, 1, 2, 3)"),
        (4, 5, 6, 2), "THWC", ("T", "H", "W")),
    "HW: no channel dim at all": (
        Then(lambda x: x.unsqueeze(1), nn.Conv2d(1, 1, 3, 2), "unsqueeze(1)"), (7, 9), "HW", ("H", "W")),
}


@pytest.mark.parametrize("name", list(OTHER_LAYOUTS))
def test_other_layouts_every_unit(name: str) -> None:
    model, size, layout, axes = OTHER_LAYOUTS[name]
    case = Case(model.eval(), size, layout)
    result = analyse(case)
    assert result.diagnostics == () and result.axis_names == axes
    for layer in (layer for layer in result.layers if layer.kind == "module"):
        for unit in itertools.product(*(range(n) for n in layer.units)):
            assert layer.span(unit) == measured(case, layer, unit), f"{layer.name or '(model)'} unit {unit}"


def test_channels_last_layout_names_its_axes() -> None:
    """HWC: the spatial axes are dims 0 and 1 (batch excluded); a permute to CHW then a conv."""

    class ChannelsLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 1, 3, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x.permute(0, 3, 1, 2))

    case = Case(ChannelsLast().eval(), (9, 7, 2), "HWC")
    result = check_case(case, random.Random(0), rows=1, units=4)
    assert result.axis_names == ("H", "W")
    assert result.output.span((1, 2)) == ((2, 4), (4, 6))


def test_is_causal_is_trusted_for_a_mask_the_meta_pass_cannot_see() -> None:
    """``TransformerEncoderLayer(x, mask, is_causal=True)`` on meta: the mask is meta too, but
    ``is_causal`` says it is the causal one (PyTorch trusts the hint as well): token ``t`` sees
    tokens ``0 .. t`` with no note, as the measurement (on real values) says."""

    class Causal(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device)
            return self.layer(x, mask, is_causal=True)

    model = Causal().eval()
    result = torchprobe.receptive_field(model, (10, 16), layout="LC", device="meta")
    assert result.diagnostics == ()
    out = result.output
    for token in (0, 4, 9):
        truth = torchprobe.measure_receptive_field(model, (10, 16), "", (token,), layout="LC", unit_dims=(1,)).spans
        assert out.span(unit_at(out, {1: token})) == truth == ((0, token),)


def test_a_residual_around_global_attention_is_not_a_misaligned_merge() -> None:
    """``x + attention(x)``: every attended token sees the whole sequence (jump 0), which
    broadcasts over ``x``'s grid; that is no merge of misaligned branches (no ``!``)."""
    model = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    result = torchprobe.receptive_field(model, (10, 16), layout="LC")
    assert all(layer.aligned for layer in result.layers)
    assert result.output.is_global == (True,)
