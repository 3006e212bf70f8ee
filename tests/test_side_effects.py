"""Nothing is lost: every public entry point leaves the model and torch's global state exactly as
it found them, also when the forward raises.

After ``torchprobe.receptive_field``, ``torchprobe.measure_receptive_field`` and
``torchprobe.Tracer(model, probes).run(...)``: no hook added or removed on any module (nor
globally), no torch function/dispatch mode left active, grad mode as before, every module's own
``training`` flag as before (a mixed pattern), parameters and buffers the same objects,
bit-identical, on the same device, with the same ``requires_grad`` and the same ``.grad``, and the
global RNG state unchanged.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torch.nn.modules.module as torch_module
from torch import nn

import torchprobe
from mnist_demo.model import Net
from torchprobe import Probe, Tracer

# -- snapshots --------------------------------------------------------------------------------------

GLOBAL_HOOK_DICTS = sorted(
    n for n in dir(torch_module) if n.startswith("_global_") and isinstance(getattr(torch_module, n), dict)
)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor, so that -0.0 vs 0.0 or a NaN payload would count as a change."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8) if t.dtype != torch.bool else t


def _tensor_record(t: torch.Tensor) -> dict[str, Any]:
    return {
        "id": id(t),
        "device": t.device,
        "dtype": t.dtype,
        "shape": tuple(t.shape),
        "requires_grad": t.requires_grad,
        "data_ptr": t.data_ptr(),
        "version": t._version,
        "bits": _bits(t).clone(),
    }


@dataclass
class Snapshot:
    modules: dict[str, dict[str, Any]]
    params: dict[str, dict[str, Any]]
    buffers: dict[str, dict[str, Any]]
    state_dict: dict[str, torch.Tensor]
    globals: dict[str, Any]

    @classmethod
    def take(cls, model: nn.Module) -> Snapshot:
        modules = {}
        for name, m in model.named_modules(remove_duplicate=False):
            modules[name] = {
                "training": m.training,
                "attributes": {k: id(v) for k, v in vars(m).items()},
                "hooks": {k: dict(v) for k, v in vars(m).items() if "hook" in k and isinstance(v, dict)},
                "parameters": {k: id(v) for k, v in m._parameters.items()},
                "buffers": {k: id(v) for k, v in m._buffers.items()},
                "submodules": {k: id(v) for k, v in m._modules.items()},
                "non_persistent": set(m._non_persistent_buffers_set),
            }
        params = {}
        for name, p in model.named_parameters():
            record = _tensor_record(p)
            record["grad"] = None if p.grad is None else (id(p.grad), _bits(p.grad).clone())
            params[name] = record
        buffers = {name: _tensor_record(b) for name, b in model.named_buffers()}
        state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return cls(modules, params, buffers, state_dict, global_state())

    def assert_unchanged(self, model: nn.Module) -> None:
        after = Snapshot.take(model)
        assert after.globals.keys() == self.globals.keys()
        for key, value in self.globals.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(after.globals[key], value), f"global {key} changed"
            else:
                assert after.globals[key] == value, f"global {key} changed: {value!r} -> {after.globals[key]!r}"
        assert after.modules.keys() == self.modules.keys()
        for name, before in self.modules.items():
            now = after.modules[name]
            label = name or "<root>"
            assert now["training"] == before["training"], f"{label}.training changed to {now['training']}"
            assert now["hooks"] == before["hooks"], f"hooks of {label} changed: {before['hooks']} -> {now['hooks']}"
            for key in ("parameters", "buffers", "submodules", "non_persistent"):
                assert now[key] == before[key], f"{label}: {key} replaced or changed"
            assert now["attributes"].keys() == before["attributes"].keys(), (
                f"{label}: attributes added/removed: "
                f"{set(now['attributes']) ^ set(before['attributes'])}"
            )
            assert now["attributes"] == before["attributes"], f"{label}: an attribute was rebound"
        for kind, was, now in (("parameter", self.params, after.params), ("buffer", self.buffers, after.buffers)):
            assert now.keys() == was.keys()
            for name, before in was.items():
                record = now[name]
                for key in ("id", "device", "dtype", "shape", "requires_grad", "data_ptr"):
                    assert record[key] == before[key], f"{kind} {name}: {key} {before[key]} -> {record[key]}"
                assert torch.equal(record["bits"], before["bits"]), f"{kind} {name} is not bit-identical"
                assert record["version"] == before["version"], f"{kind} {name} was written in place"
                if kind == "parameter":
                    if before["grad"] is None:
                        assert record["grad"] is None, f"parameter {name} got a .grad"
                    else:
                        assert record["grad"] is not None, f"parameter {name} lost its .grad"
                        assert record["grad"][0] == before["grad"][0], f"parameter {name}: .grad replaced"
                        assert torch.equal(record["grad"][1], before["grad"][1]), f"parameter {name}: .grad changed"
        assert after.state_dict.keys() == self.state_dict.keys()
        for key, value in self.state_dict.items():
            assert torch.equal(after.state_dict[key], value), f"state_dict[{key!r}] changed"
            assert after.state_dict[key].device == value.device


def global_state() -> dict[str, Any]:
    return {
        "rng": torch.get_rng_state().clone(),
        "function_modes": torch._C._len_torch_function_stack(),
        "function_mode_stack": list(torch.overrides._get_current_function_mode_stack()),
        "dispatch_modes": torch._C._len_torch_dispatch_stack(),
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "default_dtype": torch.get_default_dtype(),
        "global_hooks": {name: dict(getattr(torch_module, name)) for name in GLOBAL_HOOK_DICTS},
        "gc_enabled": gc.isenabled(),
    }


def test_clean_baseline() -> None:
    """The assertions below compare with 'nothing active' too, not only with 'as before'."""
    assert torch._C._len_torch_function_stack() == 0
    assert torch.overrides._get_current_function_mode_stack() == []
    assert torch.is_grad_enabled()


# -- models -----------------------------------------------------------------------------------------


class ConvBN(nn.Module):
    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(F.relu(self.bn(self.conv(x))))


class Explode(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("boom")


class FailsHalfway(nn.Module):
    """A BatchNorm runs (and would update its statistics in train mode), then the forward raises."""

    def __init__(self) -> None:
        super().__init__()
        self.block = ConvBN()
        self.fail = Explode()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fail(self.block(x)))


class BranchOnValues(nn.Module):
    """``if x.sum() > 0``: meta tensors have no values, so the trace falls back to real tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.block = ConvBN()
        self.head = nn.Conv2d(4, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        if x.sum() > 0:
            x = x * 2
        return self.head(x)


class ItemScale(nn.Module):
    """``.item()`` on an activation: needs real values too."""

    def __init__(self) -> None:
        super().__init__()
        self.block = ConvBN()
        self.head = nn.Conv2d(4, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        return self.head(x) * (1.0 + abs(x.mean().item()))


class NeedsValuesThenFails(nn.Module):
    """Falls back to real tensors, and the real run raises after the BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.block = ConvBN()
        self.fail = Explode()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        if float(x.mean()) > -1e9:
            x = self.fail(x)
        return x


class CountsCalls(nn.Module):
    """Mutates buffers in its forward, in place and by rebinding; one is not persistent."""

    def __init__(self) -> None:
        super().__init__()
        self.block = ConvBN()
        self.register_buffer("counter", torch.zeros((), dtype=torch.long))
        self.register_buffer("rebound", torch.zeros(()))
        self.register_buffer("ema", torch.ones(4), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.counter += 1
        self.rebound = self.rebound + 1
        x = self.block(x)
        self.ema.mul_(0.5).add_(x.detach().mean(dim=(0, 2, 3)))
        return x


class MutatesParameter(nn.Module):
    """Writes to one of its parameters in the forward (weight clipping done inside the model)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = ConvBN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.block.conv.weight.clamp_(-0.01, 0.01)
        return self.block(x)


class NoisyInput(nn.Module):
    """Draws from the global RNG in its forward (noise injection, as in a VAE or denoiser)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = ConvBN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x + 0.1 * torch.randn_like(x))


class NoRule(nn.Module):
    """An op without a receptive-field rule on the feature map: ``strict=True`` raises RFError."""

    def __init__(self) -> None:
        super().__init__()
        self.block = ConvBN()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return self.head(torch.cdist(y, y))


# -- preparing a model with state worth losing -------------------------------------------------------


def _noop_hook(*args: Any, **kwargs: Any) -> None:
    return None


def prepare(model: nn.Module) -> nn.Module:
    """Root in train mode, the submodules a mixed train/eval pattern (each flag set on its own),
    some parameters frozen, some with a ``.grad``, non-trivial BatchNorm statistics, and the
    user's own hooks, which must survive."""
    gen = torch.Generator().manual_seed(1234)
    model.train()
    for i, m in enumerate(list(model.modules())[1:]):
        m.training = i % 3 != 1  # set directly: ``.train()`` would recurse
    for i, p in enumerate(model.parameters()):
        if i % 3 == 2:
            p.requires_grad_(False)
        elif i % 2 == 0:
            p.grad = torch.rand(p.shape, generator=gen)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.num_batches_tracked.fill_(7)
    model.register_forward_hook(_noop_hook)
    model.register_forward_pre_hook(_noop_hook, with_kwargs=True)
    first_child = next(iter(model.children()), None)
    if first_child is not None:
        first_child.register_forward_hook(_noop_hook, with_kwargs=True, always_call=True)
    return model


class Recorder(Probe):
    """A plugin that keeps everything it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def start(self, inputs):  # noqa: ANN001, ANN201
        self.events.append(("start", len(inputs)))

    def module_enter(self, call):  # noqa: ANN001, ANN201
        self.events.append(("enter", call.name))

    def module_exit(self, call):  # noqa: ANN001, ANN201
        self.events.append(("exit", call.name))

    def function(self, op):  # noqa: ANN001, ANN201
        self.events.append(("op", op.name))

    def failed(self, error, stack):  # noqa: ANN001, ANN201
        self.events.append(("failed", type(error).__name__))


class BrokenProbe(Probe):
    """A plugin with a bug: raises the moment the second module is entered."""

    def __init__(self) -> None:
        self.entered = 0

    def module_enter(self, call):  # noqa: ANN001, ANN201
        self.entered += 1
        if self.entered == 2:
            raise RuntimeError("probe bug")


# -- the matrix --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    factory: Callable[[], nn.Module]
    size: tuple[int, ...]
    layer: str  # for measure_receptive_field
    unit: tuple[int, ...]
    fails: bool = False  # the forward raises on any device
    needs_values: bool = False  # fails on device="meta" (no fallback there)


CASES = {
    "seed_net": Case(Net, (1, 28, 28), "maxpool2", (3, 3)),
    "bn_fails_halfway": Case(FailsHalfway, (1, 12, 12), "block.conv", (5, 5), fails=True),
    "branch_on_values": Case(BranchOnValues, (1, 12, 12), "head", (4, 4), needs_values=True),
    "item": Case(ItemScale, (1, 12, 12), "head", (4, 4), needs_values=True),
    "needs_values_then_fails": Case(NeedsValuesThenFails, (1, 12, 12), "block.conv", (5, 5), fails=True),
    "mutates_buffers": Case(CountsCalls, (1, 12, 12), "block.conv", (5, 5)),
}

ENTRY_POINTS = ("receptive_field", "tracer", "measure")
DEVICES = ("auto", "meta", "cpu")


def call_entry_point(entry: str, model: nn.Module, case: Case, device: str, **options: Any) -> Any:
    if entry == "receptive_field":
        return torchprobe.receptive_field(model, case.size, device=device, **options)
    if entry == "tracer":
        recorder = Recorder()
        outcome = Tracer(model, [recorder]).run([torch.Size((1, *case.size))], device=device)
        assert recorder.events and recorder.events[0] == ("start", 1)
        return outcome
    if entry == "measure":
        return torchprobe.measure_receptive_field(model, case.size, case.layer, case.unit)
    raise AssertionError(entry)


def _matrix() -> list[Any]:
    params = []
    for case_name in CASES:
        for entry in ENTRY_POINTS:
            for device in DEVICES if entry != "measure" else ("-",):
                params.append(pytest.param(case_name, entry, device, id=f"{case_name}-{entry}-{device}"))
    return params


@pytest.mark.parametrize(("case_name", "entry", "device"), _matrix())
def test_entry_point_leaves_no_trace(case_name: str, entry: str, device: str) -> None:
    case = CASES[case_name]
    torch.manual_seed(0)
    model = prepare(case.factory())
    before = Snapshot.take(model)
    # the measurement's forward stops at the measured layer, before these models fail
    expect_failure = (case.fails and entry != "measure") or (case.needs_values and device == "meta")
    if expect_failure:
        with pytest.raises(Exception) as info:
            call_entry_point(entry, model, case, device)
        if entry != "measure":
            assert isinstance(info.value, torchprobe.ForwardError), repr(info.value)
    else:
        result = call_entry_point(entry, model, case, device)
        if case.needs_values and device == "auto" and entry != "measure":
            assert result.device != "meta"
            assert result.fallback_reason
    before.assert_unchanged(model)


@pytest.mark.parametrize("factory", [BranchOnValues, ItemScale], ids=["branch", "item"])
def test_meta_fallback_is_reported_and_leaves_no_trace(factory: Callable[[], nn.Module]) -> None:
    model = prepare(factory())
    before = Snapshot.take(model)
    result = torchprobe.receptive_field(model, (1, 12, 12))
    assert result.device != "meta"
    assert result.device == "cpu"
    assert result.fallback_reason
    assert result.to_dict()["fallback_reason"] == result.fallback_reason
    before.assert_unchanged(model)


def test_explicit_cpu_runs_for_real_and_leaves_no_trace() -> None:
    model = prepare(Net())
    before = Snapshot.take(model)
    result = torchprobe.receptive_field(model, (1, 28, 28), device="cpu")
    assert result.device == "cpu"
    assert result.output.rf == (44, 44)
    before.assert_unchanged(model)


@pytest.mark.parametrize("device", DEVICES)
def test_buffers_mutated_in_forward_are_restored(device: str) -> None:
    model = prepare(CountsCalls())
    counter, rebound, ema = model.counter, model.rebound, model.ema.clone()
    torchprobe.receptive_field(model, (1, 12, 12), device=device)
    assert model.counter is counter and int(model.counter) == 0
    assert model.rebound is rebound and float(model.rebound) == 0.0
    assert torch.equal(model.ema, ema)
    assert model.block.bn.num_batches_tracked.item() == 7


@pytest.mark.parametrize("device", DEVICES)
def test_strict_failure_leaves_no_trace(device: str) -> None:
    model = prepare(NoRule())
    before = Snapshot.take(model)
    with pytest.raises(torchprobe.RFError, match="cdist"):
        torchprobe.receptive_field(model, (1, 12, 12), device=device, strict=True)
    before.assert_unchanged(model)
    # and without strict it reports, still without side effects
    result = torchprobe.receptive_field(model, (1, 12, 12), device=device)
    assert not result.output.known
    before.assert_unchanged(model)


@pytest.mark.parametrize("device", DEVICES)
def test_broken_probe_leaves_no_trace(device: str) -> None:
    model = prepare(Net())
    before = Snapshot.take(model)
    with pytest.raises(Exception, match="probe bug"):
        Tracer(model, [Recorder(), BrokenProbe()]).run([torch.Size((1, 1, 28, 28))], device=device)
    before.assert_unchanged(model)


@pytest.mark.parametrize("device", DEVICES)
def test_interrupt_in_forward_leaves_no_trace(device: str) -> None:
    """A BaseException (Ctrl-C) in the forward: cleanup still runs, the interrupt propagates."""

    class Interrupted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = ConvBN()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.block(x)
            raise KeyboardInterrupt

    model = prepare(Interrupted())
    before = Snapshot.take(model)
    with pytest.raises(KeyboardInterrupt):
        torchprobe.receptive_field(model, (1, 12, 12), device=device)
    before.assert_unchanged(model)


def test_real_tensor_input_is_not_modified() -> None:
    model = prepare(Net())
    x = torch.randn(1, 1, 28, 28)
    x_before = x.clone()
    before = Snapshot.take(model)
    for device in DEVICES:
        torchprobe.receptive_field(model, input_data=x, device=device)
        Tracer(model, [Recorder()]).run([x], device=device)
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None
    before.assert_unchanged(model)


def test_repeated_runs_do_not_accumulate() -> None:
    """Ten runs in a row, mixing successes and failures: still nothing added."""
    ok, bad = prepare(Net()), prepare(FailsHalfway())
    before_ok, before_bad = Snapshot.take(ok), Snapshot.take(bad)
    for _ in range(5):
        torchprobe.receptive_field(ok, (1, 28, 28))
        with pytest.raises(torchprobe.ForwardError):
            torchprobe.receptive_field(bad, (1, 12, 12))
    before_ok.assert_unchanged(ok)
    before_bad.assert_unchanged(bad)


@pytest.mark.parametrize("device", ("auto", "cpu"))
def test_parameter_written_in_forward_is_restored(device: str) -> None:
    model = prepare(MutatesParameter())
    before = Snapshot.take(model)
    torchprobe.receptive_field(model, (1, 12, 12), device=device)
    before.assert_unchanged(model)


@pytest.mark.parametrize("entry", ("receptive_field-cpu", "measure"))
def test_global_rng_untouched_by_a_model_that_draws_noise(entry: str) -> None:
    model = prepare(NoisyInput())
    before = Snapshot.take(model)
    if entry == "measure":
        torchprobe.measure_receptive_field(model, (1, 12, 12), "block.conv", (5, 5))
    else:
        torchprobe.receptive_field(model, (1, 12, 12), device="cpu")
    before.assert_unchanged(model)


class _PassThrough(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: m.conv1.register_forward_hook(_noop_hook),
        lambda m: m.bn1.register_forward_pre_hook(_noop_hook),
        lambda m: setattr(m.bn2, "training", not m.bn2.training),
        lambda m: m.bn0.running_mean.add_(0.0),  # same values, but written in place
        lambda m: m.bn0.num_batches_tracked.add_(1),
        lambda m: setattr(m.bn0, "running_var", m.bn0.running_var.clone()),
        lambda m: m.conv0.weight.requires_grad_(not m.conv0.weight.requires_grad),
        lambda m: setattr(m.conv1.weight, "grad", torch.zeros_like(m.conv1.weight)),
        lambda m: torch.rand(1),
        lambda m: _PassThrough().__enter__(),
        lambda m: torch.set_grad_enabled(False),
    ],
    ids=["hook", "pre_hook", "training", "inplace_write", "bn_counter", "rebound_buffer", "requires_grad", "grad",
         "rng", "function_mode", "grad_mode"],
)
def test_snapshot_detects_each_kind_of_damage(damage: Callable[[nn.Module], Any]) -> None:
    """The checker itself: each kind of side effect above is caught."""
    model = prepare(Net())
    before = Snapshot.take(model)
    modes = torch._C._len_torch_function_stack()
    try:
        damage(model)
        with pytest.raises(AssertionError):
            before.assert_unchanged(model)
    finally:
        while torch._C._len_torch_function_stack() > modes:
            torch._C._pop_torch_function_stack()
        torch.set_grad_enabled(True)


def test_memory_figures_do_not_depend_on_what_ran_before() -> None:
    """The first pass in a process measures what the later ones do (pausing the cycle collector
    for speed made the first one hold a cycle's tensor: 75,264 bytes alive at once, then 62,720)."""
    import subprocess
    import sys

    code = ("import torchprobe; from mnist_demo.model import Net; "
            "print(*[torchprobe.summary(Net(), (1, 28, 28)).memory.peak_activations for _ in range(2)])")
    first, second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                   timeout=120).stdout.split()
    assert first == second
