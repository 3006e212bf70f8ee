"""Turning what the user gives (sizes without the batch dimension, or tensors, with dtypes) into
the positional and keyword inputs of one forward."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.weak import WeakTensorKeyDictionary

from torchprobe.engine.torch_utils import META, available_bytes
from torchprobe.errors import UsageError

DTYPE_HELP = "a torch dtype such as float32, bfloat16 or long (indices: long:HIGH for values 0..HIGH-1)"

MAX_ELEMENTS = 2**62  # beyond, a size overflows torch's int64 element counts
_value_bounds = WeakTensorKeyDictionary()  # an integer meta input -> the bound of its values


@dataclass(frozen=True)
class InputDtype:
    """The dtype of an input given by its size; an integer input holds indices in ``0..high-1``
    (default: the smallest ``nn.Embedding`` of the model, so every lookup is in range)."""

    dtype: torch.dtype
    high: int | None = None


DtypeArg = torch.dtype | str | InputDtype


def parse_dtype(value: DtypeArg) -> InputDtype:
    """``"bfloat16"``, ``torch.long``, ``"int64:1000"`` -> an :class:`InputDtype`."""
    if isinstance(value, InputDtype):
        return value
    if isinstance(value, torch.dtype):
        return InputDtype(value)
    name, sep, bound = str(value).partition(":")
    dtype = getattr(torch, name.strip(), None) if name.strip() else None
    if not isinstance(dtype, torch.dtype):
        raise UsageError(f"bad dtype {value!r}: expected {DTYPE_HELP}")
    if not sep:
        return InputDtype(dtype)
    if dtype.is_floating_point or dtype.is_complex or not bound.strip().isdigit() or int(bound) < 1:
        raise UsageError(f"bad dtype {value!r}: a range is an integer dtype and a positive bound, e.g. long:1000")
    return InputDtype(dtype, int(bound))


def batch_sizes(input_size: Any, batch: int = 1) -> list[torch.Size]:
    """``(1, 28, 28)`` or ``[(3, 32, 32), (1, 32, 32)]`` -> sizes with a batch dimension."""
    if not input_size:
        raise UsageError("input size is empty: give C,H,W (no batch dimension)")
    sizes = list(input_size) if isinstance(input_size[0], Sequence) else [input_size]
    out = []
    for size in sizes:
        if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size):
            raise UsageError(f"input size {tuple(size)} must be integers")
        size = tuple(int(s) for s in size)
        if any(s <= 0 for s in size):
            raise UsageError(f"input size {size} has a non-positive dimension")
        if math.prod(size) * batch >= MAX_ELEMENTS:
            raise UsageError(f"input size {size} is too large: {math.prod(size) * batch:,} elements")
        out.append(torch.Size((batch, *size)))
    return out


def check_fits(model: nn.Module, inputs: Sequence[Any], kwargs: Mapping[str, Any], device: str, why: str) -> None:
    """Before a pass on real tensors: refuse, with the figures, one whose inputs and copies of the
    parameters and buffers alone would not fit in the memory ``device`` has free (the meta pass
    failed for ``why``), instead of trying to allocate it."""
    drawn = sum(_drawn_bytes(x) for x in [*inputs, *kwargs.values()])
    copies = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    free = available_bytes(device)
    if free is not None and drawn + copies > free:
        raise UsageError(
            f"the forward needs real tensors ({why}), and on {device} that needs at least "
            f"{_gib(drawn + copies)} (inputs {_gib(drawn)}, a copy of the parameters and buffers {_gib(copies)}); "
            f"{_gib(free)} is free: give a smaller input"
        )


def _drawn_bytes(value: Any) -> int:
    """Bytes a size or a meta tensor becomes on a real device (real tensors exist already)."""
    if isinstance(value, torch.Size):
        return math.prod(value) * 4
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size() if value.device.type == META else 0
    if isinstance(value, (list, tuple)):
        return sum(_drawn_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_drawn_bytes(v) for v in value.values())
    return 0


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def model_inputs(
    input_size: Any = None,
    input_data: Any = None,
    kwargs: Mapping[str, Any] | None = None,
    dtypes: Sequence[DtypeArg] | None = None,
    model: nn.Module | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword inputs from exactly one of ``input_size`` (per-sample sizes) or
    ``input_data`` (tensors, batch included; a dict is keyword arguments). A size is a float
    input of the model's floating dtype unless ``dtypes`` (one per size) says otherwise."""
    if (input_size is None) == (input_data is None):
        raise UsageError("give exactly one of input_size and input_data")
    keywords = dict(kwargs or {})
    if input_data is not None:
        if dtypes:
            raise UsageError("dtypes are for inputs given by size: input_data tensors have their own")
        if isinstance(input_data, Mapping):
            return [], {**dict(input_data), **keywords}
        return (list(input_data) if isinstance(input_data, (list, tuple)) else [input_data]), keywords
    sizes = batch_sizes(input_size)
    if dtypes is not None and len(dtypes) != len(sizes):
        raise UsageError(f"{len(dtypes)} dtypes for {len(sizes)} input{'s' if len(sizes) != 1 else ''}: "
                         "give one per input")
    chosen = [parse_dtype(d) for d in dtypes] if dtypes else [InputDtype(floating_dtype(model))] * len(sizes)
    return [_sized(size, dtype, model) for size, dtype in zip(sizes, chosen)], keywords


def floating_dtype(model: nn.Module | None) -> torch.dtype:
    """The dtype of the model's first floating parameter or buffer (float32 when it has none)."""
    tensors = [*model.parameters(), *model.buffers()] if model is not None else []
    return next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)


def _sized(size: torch.Size, spec: InputDtype, model: nn.Module | None) -> torch.Size | torch.Tensor:
    """A float32 input stays a size (the pass draws it); another dtype is a meta tensor, which
    stands for its shape and dtype, with the bound of its values when they are indices."""
    if spec.dtype == torch.float32:
        return size
    tensor = torch.empty(size, dtype=spec.dtype, device=META)
    if not (spec.dtype.is_floating_point or spec.dtype.is_complex):
        _value_bounds[tensor] = spec.high or _smallest_embedding(model)
    return tensor


def _smallest_embedding(model: nn.Module | None) -> int:
    sizes = [m.num_embeddings for m in (model.modules() if model is not None else ())
             if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    return min(sizes, default=2)


def to_device(value: Any, device: str) -> Any:
    """Move tensors to ``device``. A ``torch.Size``, or a meta tensor on a real device, becomes a
    tensor of that size with random values (indices below their bound), from a private generator
    so the caller's RNG state is untouched."""
    if isinstance(value, torch.Size):
        value = torch.empty(value, device=META)
    if isinstance(value, torch.Tensor):
        if value.device.type != META or device == META:
            return value.to(device)
        return _drawn(value, device)
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def _drawn(like: torch.Tensor, device: str) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(0)
    if like.dtype.is_floating_point or like.dtype.is_complex:
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device)
    high = 2 if like.dtype == torch.bool else _value_bounds.get(like, 1)
    return torch.randint(0, high, like.shape, generator=generator, device=device).to(like.dtype)
