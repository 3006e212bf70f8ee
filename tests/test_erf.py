"""The effective receptive field (``torchprobe.effective_receptive_field``, ``torchprobe erf``).

On linear stacks with uniform weights the gradient of a unit is known in closed form: per axis the
convolution of the layers' boxes (a binomial-like profile), computed here independently with numpy
from each layer's geometry, never through torch. On random stacks with random weights and ReLUs
the gradient is zero outside the theoretical span of the unit (the engine's ``LayerRF.span``). The
model comes back untouched (the snapshot of tests/test_side_effects.py), and the command, the JSON
report, the table and the pictures work.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import torchprobe
from tests.helpers.cli import assert_error, run_cli
from tests.test_side_effects import ConvBN, Snapshot, prepare
from torchprobe.render import render_text

# -- the closed form --------------------------------------------------------------------------------

Geometry = tuple[int, int, int, int]  # kernel, stride, dilation, padding (one axis)


def conv_stack(geometry: list[Geometry], channels: int = 1, uniform: bool = True, relu: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, s, d, p in geometry:
        conv = nn.Conv2d(channels, channels, k, stride=s, dilation=d, padding=p, bias=not uniform)
        if uniform:
            nn.init.constant_(conv.weight, 1.0 / (channels * k * k))
        layers += [conv, nn.ReLU()] if relu else [conv]
    return nn.Sequential(*layers)


def output_sizes(geometry: list[Geometry], n: int) -> list[int]:
    sizes = [n]
    for k, s, d, p in geometry:
        sizes.append((sizes[-1] + 2 * p - d * (k - 1) - 1) // s + 1)
    return sizes


def profile(geometry: list[Geometry], n: int, unit: int) -> np.ndarray:
    """d unit / d pixel along one axis of a uniform stack (weights 1/k per axis): back from a delta
    at ``unit`` through each layer, output ``o`` spreading 1/k onto inputs ``o*s - p + t*d``."""
    sizes = output_sizes(geometry, n)
    grad = np.zeros(sizes[-1])
    grad[unit] = 1.0
    for (k, s, d, p), size_in in zip(reversed(geometry), reversed(sizes[:-1])):
        back = np.zeros(size_in)
        for o, g in enumerate(grad):
            for t in range(k):
                i = o * s - p + t * d
                if 0 <= i < size_in:
                    back[i] += g / k
        grad = back
    return grad


def test_three_uniform_3x3_convs_give_the_binomial_like_box_convolution() -> None:
    """Luo et al.'s example: three 3x3 averaging convs, no bias or nonlinearity. The ERF of the
    centre unit is the outer product of box * box * box (np.convolve), exactly inside the span."""
    model = conv_stack([(3, 1, 1, 0)] * 3)
    box = np.ones(3) / 3
    expected_1d = np.convolve(np.convolve(box, box), box)  # [1, 3, 6, 7, 6, 3, 1] / 27
    x = torch.full((2, 1, 17, 17), 0.5)  # any input: the stack is linear
    result = torchprobe.effective_receptive_field(model, input_data=x, layer="2")
    erf = result.layer("2")
    assert erf.unit == (5, 5) and erf.span == ((5, 11), (5, 11)) and erf.theory.rf == (7, 7)
    expected = np.zeros((17, 17))
    expected[5:12, 5:12] = np.outer(expected_1d, expected_1d)
    np.testing.assert_allclose(erf.map.numpy(), expected, rtol=1e-5, atol=1e-12)
    assert torch.all(erf.map[~_box_mask(erf.span, (17, 17))] == 0)  # never outside: exactly zero
    # the figures, from their definitions
    assert erf.inside == pytest.approx(1.0)
    assert erf.mass == pytest.approx(1.0, rel=1e-5)
    assert erf.centre == (8.0, 8.0) and erf.offset == pytest.approx((0.0, 0.0), abs=1e-5)
    assert erf.std == pytest.approx((math.sqrt(2), math.sqrt(2)), rel=1e-5)  # 3 boxes of variance 2/3
    ordered = np.sort(expected.ravel())[::-1].cumsum()
    for q, area in ((0.5, erf.area50), (0.95, erf.area95)):
        assert area == pytest.approx((np.searchsorted(ordered, q - 1e-9) + 1) / 49)
    assert erf.extent95 == ((5, 11), (5, 11)) and erf.size95 == (7, 7)  # 1/27 > 2.5% at each end


def _box_mask(span: object, shape: tuple[int, int]) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    (y0, y1), (x0, x1) = span  # type: ignore[misc]
    mask[y0:y1 + 1, x0:x1 + 1] = True
    return mask


LAYER = st.tuples(st.integers(1, 4), st.integers(1, 2), st.integers(1, 2), st.integers(0, 2)).filter(
    lambda g: g[3] <= g[2] * (g[0] - 1))  # padding at most the dilated kernel's reach


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LAYER, min_size=1, max_size=3), st.integers(0, 5), st.data())
def test_random_stacks_put_the_gradient_within_the_theoretical_span(geometry: list[Geometry], extra: int,
                                                                    data: st.DataObject) -> None:
    """Uniform weights: the map is the closed form exactly. Random weights with biases and ReLUs:
    the support of the map lies within ``LayerRF.span(unit)`` of the same unit."""
    n = extra + 3 + sum(d * (k - 1) * math.prod(g[1] for g in geometry[:i]) for i, (k, s, d, p) in enumerate(geometry))
    sizes = output_sizes(geometry, n)
    assert min(sizes) >= 1  # n is at least the stack's RF
    last = str(len(geometry) - 1)
    unit = (data.draw(st.integers(0, sizes[-1] - 1)), data.draw(st.integers(0, sizes[-1] - 1)))
    x = torch.randn(2, 1, n, n, generator=torch.Generator().manual_seed(0))
    uniform = torchprobe.effective_receptive_field(conv_stack(geometry), input_data=x, layer=last, unit=unit)
    erf = uniform.layer(last)
    expected = np.outer(profile(geometry, n, unit[0]), profile(geometry, n, unit[1]))
    np.testing.assert_allclose(erf.map.numpy(), expected, rtol=1e-5, atol=1e-9)
    torch.manual_seed(len(geometry) * 100 + n)
    model = conv_stack(geometry, channels=2, uniform=False, relu=True)
    names = [str(2 * i) for i in range(len(geometry))]
    result = torchprobe.effective_receptive_field(model, input_data=torch.randn(3, 2, n, n), layer=names)
    for layer in result.layers:
        support = layer.map > 0
        assert layer.span is not None and all(s is not None for s in layer.span)
        assert not torch.any(support & ~_box_mask(layer.span, (n, n))), (layer.name, layer.span)
        assert layer.mass == 0 or layer.inside == pytest.approx(1.0)


# -- the model is left alone -----------------------------------------------------------------------


class TwoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = ConvBN()
        self.b = nn.Conv2d(4, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_the_model_is_untouched_and_batchnorm_runs_on_its_statistics() -> None:
    """Hooks, training flags (mixed), parameters, buffers (BatchNorm's statistics and counter), grads,
    requires_grad, device and the global RNG: as before. Eval mode: dropout off, the running
    statistics used, so the same inputs give the same map twice."""
    model = prepare(TwoBlocks())
    before = Snapshot.take(model)
    first = torchprobe.effective_receptive_field(model, (1, 10, 10), layer=["a.conv", "b"], batch=3)
    again = torchprobe.effective_receptive_field(model, (1, 10, 10), layer=["a.conv", "b"], batch=3)
    before.assert_unchanged(model)
    assert torch.equal(first.layer("b").map, again.layer("b").map)
    x = torch.randn(2, 1, 10, 10, generator=torch.Generator().manual_seed(1))  # not the global RNG
    x_before = x.clone()
    torchprobe.effective_receptive_field(model, input_data=x, layer="b")
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None
    before.assert_unchanged(model)


def test_usage_errors() -> None:
    model = conv_stack([(3, 1, 1, 0)])
    with pytest.raises(torchprobe.UsageError, match="input_data"):
        torchprobe.effective_receptive_field(model, layer="0")
    with pytest.raises(torchprobe.UsageError, match="nope"):
        torchprobe.effective_receptive_field(model, (1, 8, 8), layer="nope")
    with pytest.raises(torchprobe.UsageError, match="out of range"):
        torchprobe.effective_receptive_field(model, (1, 8, 8), layer="0", unit=(9, 0))
    with pytest.raises(torchprobe.UsageError, match="meta"):
        torchprobe.effective_receptive_field(model, (1, 8, 8), layer="0", device="meta")


# -- the report: JSON, table, notebook -------------------------------------------------------------


def test_json_table_and_notebook() -> None:
    model = conv_stack([(3, 1, 1, 0), (3, 2, 1, 1)], channels=2, uniform=False, relu=True)
    result = torchprobe.effective_receptive_field(model, (2, 12, 12), layer=["0", "2"], batch=2, unit={"0": (1, 2)})
    report = json.loads(json.dumps(result.to_dict()))
    assert report["schema"] == "torchprobe.erf/1" and report["inputs"] == "random normal (seed 0)"
    assert report["input_shape"] == [2, 2, 12, 12] and report["axes"] == ["H", "W"]
    first, second = report["layers"]
    assert first["unit"] == [1, 2] and second["unit"] == [2, 2]  # the centre of a 6x6 output
    assert second["theory"]["span"] == [list(s) for s in result.layer("2").span]
    for layer, erf in zip(report["layers"], result.layers):  # the window holds the whole map
        full = np.zeros((12, 12))
        (y, x), values = layer["map"]["origin"], np.array(layer["map"]["values"])
        full[y:y + values.shape[0], x:x + values.shape[1]] = values
        np.testing.assert_array_equal(full, erf.map.numpy())
    text = str(result)
    assert "Effective receptive field" in text and "random normal" in text
    assert result._repr_html_().startswith("<pre")
    assert render_text(torchprobe.render.renderable(result)) == text


# -- the command -----------------------------------------------------------------------------------

TINY = """
from torch import nn


class Tiny(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3, stride=2))
"""


def test_cli_on_a_tiny_model_file(tmp_path: Path) -> None:
    source = tmp_path / "tiny.py"
    source.write_text(TINY)
    spec = f"{source}:Tiny"
    namespace: dict[str, object] = {}
    exec(TINY, namespace)
    weights = tmp_path / "tiny.pt"
    torch.save(namespace["Tiny"]().state_dict(), weights)  # type: ignore[operator]
    proc = run_cli("erf", spec, "--input", "1,12,12", "--layer", "2", "--weights", str(weights), "--batch", "2",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["schema"] == "torchprobe.erf/1" and report["batch"] == 2 and report["weights"] == str(weights)
    assert report["layers"][0]["theory"]["rf"] == [5, 5] and report["layers"][0]["inside"] == pytest.approx(1.0)
    table = run_cli("erf", spec, "--input", "1,12,12", "--layer", "0", "--layer", "2", "--batch", "2")
    assert table.returncode == 0, table.stderr
    assert "random normal" in table.stdout and "no --weights" in table.stdout
    bad = tmp_path / "bad.pt"
    bad.write_text("not a state dict")
    assert_error(run_cli("erf", spec, "--input", "1,12,12", "--layer", "2", "--weights", str(bad)), 2, "--weights")
    assert_error(run_cli("erf", spec, "--input", "1,12,12", "--layer", "2", "--weights", str(tmp_path / "no.pt")), 2,
                 "no such file")
    other = tmp_path / "other.pt"
    torch.save({"0.weight": torch.zeros(3)}, other)
    assert_error(run_cli("erf", spec, "--input", "1,12,12", "--layer", "2", "--weights", str(other)), 2, "fit")
    assert_error(run_cli("erf", spec, "--input", "1,12,12", "--layer", "nope"), 2, "nope")
    assert_error(run_cli("erf", spec, "--input", "1,12,12", "--layer", "2", "--unit", "a,b"), 2, "--unit")


def test_cli_on_a_torchvision_model_with_random_weights() -> None:
    proc = run_cli("erf", "torchvision.models:resnet18", "--input", "3,64,64", "--layer", "layer2", "--batch", "2",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    (layer,) = json.loads(proc.stdout)["layers"]
    assert layer["name"] == "layer2" and layer["unit"] == [3, 3]  # the centre of its 8x8 output
    assert layer["theory"]["rf"] == [99, 99] and layer["inside"] == pytest.approx(1.0)
    assert 0 < layer["area50"] < layer["area95"] <= 1


# -- the pictures ----------------------------------------------------------------------------------


def test_pictures_are_figures() -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    torch.manual_seed(0)
    model = conv_stack([(3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 1, 0)], channels=1, uniform=False, relu=True)
    x = torch.rand(4, 1, 12, 12)
    layers = ["0", "2", "4"]
    at_init = torchprobe.effective_receptive_field(model, input_data=x, layer=layers)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):  # "training": a few steps towards a brighter output
        optimiser.zero_grad()
        (model(x) - 1).pow(2).mean().backward()
        optimiser.step()
    trained = torchprobe.effective_receptive_field(model, input_data=x, layer=layers)
    windows = torchprobe.plots.erf_windows(at_init)
    assert isinstance(windows, Figure) and len(windows.axes) == 3
    side_by_side = torchprobe.plots.erf_compare(at_init, trained, layer="4")
    assert isinstance(side_by_side, Figure) and len(side_by_side.axes) >= 4
    corner = torchprobe.effective_receptive_field(model, input_data=x, layer="4", unit=(0, 0))
    assert corner.layer("4").span[0][0] == 0  # type: ignore[index]  # clipped at the border
    assert isinstance(torchprobe.plots.erf_windows(corner, x[1]), Figure)
    with pytest.raises(KeyError):
        torchprobe.plots.erf_compare(at_init, trained, layer="1")  # a ReLU: not a chosen layer


def test_cli_takes_real_inputs_from_a_tensor_or_npy_file(tmp_path: Path) -> None:
    """``--data``: a saved tensor or a .npy array of real inputs; the first --batch samples, the
    same map as the API given them."""
    import numpy as np

    source = tmp_path / "tiny.py"
    source.write_text(TINY)
    spec = f"{source}:Tiny"
    images = torch.randn(5, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    torch.save({"images": images}, tmp_path / "images.pt")
    np.save(tmp_path / "images.npy", images.numpy())
    namespace: dict[str, object] = {}
    exec(TINY, namespace)
    torch.manual_seed(0)
    model = namespace["Tiny"]()  # type: ignore[operator]
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    expected = torchprobe.effective_receptive_field(model, input_data=images[:4], layer="2").to_dict()["layers"][0]
    assert expected["mass"] > 0
    for name in ("images.pt", "images.npy"):
        proc = run_cli("erf", spec, "--data", str(tmp_path / name), "--batch", "4", "--layer", "2",
                       "--weights", str(tmp_path / "tiny.pt"), "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["inputs"] == "data" and report["input_shape"] == [4, 1, 12, 12]
        assert np.allclose(report["layers"][0]["map"]["values"], expected["map"]["values"])
    (tmp_path / "words.pt").write_bytes(b"not a tensor file")
    assert_error(run_cli("erf", spec, "--data", str(tmp_path / "words.pt"), "--layer", "2"), 2, "--data")
    torch.save(torch.zeros(4, dtype=torch.long), tmp_path / "labels.pt")
    assert_error(run_cli("erf", spec, "--data", str(tmp_path / "labels.pt"), "--layer", "2"), 2, "not a batch")
    assert_error(run_cli("erf", spec, "--data", str(tmp_path / "images.pt"), "--input", "1,12,12", "--layer", "2"),
                 2, "not both")
