"""Receptive fields of torchvision models: the analytic result against the gradient measurement.

For each model a few module calls at different depths are measured at the first, middle and last
output unit of each spatial axis (``span(unit) == measured.spans``), on a non-square input wide
enough that the middle unit of one layer per model is not clipped, so that its full RF is checked.
No pretrained weights: the geometry does not depend on them.

The measurement runs a float64 forward and backward per unit, so the models are measured through
:func:`_cut_after`, which swaps every module that only runs after the measured call has returned
for a parameterless stand-in producing zeros of the same shape: such a module cannot change the
measured output, and it then costs neither the float64 copy nor the compute.
``test_cutting_the_tail_does_not_change_the_measurement`` checks that on one model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

import torchprobe
from torchprobe.render.rf import verdict
from torchprobe.rf.result import LayerRF, RFResult

CLASSIFIERS = ["resnet18", "resnet50", "vgg16", "alexnet", "inception_v3", "mobilenet_v2", "densenet121",
               "mobilenet_v3_small"]


@dataclass(frozen=True)
class Case:
    size: tuple[int, int, int]  # (C, H, W): H small to keep float64 cheap, W wide enough for `full`
    layers: tuple[str, ...]  # measured module calls, early to late
    full: str  # the layer whose middle unit must be unclipped along W


CASES = {
    "resnet18": Case((3, 64, 448), ("conv1", "layer1.1", "layer3.0", "layer4"), "layer4"),
    # layer2.0 merges the strided downsample branch; layer4 is the 427 / 32 body.
    "resnet50": Case((3, 64, 448), ("maxpool", "layer2.0", "layer3.2", "layer4"), "layer4"),
    "vgg16": Case((3, 32, 256), ("features.4", "features.16", "features.23", "features"), "features"),
    "alexnet": Case((3, 96, 288), ("features.0", "features.5", "features.8", "features"), "features"),
    # Mixed_6a and Mixed_7a call F.max_pool2d in forward: Mixed_6a, Mixed_6b and Mixed_7c come after.
    # 75 + 32k: no stride-2 valid layer drops a trailing pixel (see test_dropped_trailing_pixel...).
    "inception_v3": Case((3, 75, 331), ("maxpool1", "Mixed_5b", "Mixed_6a", "Mixed_6b", "Mixed_7c"), "Mixed_6a"),
    # features.3 and features.10 end in a residual add.
    "mobilenet_v2": Case((3, 32, 224), ("features.1", "features.3", "features.10", "features.18"), "features.10"),
    "densenet121": Case((3, 64, 320), ("features.pool0", "features.denseblock1", "features.transition2",
                                       "features.denseblock4"), "features.transition2"),
    # features.1.block.1 is the first squeeze-excitation: global from there on.
    "mobilenet_v3_small": Case((3, 64, 96), ("features.0", "features.1.block.0", "features.1.block.1",
                                             "features.12"), "features.1.block.0"),
}


@cache
def build(name: str) -> nn.Module:
    """Random weights, eval mode; no parameter needs a gradient (the measurement then computes
    only the input's)."""
    kwargs = {"aux_logits": False, "init_weights": False} if name == "inception_v3" else {}
    return getattr(torchvision.models, name)(weights=None, **kwargs).eval().requires_grad_(False)


@cache
def analytic(name: str, size: tuple[int, ...]) -> RFResult:
    return torchprobe.receptive_field(build(name), size)


def units(layer: LayerRF) -> list[tuple[int, ...]]:
    """First, middle and last unit along every spatial axis."""
    shape = layer.output_shape[2:]
    return [tuple(0 for _ in shape), tuple(n // 2 for n in shape), tuple(n - 1 for n in shape)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """The float64 convolutions here are small: one intra-op thread is as fast, and OpenMP threads
    spinning on shared cores (pytest -n 2 on two cores) make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- cutting off what runs after the measured call -------------------------------------------------


class _Zeros(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return x.new_zeros(self.shape)


@cache
def _calls(name: str, size: tuple[int, ...]) -> tuple[list[tuple[str, str]], dict[str, list]]:
    """Module call events ("start"/"end", name) in execution order, and each module's output shapes."""
    model = build(name)
    events: list[tuple[str, str]] = []
    shapes: dict[str, list] = {}
    handles = []
    for qualified, module in model.named_modules():
        if not qualified:
            continue

        def before(m, args, qualified=qualified):
            events.append(("start", qualified))

        def after(m, args, out, qualified=qualified):
            events.append(("end", qualified))
            shapes.setdefault(qualified, []).append(tuple(out.shape) if isinstance(out, torch.Tensor) else None)

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        with torch.no_grad():
            model(torch.ones(1, *size))
    finally:
        for handle in handles:
            handle.remove()
    return events, shapes


@contextmanager
def _cut_after(name: str, size: tuple[int, ...], layer: str, call: int = 0) -> Iterator[nn.Module]:
    """The model with every module whose only call starts after ``layer``'s call ended replaced
    by zeros of its output shape (restored on exit)."""
    model = build(name)
    events, shapes = _calls(name, size)
    end = [i for i, e in enumerate(events) if e == ("end", layer)][call]
    starts: dict[str, list[int]] = {}
    for i, (what, qualified) in enumerate(events):
        if what == "start":
            starts.setdefault(qualified, []).append(i)
    cut: list[str] = []
    for qualified, _ in model.named_modules():
        if not qualified or any(qualified.startswith(c + ".") for c in cut):
            continue
        at = starts.get(qualified, [])
        if len(at) == 1 and at[0] > end and shapes[qualified][0] is not None:
            cut.append(qualified)
    originals = []
    try:
        for qualified in cut:
            parent_name, _, attr = qualified.rpartition(".")
            parent = model.get_submodule(parent_name)
            originals.append((parent, attr, getattr(parent, attr)))
            setattr(parent, attr, _Zeros(shapes[qualified][0]))
        yield model
    finally:
        for parent, attr, module in reversed(originals):
            setattr(parent, attr, module)


def measure(name: str, size: tuple[int, ...], layer: str, unit: tuple[int, ...], call: int = 0):
    with _cut_after(name, size, layer, call) as model:
        return torchprobe.measure_receptive_field(model, size, layer, unit, call=call)


# -- the whole model at its usual size: every op has a rule, the classifier sees everything -------


SIDES = [(name, 224) for name in CLASSIFIERS if name != "inception_v3"] + [("inception_v3", 299)]


@pytest.mark.parametrize(("name", "side"), SIDES)
def test_no_unknown_ops_and_the_output_is_global(name: str, side: int) -> None:
    result = analytic(name, (3, side, side))
    assert list(result.diagnostics) == []
    assert result.fallback_reason is None
    assert all(layer.known for layer in result.layers), [layer.name for layer in result.layers if not layer.known]
    assert result.output.is_global == (True, True)
    assert result.output.output_shape == (1, 1000)


def test_inception_v3_never_sees_the_last_row_and_column_at_224() -> None:
    """Its stem (3x3, stride 2, no padding) covers pixels 0..222 of 224, and later unpadded strided
    layers drop two more: pixels 221..223 reach no unit, so the output is not global, and the
    measurement of the whole model agrees."""
    result = analytic("inception_v3", (3, 224, 224))
    assert list(result.diagnostics) == []
    assert result.output.is_global == (False, False)
    measured = torchprobe.measure_receptive_field(build("inception_v3"), (3, 224, 224), "", 0)
    assert result.output.span(0) == ((0, 220), (0, 220)) == measured.spans
    assert "221..223" in verdict(result)
    stem = result.layer("Conv2d_1a_3x3")
    last = stem.output_shape[-1] - 1
    measured_stem = measure("inception_v3", (3, 224, 224), "Conv2d_1a_3x3", last)
    assert stem.span(last) == measured_stem.spans == ((220, 222), (220, 222))


def test_resnet50_body_rf_is_427_with_jump_32() -> None:
    result = analytic("resnet50", (3, 224, 224))
    for name in ("layer4", "layer4.2"):
        body = result.layer(name)
        assert body.rf == (427, 427), name  # not 1963
        assert body.jump == (32, 32), name  # not 256
        assert body.start == (0, 0), name
        assert body.is_global == (False, False), name
    assert result.layer("layer3").rf == (267, 267)
    assert result.layer("layer3").jump == (16, 16)


# -- analytic against measured ---------------------------------------------------------------------

MEASURED = [
    pytest.param(name, layer, id=f"{name}-{layer}")
    for name, case in CASES.items()
    for layer in case.layers
]


@pytest.mark.parametrize(("name", "layer"), MEASURED)
def test_analytic_equals_measured(name: str, layer: str) -> None:
    case = CASES[name]
    row = analytic(name, case.size).layer(layer)
    assert row.kind == "module" and row.known
    for unit in units(row):
        assert row.span(unit) == measure(name, case.size, layer, unit).spans, unit


@pytest.mark.parametrize("name", list(CASES))
def test_the_full_rf_is_checked_somewhere(name: str) -> None:
    """The middle unit of ``case.full`` is not clipped along W, so the measurement above checks
    its whole RF there (and is not just the image border)."""
    case = CASES[name]
    row = analytic(name, case.size).layer(case.full)
    middle = units(row)[1]
    lo, hi = row.span(middle, clip=False)[1]
    assert row.span(middle)[1] == (lo, hi)
    assert hi - lo + 1 == row.rf[1]
    assert row.is_global[1] is False


def test_resnet50_body_rf_measured_unclipped() -> None:
    case = CASES["resnet50"]
    row = analytic("resnet50", case.size).layer("layer4")
    assert row.rf == (427, 427) and row.jump == (32, 32)
    middle = units(row)[1]
    assert row.span(middle)[1] == (11, 437)
    assert measure("resnet50", case.size, "layer4", middle).rf[1] == 427


# -- functional max pooling inside Inception3.forward ----------------------------------------------


def test_inception_functional_max_pool_branch_alone() -> None:
    """Mixed_6a = cat(branch3x3, branch3x3dbl, F.max_pool2d(x)): with the two conv branches'
    outputs replaced by zeros, the gradient reaches the input only through the functional max pool,
    whose RF (143) is narrower than the block's (159), so its own row is checked."""
    case = CASES["inception_v3"]
    result = analytic("inception_v3", case.size)
    pool = result.layer("Mixed_6a.max_pool2d")
    assert pool.kind == "op"
    assert pool.rf[1] == 143 < result.layer("Mixed_6a").rf[1] == 159
    model = build("inception_v3")
    handles = [model.get_submodule(f"Mixed_6a.{b}").register_forward_hook(lambda m, a, out: torch.zeros_like(out))
               for b in ("branch3x3", "branch3x3dbl_3")]
    try:
        for unit in units(pool):
            assert pool.span(unit) == measure("inception_v3", case.size, "Mixed_6a", unit).spans, unit
    finally:
        for handle in handles:
            handle.remove()


# -- regressions: mismatches found by this suite, now fixed ---------------------------------------------


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def test_relu6_does_not_blind_the_measurement() -> None:
    """Residual sums reach 8 on all-ones input; a kept ReLU6 would have a zero gradient there."""
    net = nn.Sequential(_Residual(), _Residual(), _Residual(), nn.ReLU6())  # all-ones input: 1, 2, 4, 8
    analytic_span = torchprobe.receptive_field(net, (1, 16, 16)).layer("3").span((8, 8))
    assert analytic_span == ((5, 11), (5, 11))
    assert torchprobe.measure_receptive_field(net, (1, 16, 16), "3", (8, 8)).spans == analytic_span


def test_dropped_trailing_pixel_is_not_in_later_spans() -> None:
    """A pixel that floor division drops is seen by no unit, even through later padding."""
    net = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(1, 1, 3, padding=1))  # the pool never sees pixel 4 of 5
    analytic_span = torchprobe.receptive_field(net, (1, 5, 5)).layer("1").span((1, 1))
    measured = torchprobe.measure_receptive_field(net, (1, 5, 5), "1", (1, 1)).spans
    assert measured == ((0, 3), (0, 3))
    assert analytic_span == measured


def test_dropped_trailing_pixel_inception_v3() -> None:
    """Inception3's stem (3x3 stride-2 valid conv) drops the last row and column of an even input."""
    size = (3, 80, 320)
    row = analytic("inception_v3", size).layer("maxpool1")
    last = units(row)[2]
    assert measure("inception_v3", size, "maxpool1", last).spans == ((66, 78), (306, 318))
    assert row.span(last) == ((66, 78), (306, 318))


# -- squeeze-excitation ------------------------------------------------------------------------------


def test_mobilenet_v3_squeeze_excitation_is_global() -> None:
    case = CASES["mobilenet_v3_small"]
    for size in ((3, 224, 224), case.size):
        result = analytic("mobilenet_v3_small", size)
        se = next(n for n, m in build("mobilenet_v3_small").named_modules() if isinstance(m, SqueezeExcitation))
        assert se == "features.1.block.1"
        names = [layer.name for layer in result.layers]
        first_se = names.index(se)
        multiply = next(
            layer for layer in result.layers[first_se:] if layer.kind == "op" and layer.name.startswith(se + ".")
        )
        assert multiply.type.endswith("mul")
        assert multiply.is_global == (True, True)
        assert result.layer(se).is_global == (True, True)
        # Before it nothing is global; after it everything spatial is.
        assert result.layer("features.1.block.0").is_global == (False, False)
        stem_layers = [layer for layer in result.layers[:first_se] if layer.name.startswith("features.0")]
        assert not any(any(layer.is_global) for layer in stem_layers)
        assert all(layer.is_global == (True, True) for layer in result.layers[first_se + 1:])
    # Measured: every unit of the SE output depends on every input pixel.
    row = analytic("mobilenet_v3_small", case.size).layer(se)
    for unit in units(row):
        measured = measure("mobilenet_v3_small", case.size, se, unit)
        assert bool(measured.support.all())
        assert measured.spans == row.span(unit) == ((0, case.size[1] - 1), (0, case.size[2] - 1))


# -- the speed-up above is sound -------------------------------------------------------------------


def test_cutting_the_tail_does_not_change_the_measurement() -> None:
    size = CASES["resnet18"].size
    for layer, unit in (("layer2.0", (3, 27)), ("layer1.1.bn1", (0, 5))):
        with _cut_after("resnet18", size, layer) as model:
            assert isinstance(model.fc, _Zeros) and isinstance(model.layer3, _Zeros)
            cut = torchprobe.measure_receptive_field(model, size, layer, unit)
        assert isinstance(model.fc, nn.Linear)
        whole = torchprobe.measure_receptive_field(build("resnet18"), size, layer, unit)
        assert torch.equal(cut.support, whole.support)
        assert cut.spans == analytic("resnet18", size).layer(layer).span(unit)
