"""Third-party RF rules: by decorator for an op or a module class, and by entry point."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

import torchprobe
from torchprobe.rf.rules import RULES, RuleRegistry, reduce_dims, spatial


class Blur5(nn.Module):
    """A custom layer whose internals (ops with no rule in the registry of these tests) torchprobe
    cannot see through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifft2(torch.fft.fft2(x)).real  # stands in for a 5x5 blur


def model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Blur5())


@pytest.fixture
def rules(monkeypatch: pytest.MonkeyPatch) -> RuleRegistry:
    """A private copy of the registry, so registrations do not leak into other tests; without the
    built-in FFT rules, so that Blur5 is a layer torchprobe cannot see through."""
    ops = {op: rule for op, rule in RULES.ops.items() if not op.startswith("fft_")}
    fresh = RuleRegistry(ops, dict(RULES.modules), _loaded_entry_points=True)
    for module in ("torchprobe.rf.rules", "torchprobe.rf.probe"):
        monkeypatch.setattr(sys.modules[module], "RULES", fresh)
    return fresh


def test_without_a_rule_the_rf_is_unknown_and_says_how_to_register(rules: RuleRegistry) -> None:
    result = torchprobe.receptive_field(model(), (1, 16, 16))
    assert not result.output.known
    assert any("register_rf_rule('fft_fft2')" in str(d) for d in result.diagnostics)
    assert (result.diagnostics[0].code, result.diagnostics[0].op) == ("no_rule", "fft_fft2")
    with pytest.raises(torchprobe.RFError, match="fft_fft2"):
        torchprobe.receptive_field(model(), (1, 16, 16), strict=True)


def test_a_module_rule_replaces_its_internals(rules: RuleRegistry) -> None:
    rules.register(Blur5)(lambda ctx: spatial(ctx, 2, lambda i, m, n_in, n_out: m.sliding(5, 1, 2)))
    result = torchprobe.receptive_field(model(), (1, 16, 16))
    assert result.diagnostics == ()
    assert result.layer("1").rf == (7, 7)  # 3x3 conv, then 5x5
    assert result.output.rf == (7, 7)


def test_an_op_rule_covers_every_use_of_the_op(rules: RuleRegistry) -> None:
    def every_frequency_sees_every_pixel(ctx):
        return reduce_dims(ctx.input_state, tuple(ctx.input.shape), [-2, -1], keepdim=True)

    assert rules.register("fft_fft2", "fft_ifft2")(every_frequency_sees_every_pixel) is every_frequency_sees_every_pixel
    result = torchprobe.receptive_field(model(), (1, 16, 16))
    assert result.diagnostics == ()
    assert result.output.is_global == (True, True)


def test_rules_from_the_entry_point_group_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = types.ModuleType("torchprobe_test_plugin")
    registry = RuleRegistry(dict(RULES.ops), dict(RULES.modules))

    def load() -> None:  # what importing a plugin module does: register its rules
        registry.register(Blur5)(lambda ctx: spatial(ctx, 2, lambda i, m, n_in, n_out: m.sliding(5, 1, 2)))
        return plugin

    entry = types.SimpleNamespace(name="blur", load=load)
    monkeypatch.setattr(
        "torchprobe.rf.rules.core.entry_points", lambda group: [entry] if group == "torchprobe.rf_rules" else []
    )
    monkeypatch.setattr(sys.modules["torchprobe.rf.probe"], "RULES", registry)
    result = torchprobe.receptive_field(model(), (1, 16, 16))
    assert result.output.rf == (7, 7)


class FftAtTheRoot(nn.Module):
    """Ops without rules called by the root itself (their notes name no module)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifft2(torch.fft.fft2(x)).real


def test_each_op_without_a_rule_is_noted_once_where_it_is_called(rules: RuleRegistry) -> None:
    result = torchprobe.receptive_field(FftAtTheRoot(), (1, 8, 8))
    assert [(n.code, n.op, n.where) for n in result.diagnostics] == [
        ("no_rule", "fft_fft2", ""), ("no_rule", "fft_ifft2", ""),
    ]
    assert all(n.to_dict()["message"] == str(n) for n in result.diagnostics)


def test_a_rule_that_raises_is_named_as_failed_once(rules: RuleRegistry) -> None:
    @rules.register("fft_fft2")
    def broken(ctx: object) -> None:
        raise IndexError("tuple index out of range")

    class Spectrum(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.fft2(x).abs() + 1  # the failure is handed on by ops that have rules

    result = torchprobe.receptive_field(Spectrum(), (1, 8, 8))
    assert len(result.diagnostics) == 1
    failed = [n for n in result.diagnostics if n.code == "rule_failed"]
    assert [(n.op, n.where) for n in failed] == [("fft_fft2", "")]
    assert failed[0].message.startswith("rule for op 'fft_fft2' failed (called in <root>): IndexError")
    assert "register" not in failed[0].message and "no receptive-field rule" not in failed[0].message
    assert "failed" in (result.output.unknown or "")
