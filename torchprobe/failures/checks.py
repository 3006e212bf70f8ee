"""Argument checks of ``FailureAnalyzer.update``: one clear ValueError naming what is wrong."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from torchprobe.engine.torch_utils import describe_value, dtype_name
from torchprobe.failures.state import PROBLEMS


def batch_size(outputs: Any, targets: Any, inputs: Any, num_classes: int, with_inputs: bool | None,
               kept: torch.Tensor | None) -> int:
    """The batch size, once outputs, targets and inputs agree with each other and with earlier
    batches (``with_inputs``: whether they had inputs; ``kept``: the inputs kept from them)."""
    c = num_classes
    if not isinstance(outputs, torch.Tensor) or not outputs.is_floating_point() or outputs.shape[1:] != (c,):
        raise ValueError(f"outputs must be a float tensor of shape (batch, {c}), got {describe_value(outputs)}")
    n = outputs.shape[0]
    if not is_index_tensor(targets) or tuple(targets.shape) != (n,):
        raise ValueError(f"targets must be an integer tensor of class indices of shape ({n},), "
                         f"got {describe_value(targets)} (one-hot or soft targets: pass .argmax(1))")
    if with_inputs is not None and with_inputs != (inputs is not None):
        given = "given" if with_inputs else "not given"
        raise ValueError(f"inputs were {given} with the earlier batches: give them with every batch or with none")
    if inputs is None:
        return n
    if not isinstance(inputs, torch.Tensor) or inputs.dim() == 0 or inputs.shape[0] != n:
        raise ValueError(f"inputs must be a tensor with the batch size {n} first, got {describe_value(inputs)}")
    if kept is not None and (inputs.shape[1:] != kept.shape[1:] or inputs.dtype != kept.dtype):
        raise ValueError(f"inputs are {describe_value(inputs)}, earlier batches had {dtype_name(kept)} rows "
                         f"of shape {tuple(kept.shape[1:])}")
    return n


def batch_indices(
    indices: torch.Tensor | Sequence[int] | None, n: int, first: int, device: torch.device
) -> torch.Tensor:
    """The batch's dataset indices, on ``device``; by default ``first .. first + n - 1``."""
    if indices is None:
        return torch.arange(first, first + n, device=device)
    index = torch.as_tensor(indices)
    if not is_index_tensor(index) or tuple(index.shape) != (n,):
        raise ValueError(f"indices must be {n} integers, got {describe_value(index)}")
    return index.to(device, torch.int64, non_blocking=True, copy=True)


def raise_problems(problems: torch.Tensor, where: object) -> None:
    found = [name for name, count in zip(PROBLEMS, problems.tolist()) if count]
    if found:
        raise ValueError(f"batches on {where} had {' and '.join(found)} (checked without waiting for the device, "
                         "so reported at this read); reset() before adding more batches")


def is_index_tensor(value: Any) -> bool:
    if not isinstance(value, torch.Tensor):
        return False
    return not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
