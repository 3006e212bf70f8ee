"""What ``summary`` takes as inputs and how: dtypes (given, parsed, inferred), index ranges,
keyword inputs, train mode, no input at all, and the depth and columns it is asked for."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchprobe
from mnist_demo.model import Net
from torchprobe.engine.inputs import InputDtype, parse_dtype
from torchprobe.errors import UsageError
from torchprobe.render import render_text, summary_table


class Tokens(nn.Module):
    """An embedding lookup: its input is indices, never floats."""

    def __init__(self, vocabulary: int = 50) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if int(tokens.max()) >= self.embed.num_embeddings:  # values matter: meta cannot run this
            raise IndexError("token out of range")
        return self.head(self.embed(tokens))


@pytest.mark.parametrize("text, dtype, high", [
    ("float16", torch.float16, None), ("bfloat16", torch.bfloat16, None), ("long", torch.int64, None),
    ("int64:1000", torch.int64, 1000), ("int32:7", torch.int32, 7), ("bool", torch.bool, None),
])
def test_dtype_names_parse(text: str, dtype: torch.dtype, high: int | None) -> None:
    assert parse_dtype(text) == InputDtype(dtype, high)
    assert parse_dtype(dtype) == InputDtype(dtype)


@pytest.mark.parametrize("text", ["floaty", "float32:10", "long:0", "long:x", "Size", ""])
def test_bad_dtype_names_are_one_line_errors(text: str) -> None:
    with pytest.raises(UsageError, match="dtype") as error:
        parse_dtype(text)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_input_dtype_follows_the_model(dtype: torch.dtype) -> None:
    """A half-precision model gets half-precision inputs (it failed with "Input type (float) and
    bias type (c10::BFloat16)")."""
    model = Net().to(dtype)
    result = torchprobe.summary(model, (1, 28, 28))
    assert result.calls[0].output.dtype == dtype
    assert result.total_flops == torchprobe.summary(Net(), (1, 28, 28)).total_flops
    assert all(p.dtype == dtype and p.device.type == "cpu" for p in model.parameters())


def test_integer_inputs_take_values_below_the_range_given() -> None:
    """Indices for an embedding: the pass falls back to real values (the model reads them), drawn
    from 0..high-1, so an embedding of 50 entries runs; a range beyond it fails inside the model."""
    result = torchprobe.summary(Tokens(50), (12,), dtypes=["long:50"])
    assert result.device == "cpu" and result.calls[-1].output.shape == (1, 12, 3)
    with pytest.raises(torchprobe.ForwardError, match="token out of range"):
        torchprobe.summary(Tokens(50), (12,), dtypes=[InputDtype(torch.long, 10_000)])


def test_integer_range_defaults_to_the_smallest_embedding() -> None:
    result = torchprobe.summary(Tokens(5), (64,), dtypes=[torch.long])
    assert result.calls[-1].output.shape == (1, 64, 3)


def test_one_dtype_per_input() -> None:
    with pytest.raises(UsageError, match="2 dtypes for 1 input"):
        torchprobe.summary(Net(), (1, 28, 28), dtypes=["float32", "float32"])


class Keywords(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * scale


def test_a_dict_of_inputs_is_passed_as_keyword_arguments() -> None:
    data = {"x": torch.zeros(3, 4), "scale": torch.ones(3, 2)}
    result = torchprobe.summary(Keywords(), input_data=data)
    assert result.calls[0].output.shape == (3, 2) and result.total_params == 10
    assert result.input_shapes == ((4,), (2,))


@pytest.mark.parametrize("depth", [None, 0, 1, 2])
def test_without_an_input_parameters_per_module(depth: int | None) -> None:
    """torchinfo's summary(model): no forward, each module's own parameters, adding up."""
    import torchvision

    model = torchvision.models.resnet18()
    result = torchprobe.summary(model, depth=depth)
    assert result.memory is None and result.total_flops == 0
    assert sum(line.params for line in result.visible()) == result.total_params == 11_689_512
    text = render_text(summary_table(result))
    assert "parameters only" in text and "FLOPs" not in text


def test_depth_and_columns_are_the_summarys() -> None:
    result = torchprobe.summary(Net(), (1, 28, 28), depth=1, columns=["params", "macs", "activations"])
    assert all(line.stats.depth <= 1 for line in result.visible())
    assert [row["depth"] for row in result.to_dict()["layers"]] == [line.stats.depth for line in result.visible()]
    header = render_text(summary_table(result)).splitlines()[2]
    assert [h.strip() for h in header.strip("┃ ").split("┃")] == ["Layer", "Params", "MACs", "Activations"]


def test_unknown_column_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown column 'flop'"):
        torchprobe.summary(Net(), (1, 28, 28), columns=["flop"])


def test_summary_and_rf_of_a_failing_model_say_what_trace_says() -> None:
    """The same diagnosis from every entry point (summary and rf printed the raw error)."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(torchprobe.ShapeError) as traced:
        torchprobe.trace(model, (1, 28, 28))
    for entry in (torchprobe.summary, torchprobe.receptive_field):
        with pytest.raises(torchprobe.ShapeError) as failed:
            entry(model, (1, 28, 28))
        assert failed.value.diagnosis == traced.value.diagnosis
        assert failed.value.summary == traced.value.summary
