"""torchprobe.summary: renderings, and the invariants that make its numbers trustworthy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import torchprobe
from mnist_demo.model import Net
from tests.helpers.zoo import DictOutput, KeywordInputs, SharedAndTied
from torchprobe.render import render_text, summary_table


def unique_parameter_count(model: torch.nn.Module) -> int:
    """Independent count: distinct tensors by storage pointer, not by the library's walk."""
    seen = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for p in module._parameters.values():
            if p is not None:
                seen[p.data_ptr()] = p.numel()
    return sum(seen.values())


def reference_flops(model: torch.nn.Module, *shape: int) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    return counter.get_total_flops()


MODELS = {
    "seed_net": (Net, (1, 28, 28)),
    "shared_and_tied": (SharedAndTied, (8,)),
    "dict_output": (DictOutput, (3, 16, 16)),
    "resnet18": (lambda: torchvision.models.resnet18(), (3, 64, 64)),
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("depth", [None, 0, 1, 2])
def test_columns_add_up_to_the_printed_totals(name: str, depth: int | None) -> None:
    factory, shape = MODELS[name]
    model = factory()
    result = torchprobe.summary(model, shape)
    lines = result.lines(depth)
    assert sum(line.params for line in lines) + result.uncalled_params == result.total_params
    assert sum(line.flops for line in lines) == result.total_flops


@pytest.mark.parametrize("name", MODELS)
def test_totals_match_independent_counts(name: str) -> None:
    factory, shape = MODELS[name]
    model = factory()
    result = torchprobe.summary(model, shape)
    assert result.total_params == unique_parameter_count(model)
    assert result.total_flops == reference_flops(model, *shape)
    assert result.to_dict()["total_params"] == result.total_params


def test_shared_block_and_tied_weight_are_counted_once() -> None:
    model = SharedAndTied()
    result = torchprobe.summary(model, (8,))
    by_label = {line.stats.label: line for line in result.lines()}
    assert by_label["block #2"].params == 0 and by_label["block.0 #2"].shared
    assert by_label["decode"].params == 8  # its bias; the weight is encode's
    assert result.total_params == 8 * 8 + 8 + (8 * 8 + 8) + 8


def test_frozen_parameters_are_reported_apart() -> None:
    model = Net()
    for p in model.conv0.parameters():
        p.requires_grad_(False)
    result = torchprobe.summary(model, (1, 28, 28))
    assert result.frozen_params == 40
    assert result.trainable_params == 19_344 - 40


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=4), st.integers(4, 24))
def test_flops_of_random_mlps_equal_flop_counter(widths: list[int], features: int) -> None:
    layers, last = [], features
    for w in widths:
        layers += [torch.nn.Linear(last, w), torch.nn.ReLU()]
        last = w
    model = torch.nn.Sequential(*layers)
    result = torchprobe.summary(model, (features,))
    expected = sum(2 * a * b for a, b in zip([features, *widths], widths))
    assert result.total_flops == reference_flops(model, features) == expected
    assert result.rf is None  # no spatial axes, no RF columns


def test_summary_reports_the_seed_net_rf() -> None:
    result = torchprobe.summary(Net(), (1, 28, 28))
    assert result.rf.output.is_global == (True, True)
    assert result.to_dict()["rf"]["rf"] == [44, 44]


@pytest.mark.parametrize(
    "name, make, kwargs",
    [
        ("seed_net", lambda: torchprobe.summary(Net(), (1, 28, 28)), {}),
        ("seed_net_depth0", lambda: torchprobe.summary(Net(), (1, 28, 28)), {"depth": 0}),
        ("seed_net_rf_steps", lambda: torchprobe.summary(Net(), (1, 28, 28)), {"debug": True}),
        ("shared_and_tied", lambda: torchprobe.summary(SharedAndTied(), (8,)), {}),
        ("dict_output", lambda: torchprobe.summary(DictOutput(), (3, 16, 16)), {}),
        (
            "keyword_inputs",
            lambda: torchprobe.summary(
                KeywordInputs(), input_data=torch.zeros(1, 3, 8, 8), kwargs={"mask": torch.ones(1, 4, 8, 8)}
            ),
            {},
        ),
    ],
)
def test_rendering(golden, name: str, make, kwargs: dict) -> None:
    golden(f"summary_{name}.txt", render_text(summary_table(make(), **kwargs)))


class ParameterListModel(nn.Module):
    """Parameters in a ParameterList and a submodule used through ``.weight``, never called."""

    def __init__(self) -> None:
        super().__init__()
        self.scales = nn.ParameterList([nn.Parameter(torch.ones(4)) for _ in range(3)])
        self.proj = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for scale in self.scales:
            x = x * scale
        return torch.nn.functional.linear(x, self.proj.weight, self.proj.bias)


@pytest.mark.parametrize("factory", [
    lambda: nn.MultiheadAttention(64, 4, batch_first=True),
    lambda: nn.TransformerEncoderLayer(32, 4, 64, batch_first=True),
    lambda: nn.LSTM(16, 32, num_layers=2),
    ParameterListModel,
], ids=["mha", "encoder_layer", "lstm", "parameter_list"])
@pytest.mark.parametrize("depth", [None, 0, 1])
def test_every_parameter_a_forward_uses_is_in_a_row(factory, depth) -> None:
    """Parameters are counted on the row of the call whose ops read them (MHA's out_proj, a
    ParameterList): the rows add up to every parameter the forward reads; only ones no op reads
    are uncalled."""
    model = factory().eval()
    size = (10, 16) if isinstance(model, nn.LSTM) else (10, 64) if isinstance(model, nn.MultiheadAttention) else \
        (10, 32) if isinstance(model, nn.TransformerEncoderLayer) else (4,)
    args = {"input_data": [torch.zeros(1, *size)] * 3} if isinstance(model, nn.MultiheadAttention) else {}
    result = torchprobe.summary(model, **args) if args else torchprobe.summary(model, size)
    lines = result.lines(depth)
    unused = 20 if isinstance(model, ParameterListModel) else 0
    assert result.uncalled_params == unused
    assert sum(line.params for line in lines) == result.total_params - unused


@pytest.mark.parametrize("depth", [None, 1, 2])
def test_vit_parameters_add_up_at_every_depth(depth) -> None:
    """vit_b_16's attention projections are used through MHA's ``.weight`` and its class token and
    position embedding by the root and the encoder: every one is on a row (79,480,552 of
    86,567,656 before parameters were attributed by use)."""
    result = torchprobe.summary(torchvision.models.vit_b_16(image_size=64), (3, 64, 64))
    assert result.total_params == 86_567_656 - 196 * 768 + 16 * 768  # 16 + 1 tokens at image 64, not 196 + 1
    assert result.uncalled_params == 0
    assert sum(line.params for line in result.lines(depth)) == result.total_params


@pytest.mark.parametrize("factory, size", [
    (lambda: nn.LSTM(16, 32), (10, 16)), (lambda: nn.GRU(16, 8, num_layers=2), (10, 16)), (Net, (1, 28, 28)),
    (lambda: nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), (10, 32)),
    (lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2), (10, 32)),
], ids=["lstm", "gru", "seed_net", "encoder_layer", "encoder"])
def test_flops_do_not_depend_on_the_device(factory, size) -> None:
    """FLOPs are counted on meta shapes: on the CPU an LSTM is one fused kernel that
    FlopCounterMode cannot see (it counted 0 there, 122,880 on meta), and so is fused attention."""
    model = factory().eval()
    meta, cpu = (torchprobe.summary(model, size, device=d) for d in ("meta", "cpu"))
    assert cpu.device == "cpu" and meta.total_flops > 0
    assert [c.flops for c in cpu.calls] == [c.flops for c in meta.calls]


class NeedsValues(nn.Module):
    """Branches on a value (meta cannot run it: the pass falls back to real tensors), then runs an
    LSTM and fused attention, kernels the CPU runs without the matmuls FlopCounterMode counts."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().sum() >= 0:
            x = self.lstm(x)[0]
        return self.attention(x, x, x, need_weights=False)[0]


def test_flops_after_a_fallback_to_real_tensors_are_counted_on_meta_shapes() -> None:
    """A pass that had to run on real tensors still counts every op's FLOPs on meta shapes: the
    same numbers as the meta pass of the same model without the branch."""
    model = NeedsValues().eval()
    result = torchprobe.summary(model, (10, 16))
    assert result.device == "cpu" and result.fallback_reason is not None
    branchless = torchprobe.summary(nn.Sequential(model.lstm), (10, 16), device="meta")
    lstm_row = next(c for c in result.calls if c.name == "lstm")
    assert lstm_row.flops == branchless.total_flops > 0
    attention_row = next(c for c in result.calls if c.name == "attention")
    q = torch.empty(1, 10, 16, device="meta")
    alone = torchprobe.summary(model.attention, input_data=[q, q, q], kwargs={"need_weights": False})
    assert attention_row.flops == alone.total_flops > 0
    assert result.total_flops == lstm_row.flops + attention_row.flops


def test_macs_are_half_the_flops_of_every_row() -> None:
    result = torchprobe.summary(Net(), (1, 28, 28))
    lines = result.lines()
    assert all(line.macs * 2 == line.flops for line in lines)
    assert result.total_macs * 2 == result.total_flops > 0


def test_the_flop_counter_runs_pointwise_and_view_ops_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decomposing an op can only find a matmul it hides: relu, add or a view hide none, and their
    Python decompositions cost more than the rest of a pass (issue 15's profile)."""
    from torchprobe.stats.flops import FlopCounter

    decomposed: list[str] = []
    real = torch._ops.OpOverload.decompose

    def spy(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        decomposed.append(str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch._ops.OpOverload, "decompose", spy)
    x = torch.empty(4, 8, device="meta")
    with FlopCounter() as counter:
        torch.relu(x + 1).view(8, 4).t() @ torch.empty(8, 3, device="meta")
    assert counter.total == 2 * 4 * 8 * 3
    assert not [name for name in decomposed if "relu" in name or "add" in name or "view" in name], decomposed


class Functional(nn.Module):
    """The functions FLOPs are counted for on shapes, in their less common forms, beside ones only
    their aten ops can count (matmul of vectors, einsum, attention, an unbatched conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding="same", groups=3)
        self.up = nn.ConvTranspose2d(6, 4, 3, stride=2, output_padding=1)
        self.proj = nn.Linear(4, 5)
        self.vector_weight = nn.Parameter(torch.ones(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(torch.relu(self.conv(x)))  # (1, 4, 18, 18)
        single = F.conv2d(x[0], self.conv.weight[:3].repeat(1, 1, 1, 1), groups=3)  # unbatched
        tokens = self.proj(y.flatten(2).transpose(1, 2))  # (1, 324, 5): linear on 3-d
        flat = F.linear(tokens[0, 0, :4], self.proj.weight[:, :4])  # 1-d input
        a, b = tokens[0, :6], tokens[0, 6:12].t()
        products = [a @ b, torch.mm(a, b), torch.addmm(a.new_zeros(6, 6), a, b), torch.bmm(a[None], b[None]),
                    torch.baddbmm(a.new_zeros(1, 6, 6), a[None], b[None]), tokens[0, 0] @ self.vector_weight,
                    torch.einsum("bld,ld->b", tokens, tokens[0]), F.linear(tokens, self.vector_weight)]
        attention = F.scaled_dot_product_attention(tokens[:, None], tokens[:, None], tokens[:, None])
        return sum(p.sum() for p in products) + attention.mean() + single.mean() + flat.sum()


def test_flops_on_shapes_equal_the_aten_count() -> None:
    """Every function counted on its shapes (or, where only its aten ops can tell, under the
    dispatch counter) adds up to what FlopCounterMode counts on the same meta forward."""
    model = Functional().eval()
    with torch.device("meta"):
        twin = Functional().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        twin(torch.empty(1, 3, 8, 8, device="meta"))
    meta, cpu = (torchprobe.summary(model, (3, 8, 8), device=d) for d in ("meta", "cpu"))
    assert meta.total_flops == counter.get_total_flops() > 0
    assert [c.flops for c in cpu.calls] == [c.flops for c in meta.calls]


def test_a_conv_net_runs_no_op_under_the_flop_dispatch_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Convolutions, linears, pools and activations are counted on their shapes: the summary of a
    conv net adds no dispatch layer under its ops (issue 15), and still counts what FlopCounterMode does."""
    from torchprobe.stats.flops import FlopCounter

    dispatched: list[str] = []
    real = FlopCounter.__torch_dispatch__

    def spy(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN202
        dispatched.append(str(func))
        return real(self, func, types, args, kwargs)

    monkeypatch.setattr(FlopCounter, "__torch_dispatch__", spy)
    model = torchvision.models.resnet18()
    result = torchprobe.summary(model, (3, 64, 64))
    assert dispatched == []
    assert result.total_flops == reference_flops(model, 3, 64, 64) > 0
