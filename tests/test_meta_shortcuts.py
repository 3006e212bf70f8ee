"""The tracer's meta shortcuts (``engine.tracer.meta_shortcut``): an op whose meta kernel is a slow
Python decomposition gets its output made directly; that output must be the op's own, in shape,
dtype and strides, and anything the shortcut cannot vouch for must run the op itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from torchprobe.engine.tracer import meta_shortcut

META = "meta"


def same_tensor_shape(ours: torch.Tensor | None, theirs: torch.Tensor) -> None:
    assert ours is not None
    assert (tuple(ours.shape), ours.dtype, ours.stride(), ours.device) == \
        (tuple(theirs.shape), theirs.dtype, theirs.stride(), theirs.device)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=0, max_size=3), st.integers(1, 5), st.integers(0, 4), st.booleans(),
       st.sampled_from([torch.float32, torch.bfloat16]), st.booleans(), st.booleans())
def test_linear_made_directly_is_the_ops_output(batch: list[int], features: int, out: int, bias: bool,
                                                 dtype: torch.dtype, keywords: bool, transposed: bool) -> None:
    x = torch.empty((*batch, features), device=META, dtype=dtype)
    if transposed and x.dim() >= 2:
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)  # not contiguous
    weight = torch.empty(out, features, device=META, dtype=dtype)
    b = torch.empty(out, device=META, dtype=dtype) if bias else None
    args, kwargs = ((x, weight, b), {}) if not keywords else ((x,), {"weight": weight, "bias": b})
    with torch.no_grad():
        same_tensor_shape(meta_shortcut(F.linear, args, kwargs), F.linear(x, weight, b))


@pytest.mark.parametrize("case", ["in_features", "bias", "dtypes", "cpu", "autograd"])
def test_linear_runs_itself_where_the_shortcut_cannot_vouch(case: str) -> None:
    x, weight, bias = (torch.empty(2, 5, device=META), torch.empty(3, 5, device=META), torch.empty(3, device=META))
    if case == "in_features":
        weight = torch.empty(3, 4, device=META)  # the op's own error must reach the diagnosis
    elif case == "bias":
        bias = torch.empty(4, device=META)
    elif case == "dtypes":
        weight = weight.to(torch.bfloat16)
    elif case == "cpu":
        x, weight, bias = torch.zeros(2, 5), torch.zeros(3, 5), torch.zeros(3)
    else:
        weight.requires_grad_(True)  # what autograd saves for backward is counted by the summary
    assert meta_shortcut(F.linear, (x, weight, bias), {}) is None


def test_eval_batch_norm_made_directly_is_the_ops_output() -> None:
    x = torch.empty(2, 4, 5, 5, device=META).to(memory_format=torch.channels_last)
    stats = [torch.empty(4, device=META) for _ in range(4)]
    with torch.no_grad():
        ours = meta_shortcut(F.batch_norm, (x, *stats), {"training": False})
        same_tensor_shape(ours, F.batch_norm(x, *stats, training=False))
        assert meta_shortcut(F.batch_norm, (x, *stats), {"training": True}) is None
