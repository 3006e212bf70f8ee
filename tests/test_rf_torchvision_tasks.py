"""Receptive fields of torchvision beyond the classifiers, against the gradient measurement.

Transformers and hybrids (``vit_b_16`` at image 64, ``swin_t``, ``maxvit_t``), video models
(``r3d_18``, ``swin3d_t``, ``mvit_v2_s``, ``s3d``: layout C + DHW), segmentation
(``lraspp_mobilenet_v3_large``, ``fcn_resnet50``), the backbone of the detector
``ssdlite320_mobilenet_v3_large`` and the optical-flow ``raft_small`` (two frames), at small
inputs: no row is unknown and no rule is missing or failed; at a few layers chosen where the units
are still local (patch tokens, windows, blocks, encoders, and the models' own dense outputs), the
first, middle and last unit (``LayerRF.unit_dims``) equal ``measure_receptive_field``. The
measurement stops its forward at the measured layer, so early layers are cheap; layers are sampled,
not swept (``s3d`` is only checked for unknown rows: its float64 forward is the slowest).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import pytest
from torch import nn
from torchvision import models

import torchprobe

FAILURES = {"no_rule", "rule_failed", "unsupported"}


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    size: tuple[tuple[int, ...], ...]  # one (C, H, W) per input
    layers: tuple[str, ...]


CASES = {
    "vit_b_16": Case(lambda: models.vit_b_16(image_size=64), ((3, 64, 64),),
                     ("encoder.dropout", "encoder.layers.encoder_layer_0.ln_1")),
    "swin_t": Case(models.swin_t, ((3, 112, 112),), ("features.1.0.attn", "features.2")),
    # the first MBConv's squeeze-excitation gate makes every unit global before any attention:
    # units still differ up to the gate (window attention is sampled on swin_t and swin3d_t)
    "maxvit_t": Case(models.maxvit_t, ((3, 224, 224),),
                     ("stem", "blocks.0.layers.0.layers.MBconv.layers.conv_b")),
    "ssdlite320_mobilenet_v3_large": Case(
        lambda: models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).backbone,
        ((3, 160, 160),), ("features.0.4", "features.0.7")),
    "r3d_18": Case(models.video.r3d_18, ((3, 8, 32, 32),), ("stem", "layer1")),
    "swin3d_t": Case(models.video.swin3d_t, ((3, 8, 64, 64),), ("patch_embed", "features.0.0.attn")),
    "mvit_v2_s": Case(models.video.mvit_v2_s, ((3, 16, 224, 224),), ("blocks.0.norm1",)),
    "s3d": Case(models.video.s3d, ((3, 16, 224, 224),), ()),
    "lraspp_mobilenet_v3_large": Case(
        lambda: models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None), ((3, 64, 64),),
        ("backbone.1", "")),
    "fcn_resnet50": Case(lambda: models.segmentation.fcn_resnet50(weights=None, weights_backbone=None),
                         ((3, 64, 64),), ("backbone.layer1", "")),
    "raft_small": Case(lambda: models.optical_flow.raft_small(weights=None), ((3, 128, 128), (3, 128, 128)),
                       ("feature_encoder", "context_encoder.layer2", "")),
}


@cache
def built(name: str) -> nn.Module:
    return CASES[name].build().eval().requires_grad_(False)


@cache
def analysed(name: str) -> torchprobe.RFResult:
    size = CASES[name].size
    return torchprobe.receptive_field(built(name), size[0] if len(size) == 1 else list(size))


@pytest.mark.parametrize("name", CASES)
def test_no_row_is_unknown_and_no_rule_is_missing(name: str) -> None:
    result = analysed(name)
    assert [layer.name for layer in result.layers if layer.unknown] == []
    assert [str(note) for note in result.diagnostics if note.code in FAILURES] == []


SAMPLED = [(name, layer) for name, case in CASES.items() for layer in case.layers]


@pytest.mark.parametrize(("name", "layer"), SAMPLED, ids=[f"{n}:{layer}" for n, layer in SAMPLED])
def test_sampled_units_equal_the_measurement(name: str, layer: str) -> None:
    result = analysed(name)
    row = result.layer(layer)
    assert row.unit_dims, f"{layer}: every unit is global here, so the check would say nothing"
    size = CASES[name].size
    for unit in (tuple(0 for _ in row.units), tuple(n // 2 for n in row.units), tuple(n - 1 for n in row.units)):
        truth = torchprobe.measure_receptive_field(built(name), size[0] if len(size) == 1 else list(size), layer,
                                                   unit, call=row.call, unit_dims=row.unit_dims).spans
        assert row.span(unit) == truth, f"{layer} unit {unit} of {row.unit_dims}: {row.span(unit)} != {truth}"


def test_a_vit_token_sees_its_patch_until_the_first_attention() -> None:
    """Token 6 of the 4 x 4 patch grid (after the class token: index 7) is patch (1, 2)."""
    row = analysed("vit_b_16").layer("encoder.layers.encoder_layer_0.ln_1")
    assert row.unit_dims == (1,)
    assert row.span((7,)) == ((16, 31), (32, 47))
    assert row.span((0,)) == (None, None)  # the class token reads no pixel
    attended = analysed("vit_b_16").layer("encoder.layers.encoder_layer_0")
    assert attended.is_global == (True, True)


def test_a_swin_window_token_sees_its_window() -> None:
    """After the 4 x 4 patch embedding the 28 x 28 token grid is cut into 7 x 7 windows: a token
    of the first block's attention sees its window's 28 x 28 pixels."""
    row = analysed("swin_t").layer("features.1.0.attn")
    for unit, window in (((0, 0), (0, 0)), ((3, 3), (0, 0)), ((10, 20), (1, 2)), ((27, 27), (3, 3))):
        index = dict(zip(row.unit_dims, (0,) * len(row.unit_dims))) | {1: unit[0], 2: unit[1]}
        spans = row.span(tuple(index[d] for d in row.unit_dims))
        assert spans == ((28 * window[0], 28 * window[0] + 27), (28 * window[1], 28 * window[1] + 27))


def test_raft_follows_the_first_frame_through_its_data_dependent_sampling() -> None:
    """The frames are batched through one feature encoder: the second frame's features read no
    pixel of the first. The correlation lookup samples where the flow says (a note says so), yet
    a correlation entry reads only its own query pixel's features: the flow stays local (the
    model row, in SAMPLED, matches the measurement)."""
    result = analysed("raft_small")
    assert any("grid_sample reads where the values of its grid say" in str(n) for n in result.diagnostics)
    encoder = result.layer("feature_encoder")
    assert encoder.output_shape is not None and encoder.output_shape[0] == 2 and 0 in encoder.unit_dims
    second = dict.fromkeys(encoder.unit_dims, 0) | {0: 1}
    assert encoder.span(tuple(second[d] for d in encoder.unit_dims)) == (None, None)
    assert result.output.is_global == (False, False)
