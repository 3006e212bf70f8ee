"""Rule results reused within a pass (torchprobe.rf.memo): the same rows and notes as running every
rule, reuse where blocks repeat, and no reuse where a rule could read values the key does not hold."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import torchprobe
from torchprobe.rf import memo, probe


def rows(result: torchprobe.RFResult) -> list[Any]:
    """Everything a row holds, down to the exact maps and supports."""
    return [(layer.to_dict(), repr(layer.maps), repr(layer.places), layer.unit_dims, layer.units,
             [[(t.lo.tolist(), t.hi.tolist()) for t in m.terms] for m in layer.maps or ()]) for layer in result.layers]


class Pick(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("index", torch.tensor([0, 2, 4]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, self.index]


class Picks(nn.Module):
    """Two modules index the same tensor alike with an index meta cannot read: the second reuses
    the first's result, and its note must still name where it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.a, self.b = Pick(), Pick()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.a(y) + self.b(y)


CASES = {
    "encoder": (lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 4), (12, 16),
                "LC"),
    "swin_t": (lambda: torchvision.models.swin_t(), (3, 112, 112), None),
    "picks": (Picks, (1, 9, 9), None),
}


@pytest.mark.parametrize("name", CASES)
def test_reused_results_give_the_same_rows_and_notes(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    factory, size, layout = CASES[name]
    model = factory().eval()
    reused = torchprobe.receptive_field(model, size, layout=layout)
    monkeypatch.setattr(probe, "call_key", lambda *args: None)  # every rule runs
    fresh = torchprobe.receptive_field(model, size, layout=layout)
    assert rows(reused) == rows(fresh)
    assert reused.notes == fresh.notes


@pytest.mark.parametrize("name", ["encoder", "swin_t", "picks"])
def test_repeated_blocks_reuse_their_rules(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    factory, size, layout = CASES[name]
    model = factory().eval()
    keyed: list[Any] = []
    real = probe.call_key

    def spy(*args: Any) -> Any:
        key = real(*args)
        keyed.append(key)
        return key

    monkeypatch.setattr(probe, "call_key", spy)
    result = torchprobe.receptive_field(model, size, layout=layout)
    found = [k for k in keyed if k is not None]
    assert len(set(found)) < len(found)  # some call met its twin
    if name == "picks":
        assert [n.where for n in result.notes if "index" in n.message] == ["a", "b"]


def test_a_real_index_that_does_not_follow_the_input_is_never_a_key() -> None:
    """On a real device an index's values are visible and the rule reads them: the key, which
    holds only its shape, must not stand for it."""
    x = torch.zeros(1, 2, 5, 5)
    first, second = torch.tensor([0, 1]), torch.tensor([3, 4])
    state_of = {id(x): probe.TensorRF.of_input((1, 2, 5, 5), [2, 3])}.get
    rule = probe.RULES.for_op("getitem")
    keys = [memo.call_key("getitem", rule, (x, (slice(None), slice(None), i)), {}, x[:, :, i],
                          lambda t: state_of(id(t))) for i in (first, second)]
    assert keys == [None, None]
    meta = x.to("meta")
    state = {id(meta): probe.TensorRF.of_input((1, 2, 5, 5), [2, 3])}.get
    on_meta = [memo.call_key("getitem", rule, (meta, (slice(None), slice(None), i.to("meta"))), {},
                             meta[:, :, i.to("meta")], lambda t: state(id(t))) for i in (first, second)]
    assert on_meta[0] is not None and on_meta[0] == on_meta[1]  # meta hides the values from the rule too
