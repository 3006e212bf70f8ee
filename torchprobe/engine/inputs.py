"""Turning what the user gives (sizes without the batch dimension, or tensors) into model inputs."""

from __future__ import annotations

from typing import Any

import torch

from torchprobe.engine.torch_utils import META
from torchprobe.errors import UsageError


def batch_sizes(input_size: Any, batch: int = 1) -> list[torch.Size]:
    """``(1, 28, 28)`` or ``[(3, 32, 32), (1, 32, 32)]`` -> sizes with a batch dimension."""
    if not input_size:
        raise UsageError("input size is empty: give C,H,W (no batch dimension)")
    sizes = [input_size] if isinstance(input_size[0], int) else list(input_size)
    out = []
    for size in sizes:
        if not all(isinstance(s, int) for s in size):
            raise UsageError(f"input size {tuple(size)} must be integers")
        if any(s <= 0 for s in size):
            raise UsageError(f"input size {tuple(size)} has a non-positive dimension")
        out.append(torch.Size((batch, *size)))
    return out


def model_inputs(input_size: Any = None, input_data: Any = None) -> list[Any]:
    """Exactly one of ``input_size`` (per-sample sizes) or ``input_data`` (tensors, batch included)."""
    if (input_size is None) == (input_data is None):
        raise UsageError("give exactly one of input_size and input_data")
    if input_data is not None:
        return list(input_data) if isinstance(input_data, (list, tuple)) else [input_data]
    return list(batch_sizes(input_size))


def to_device(value: Any, device: str) -> Any:
    """Move tensors to ``device``; a ``torch.Size`` becomes a tensor of that size (random values,
    from a private generator so the caller's RNG state is untouched)."""
    if isinstance(value, torch.Size):
        if device == META:
            return torch.empty(value, device=META)
        generator = torch.Generator(device=device).manual_seed(0)
        return torch.randn(value, generator=generator, device=device)
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value
