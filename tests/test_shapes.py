"""torchprobe.trace: shapes of every call, and a diagnosis for each kind of failure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchprobe
from mnist_demo.model import Net
from tests.helpers.zoo import DictOutput, KeywordInputs, LeNet, SharedAndTied
from torchprobe.render import render_text


def failure(model: nn.Module, *args, **kwargs) -> torchprobe.ShapeError:
    with pytest.raises(torchprobe.ShapeError) as caught:
        torchprobe.trace(model, *args, **kwargs)
    assert caught.value.__cause__ is not None  # chained from the model's own error
    return caught.value


class Sequential(nn.Module):
    """Wraps layers so that failures happen in a named child, after a named producer."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_linear_in_features() -> None:
    error = failure(LeNet(), (1, 32, 32))
    d = error.diagnosis
    assert (d.kind, d.module) == ("linear_in_features", "fc1")
    assert "320" in d.expected and "500" in d.received
    assert d.producer == "flatten in (model)"
    assert "nn.Linear(500, 50)" in d.fix
    text = str(error)
    assert "conv2" in text and "✗" in text  # the partial table up to the failure
    assert [r.name for r in error.trace.rows if r.status == "ok"][-1] == "conv2"


def test_conv_in_channels() -> None:
    d = failure(Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(16, 4, 3)), (3, 16, 16)).diagnosis
    assert (d.kind, d.module) == ("conv_in_channels", "layers.1")
    assert "in_channels=16" in d.expected and "8 channels" in d.received
    assert d.producer == "layers.0 (Conv2d)"
    assert "Conv2d(8, 4" in d.fix


def test_conv_rank() -> None:
    d = failure(Sequential(nn.Conv2d(1, 4, 3)), (28,)).diagnosis
    assert (d.kind, d.module) == ("conv_rank", "layers.0")
    assert "4-D" in d.expected and "2-D" in d.received


@pytest.mark.parametrize(
    "norm, expected, received",
    [
        (nn.BatchNorm2d(6), "num_features=6", "8"),
        (nn.GroupNorm(2, 6), "num_channels=6", "8"),
        (nn.LayerNorm([8, 5, 5]), "normalized_shape=[8, 5, 5]", "[8, 6, 6]"),
    ],
)
def test_normalisation_sizes(norm: nn.Module, expected: str, received: str) -> None:
    d = failure(Sequential(nn.Conv2d(3, 8, 3), norm), (3, 8, 8)).diagnosis
    assert (d.kind, d.module) == ("norm_size", "layers.1")
    assert expected in d.expected and received in d.received
    assert type(norm).__name__ in d.fix


def test_embedding_index_range() -> None:
    model = Sequential(nn.Embedding(10, 4))
    d = failure(model, input_data=torch.tensor([[1, 2, 12]])).diagnosis
    assert (d.kind, d.module) == ("embedding_range", "layers.0")
    assert "[0, 9]" in d.expected and "[1, 12]" in d.received
    assert "nn.Embedding(13, 4)" in d.fix


def test_multihead_attention_embed_dim() -> None:
    class Attend(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 6)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.proj(x)
            return self.attn(h, h, h)[0]

    d = failure(Attend(), (5, 4)).diagnosis
    assert (d.kind, d.module) == ("mha_embed_dim", "attn")
    assert "8" in d.expected and "[1, 5, 6]" in d.received
    assert d.producer == "proj (Linear)"


def test_matmul_in_functional_code() -> None:
    class Bilinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.b = nn.Linear(4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) @ self.b(x)

    d = failure(Bilinear(), (3, 4)).diagnosis
    assert (d.kind, d.module) == ("matmul", "")
    assert "[1, 3, 6]" in d.received and "[1, 3, 5]" in d.received and "6 vs 3" in d.received
    assert "a (Linear)" in d.producer and "b (Linear)" in d.producer


def test_impossible_view() -> None:
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 20, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).view(-1, 320)

    d = failure(Flat(), (1, 13, 13)).diagnosis
    assert (d.kind, d.module) == ("view", "")
    assert "1620" in d.expected and "[-1, 320]" in d.received
    assert "x.flatten(1)" in d.fix and "1620" in d.fix
    assert d.producer == "conv (Conv2d)"


def test_cat_size_mismatch() -> None:
    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Conv2d(3, 4, 3)
            self.same = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.down(x), self.same(x)], dim=1)

    d = failure(Skip(), (3, 16, 16)).diagnosis
    assert (d.kind, d.module) == ("cat", "")
    assert "[1, 4, 14, 14]" in d.received and "[1, 4, 16, 16]" in d.received
    assert "down (Conv2d)" in d.producer and "same (Conv2d)" in d.producer
    assert "interpolate" in d.fix


def test_too_small_names_the_smallest_input() -> None:
    error = failure(Net(), (1, 12, 12))
    d = error.diagnosis
    assert (d.kind, d.module) == ("too_small", "conv5")
    assert "20x20" in d.expected and "1x1" in d.received
    assert error.input_related


def test_successful_trace_lists_every_call_with_dtypes_and_kwargs() -> None:
    result = torchprobe.trace(
        KeywordInputs(), input_data=torch.zeros(1, 3, 8, 8), kwargs={"mask": torch.ones(1, 4, 8, 8, dtype=torch.bool)}
    )
    root = result.rows[0]
    assert root.inputs_text() == "[1, 3, 8, 8], mask=[1, 4, 8, 8] bool"
    assert [r.name for r in result.rows] == ["", "conv"]
    assert result.to_dict()["schema"] == "torchprobe.trace/1"


def test_ops_rows_show_functional_calls() -> None:
    result = torchprobe.trace(LeNet(), (1, 28, 28), ops=True)
    ops = [r.type for r in result.rows if r.kind == "op"]
    assert ops.count("max_pool2d") == 2 and "flatten" in ops


@pytest.mark.parametrize(
    "name, run",
    [
        ("seed_net", lambda: torchprobe.trace(Net(), (1, 28, 28))),
        ("shared_and_tied", lambda: torchprobe.trace(SharedAndTied(), (8,))),
        ("dict_output", lambda: torchprobe.trace(DictOutput(), (3, 16, 16))),
        (
            "keyword_inputs",
            lambda: torchprobe.trace(
                KeywordInputs(), input_data=torch.zeros(1, 3, 8, 8), kwargs={"mask": torch.ones(1, 4, 8, 8)}
            ),
        ),
    ],
)
def test_rendering(golden, name: str, run) -> None:
    golden(f"trace_{name}.txt", render_text(run()))


def test_rendering_of_the_lenet_failure(golden) -> None:
    golden("trace_lenet_fc1_mismatch.txt", str(failure(LeNet(), (1, 32, 32))))


class TokenConvs(nn.Module):
    """(B, L, C) tokens -> two Conv1d(k=5) along the tokens: at least 9 tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(nn.Conv1d(8, 8, 5), nn.Conv1d(8, 8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x.transpose(1, 2))


def test_too_small_searches_the_axes_of_the_layout() -> None:
    """With layout LC the smallest input is searched along the tokens, not the features."""
    with pytest.raises(torchprobe.ShapeError) as info:
        torchprobe.trace(TokenConvs(), (4, 8), layout="LC")
    d = info.value.diagnosis
    assert d.kind == "too_small" and "at least 9 (per spatial axis)" in d.expected
    with pytest.raises(torchprobe.UsageError, match="layout"):
        torchprobe.trace(TokenConvs(), (4, 8), layout="LCX")


def test_a_batch_dim_in_the_input_size_gets_a_hint() -> None:
    """torchinfo users pass the batch dim (1,1,28,28): torchprobe adds its own, so the conv sees
    5-D; the fix says to drop the leading 1 instead of suggesting nn.Conv3d."""
    d = failure(Net(), (1, 1, 28, 28)).diagnosis
    assert d.kind == "conv_rank"
    assert "batch" in d.fix and "(1, 28, 28)" in d.fix and "Conv3d" not in d.fix


def test_no_layer_that_does_not_exist_is_suggested() -> None:
    d = failure(Net(), (1, 1, 1, 1, 1, 1, 28, 28)).diagnosis
    assert d.kind == "conv_rank" and "Conv7d" not in d.fix and "nn.Conv" not in d.fix
