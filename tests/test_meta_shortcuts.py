"""The tracer's meta shortcuts (``engine.meta_ops``): an op whose meta kernel is a slow Python
decomposition gets its output made directly; that output must be the op's own, in shape, dtype
and strides, and anything the shortcut cannot vouch for must run the op itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from torchprobe.engine.meta_ops import meta_output

META = "meta"


def made_as_the_op_makes(func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    with torch.no_grad():
        ours, theirs = meta_output(func, args, kwargs), func(*args, **kwargs)
    assert ours is not None
    assert (tuple(ours.shape), ours.dtype, ours.stride(), ours.device) == \
        (tuple(theirs.shape), theirs.dtype, theirs.stride(), theirs.device)


def tensors(draw: st.DrawFn, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A meta tensor of ``shape``: contiguous, channels-last-like on size-1 dims, or transposed."""
    layout = draw(st.sampled_from(["contiguous", "permuted", "transposed"]))
    x = torch.empty(shape, device=META, dtype=dtype)
    if layout == "permuted" and len(shape) == 4:
        x = torch.empty((shape[0], *shape[2:], shape[1]), device=META, dtype=dtype).permute(0, 3, 1, 2)
    elif layout == "transposed" and len(shape) >= 2:
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x


SHAPES = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)
DTYPES = st.sampled_from([torch.float32, torch.bfloat16])


@settings(max_examples=60, deadline=None)
@given(st.data(), SHAPES, DTYPES, st.integers(0, 4), st.booleans())
def test_linear(data: st.DataObject, shape: tuple[int, ...], dtype: torch.dtype, out: int, bias: bool) -> None:
    x = tensors(data.draw, shape, dtype)
    weight = torch.empty(out, shape[-1], device=META, dtype=dtype)
    b = torch.empty(out, device=META, dtype=dtype) if bias else None
    made_as_the_op_makes(F.linear, x, weight, b) if data.draw(st.booleans()) else \
        made_as_the_op_makes(F.linear, x, weight=weight, bias=b)


ACTIVATIONS = [F.relu, torch.relu, torch.Tensor.relu, F.gelu, F.silu, F.hardswish, F.hardsigmoid, torch.sigmoid,
               torch.Tensor.sigmoid, torch.tanh]


@settings(max_examples=60, deadline=None)
@given(st.data(), SHAPES, DTYPES, st.sampled_from(ACTIVATIONS))
def test_activations(data: st.DataObject, shape: tuple[int, ...], dtype: torch.dtype, func: Any) -> None:
    x = tensors(data.draw, shape, dtype)
    vouched = meta_output(func, (x,), {}) is not None
    assert vouched == x.is_contiguous()  # only a layout the op's output strides are known for
    if vouched:
        made_as_the_op_makes(func, x)


@settings(max_examples=60, deadline=None)
@given(st.data(), SHAPES, DTYPES, st.sampled_from([torch.add, torch.Tensor.add, torch.sub, torch.mul]),
       st.sampled_from(["tensor", "int", "float"]))
def test_add_sub_mul(data: st.DataObject, shape: tuple[int, ...], dtype: torch.dtype, func: Any, other: str) -> None:
    x = tensors(data.draw, shape, dtype)
    y = torch.empty(shape, device=META, dtype=dtype) if other == "tensor" else (2 if other == "int" else 0.5)
    vouched = meta_output(func, (x, y), {}) is not None
    assert vouched == (x.is_contiguous() and (not isinstance(y, torch.Tensor) or y.stride() == x.stride()))
    if vouched:
        made_as_the_op_makes(func, x, y)


@settings(max_examples=40, deadline=None)
@given(st.data(), SHAPES, DTYPES, st.booleans())
def test_layer_norm(data: st.DataObject, shape: tuple[int, ...], dtype: torch.dtype, affine: bool) -> None:
    x = tensors(data.draw, shape, dtype)
    normalized = shape[-data.draw(st.integers(1, len(shape))):]
    weight = torch.empty(normalized, device=META, dtype=dtype) if affine else None
    vouched = meta_output(F.layer_norm, (x, normalized, weight, weight), {}) is not None
    assert vouched == x.is_contiguous()
    if vouched:
        made_as_the_op_makes(F.layer_norm, x, normalized, weight, weight)


def test_eval_batch_norm() -> None:
    x = torch.empty(2, 4, 5, 5, device=META).to(memory_format=torch.channels_last)
    stats = [torch.empty(4, device=META) for _ in range(4)]
    made_as_the_op_makes(F.batch_norm, x, *stats, training=False)
    assert meta_output(F.batch_norm, (x, *stats), {"training": True}) is None


def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, device=META, dtype=dtype)


class Tagged(torch.Tensor):
    """A tensor subclass: its ops are its own business."""


CANNOT_VOUCH = {
    "linear in_features": (F.linear, (meta(2, 5), meta(3, 4)), {}),  # the op's own error reaches the diagnosis
    "linear bias size": (F.linear, (meta(2, 5), meta(3, 5), meta(4)), {}),
    "linear dtypes": (F.linear, (meta(2, 5), meta(3, 5, dtype=torch.bfloat16)), {}),
    "linear on the cpu": (F.linear, (torch.zeros(2, 5), torch.zeros(3, 5)), {}),
    "linear recorded": (F.linear, (meta(2, 5), meta(3, 5).requires_grad_()), {}),  # saved for backward
    "relu in place": (F.relu, (meta(2, 5),), {"inplace": True}),
    "relu of integers": (torch.relu, (meta(2, 5, dtype=torch.int64),), {}),
    "gelu bad approximation": (F.gelu, (meta(2, 5),), {"approximate": "cubic"}),
    "add broadcast": (torch.add, (meta(2, 5), meta(5)), {}),
    "add bool": (torch.add, (meta(2, 5), True), {}),
    "add out": (torch.add, (meta(2, 5), meta(2, 5)), {"out": meta(2, 5)}),
    "mul alpha": (torch.mul, (meta(2, 5), meta(2, 5)), {"alpha": 2}),
    "layer_norm wrong shape": (F.layer_norm, (meta(2, 5), (4,)), {}),
    "sigmoid of a view": (torch.sigmoid, (meta(4, 6)[:, :3],), {}),
    "a subclass": (torch.relu, (meta(2, 5).as_subclass(Tagged),), {}),  # its own ops may do anything
}


@pytest.mark.parametrize("case", CANNOT_VOUCH)
def test_the_op_runs_itself_where_the_shortcut_cannot_vouch(case: str) -> None:
    func, args, kwargs = CANNOT_VOUCH[case]
    with torch.enable_grad():
        assert meta_output(func, args, kwargs) is None
