"""Wrapped models are analysed as the model inside, and modules that rewrite their own attributes
in the forward leave them as they were.

``torch.compile``'s ``OptimizedModule``, ``nn.DataParallel`` and ``DistributedDataParallel`` are
unwrapped (names as in the model inside, the wrapper never runs); TorchScript modules cannot
take Python hooks, so they get one ``UsageError`` that says what to pass instead. Old-style
``weight_norm`` and ``spectral_norm`` recompute ``weight`` as a plain tensor attribute in a forward
pre-hook: after the pass it is the model's own tensor again, not a meta or copied one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import torchprobe
from mnist_demo.model import Net
from tests.helpers.cli import assert_error, run_cli
from tests.test_side_effects import DEVICES, ConvBN, Explode, Recorder, Snapshot, prepare
from torchprobe import Tracer
from torchprobe.engine.wrappers import unwrap
from torchprobe.errors import UsageError

SIZE = (1, 28, 28)


def analyses(model: nn.Module) -> dict[str, Any]:
    """What the receptive field and the trace report, as JSON-ready dicts."""
    return {
        "rf": torchprobe.receptive_field(model, SIZE).to_dict(),
        "trace": torchprobe.trace(model, SIZE, ops=True).to_dict(),
    }


def assert_analysed_as(wrapped: nn.Module, model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same reports as for ``model``, the wrapper itself never run and left as it was."""
    expected = analyses(model)
    assert unwrap(wrapped) is model

    def forward(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"the {type(wrapped).__name__} itself was run")

    monkeypatch.setattr(wrapped, "forward", forward)
    before = Snapshot.take(wrapped)
    assert analyses(wrapped) == expected
    before.assert_unchanged(wrapped)


WRAPPERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "compile": torch.compile,  # wrapping only: nothing is compiled until it runs
    "data_parallel": nn.DataParallel,
}


@pytest.mark.parametrize("wrap", WRAPPERS)
def test_wrapped_model_is_analysed_as_the_model_inside(wrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = prepare(Net())
    assert_analysed_as(WRAPPERS[wrap](model), model, monkeypatch)


@pytest.mark.parametrize("wrap", WRAPPERS)
def test_summary_of_a_wrapped_model_counts_its_parameters(wrap: str) -> None:
    model = Net()
    assert torchprobe.summary(WRAPPERS[wrap](model), SIZE).to_dict() == torchprobe.summary(model, SIZE).to_dict()


def test_nested_wrappers_are_all_taken_off() -> None:
    model = Net()
    assert unwrap(torch.compile(nn.DataParallel(torch.compile(model)))) is model
    assert unwrap(model) is model


def test_compiled_model_failure_names_the_original_module() -> None:
    """The failure is the model's own, in ``fail``, not an input problem of ``_orig_mod``."""

    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = ConvBN()
            self.fail = Explode()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fail(self.block(x))

    with pytest.raises(torchprobe.ForwardError) as info:
        torchprobe.receptive_field(torch.compile(Fails()), (1, 12, 12))
    assert info.value.module == "fail"
    assert not info.value.input_related
    assert "_orig_mod" not in str(info.value)


@pytest.fixture
def process_group(tmp_path: Path) -> Iterator[None]:
    """A gloo group of one process, this one: enough to build a DistributedDataParallel."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs gloo")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.usefixtures("process_group")
def test_distributed_data_parallel_is_analysed_as_its_module(monkeypatch: pytest.MonkeyPatch) -> None:
    model = prepare(Net())
    assert_analysed_as(DistributedDataParallel(model), model, monkeypatch)


# -- TorchScript ----------------------------------------------------------------------------------------


def scripted(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        return torch.jit.script(module)


class ScriptedHead(nn.Module):
    """A Python model with a scripted submodule (``head``)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = ConvBN()
        self.head = scripted(nn.Conv2d(4, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x))


ENTRY_POINTS: dict[str, Callable[[nn.Module], Any]] = {
    "rf": lambda m: torchprobe.receptive_field(m, (1, 12, 12)),
    "trace": lambda m: torchprobe.trace(m, (1, 12, 12)),
    "summary": lambda m: torchprobe.summary(m, (1, 12, 12)),
    "tracer-cpu": lambda m: Tracer(m, [Recorder()]).run([torch.Size((1, 1, 12, 12))], device="cpu"),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_scripted_submodule_is_one_usage_error(entry: str) -> None:
    model = ScriptedHead()
    with pytest.raises(UsageError, match=r"^head \(RecursiveScriptModule\) is a TorchScript module") as info:
        ENTRY_POINTS[entry](model)
    assert "pass the original Python module" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_scripted_model_is_one_usage_error(entry: str) -> None:
    model = scripted(ConvBN())
    with pytest.raises(UsageError, match=r"^the model \(RecursiveScriptModule\) is a TorchScript module"):
        ENTRY_POINTS[entry](model)


def test_scripted_model_inside_a_wrapper_is_named_as_the_model() -> None:
    with pytest.raises(UsageError, match=r"^the model \(RecursiveScriptModule\)"):
        torchprobe.receptive_field(nn.DataParallel(scripted(ConvBN())), (1, 12, 12))


def test_cli_tells_what_to_pass_instead_of_a_scripted_module(tmp_path: Path) -> None:
    path = tmp_path / "scripted_models.py"
    path.write_text(
        "import warnings\n\n"
        "import torch\n"
        "from torch import nn\n\n\n"
        "def model():\n"
        "    warnings.simplefilter('ignore', FutureWarning)  # torch.jit.script is deprecated\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3), torch.jit.script(nn.Conv2d(4, 2, 1)))\n"
    )
    for command in ("rf", "trace", "summary"):
        proc = run_cli(command, f"{path}:model", "--input", "1,8,8")
        assert_error(proc, 2, "1 (RecursiveScriptModule) is a TorchScript module", "pass the original Python module")


# -- modules that rewrite their own attributes ------------------------------------------------------------


def _quiet(make: Callable[[], nn.Module]) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old-style utilities are deprecated
        return make()


NORMED: dict[str, Callable[[], nn.Module]] = {
    "weight_norm": lambda: torch.nn.utils.weight_norm(nn.Linear(6, 4)),
    "weight_norm_conv": lambda: torch.nn.utils.weight_norm(nn.Conv1d(6, 4, 3, padding=1)),
    "spectral_norm": lambda: torch.nn.utils.spectral_norm(nn.Linear(6, 4)),
    "parametrized_weight_norm": lambda: torch.nn.utils.parametrizations.weight_norm(nn.Linear(6, 4)),
    "parametrized_spectral_norm": lambda: torch.nn.utils.parametrizations.spectral_norm(nn.Linear(6, 4)),
}


def normed_model(kind: str, fails: bool = False) -> nn.Module:
    """The normed layer (a Linear one behind a plain Linear), ``prepare``d: in train mode, where spectral
    norm would iterate, with hooks and ``.grad``s of its own."""
    layers = [_quiet(NORMED[kind]), *([Explode()] if fails else [])]
    if kind == "weight_norm_conv":
        return prepare(nn.Sequential(*layers))
    return prepare(nn.Sequential(nn.Linear(6, 6), *layers))


def normed_size(kind: str) -> tuple[int, ...]:
    return (6, 5) if kind == "weight_norm_conv" else (6,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", NORMED)
def test_normed_layers_are_left_as_they_were(kind: str, device: str) -> None:
    model = normed_model(kind)
    before = Snapshot.take(model)
    layer = model[-1]
    weight = vars(layer).get("weight")
    torchprobe.summary(model, normed_size(kind), device=device)
    torchprobe.trace(model, normed_size(kind), device=device)
    before.assert_unchanged(model)
    if weight is not None:  # the old-style ones: the model's own recomputed weight, on its device
        assert layer.weight is weight and layer.weight.device.type == "cpu"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", NORMED)
def test_normed_layers_are_left_as_they_were_when_the_forward_fails(kind: str, device: str) -> None:
    model = normed_model(kind, fails=True)
    before = Snapshot.take(model)
    with pytest.raises(torchprobe.ForwardError):
        torchprobe.summary(model, normed_size(kind), device=device)
    with pytest.raises(torchprobe.ShapeError):
        torchprobe.trace(model, normed_size(kind), device=device)
    before.assert_unchanged(model)


class KeepsLastOutput(nn.Module):
    """Stores tensors on itself in the forward: one rebinds an attribute, one adds a new one."""

    def __init__(self) -> None:
        super().__init__()
        self.block = ConvBN()
        self.scale = torch.ones(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.scale = self.scale * 2
        self.last = self.block(x)
        return self.last * self.scale


@pytest.mark.parametrize("device", DEVICES)
def test_tensor_attributes_set_in_forward_are_restored(device: str) -> None:
    model = prepare(KeepsLastOutput())
    before = Snapshot.take(model)
    scale = model.scale
    torchprobe.receptive_field(model, (1, 12, 12), device=device)
    before.assert_unchanged(model)
    assert model.scale is scale and not hasattr(model, "last")
