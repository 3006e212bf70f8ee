"""The reference model: its parameter count, its RF by hand, its rendering."""

from __future__ import annotations

import torchprobe
from mnist_demo.model import Net
from torchprobe.render import render_text

# Per axis, by hand (../shared/seed-notes.md): conv0 .. conv1x1_reduce_1.
HAND_RF = {
    "conv0": 3, "conv1": 5, "maxpool1": 6, "conv2": 10, "conv3": 14, "maxpool2": 16,
    "conv4": 24, "conv5": 32, "maxpool3": 36, "conv1x1_reduce_1": 36,
}


def test_parameter_count_is_what_the_layers_hold() -> None:
    assert sum(p.numel() for p in Net().parameters()) == 19_344


def test_rf_progression_matches_the_hand_computation() -> None:
    result = torchprobe.receptive_field(Net(), (1, 28, 28))
    for name, rf in HAND_RF.items():
        assert result.layer(name).rf == (rf, rf), name
    assert not any(result.layer(name).is_global[0] for name in HAND_RF)


def test_output_rf_is_global_on_28x28() -> None:
    out = torchprobe.receptive_field(Net(), (1, 28, 28)).output
    assert out.is_global == (True, True)
    assert out.rf == (44, 44)
    assert out.output_shape == (1, 10)


def test_rendering(golden) -> None:
    golden("seed_net_rf.txt", render_text(torchprobe.receptive_field(Net(), (1, 28, 28))))
