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
