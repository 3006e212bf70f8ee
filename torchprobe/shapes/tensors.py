"""Tensors described by shape and dtype, inside the containers that hold them (tuples, dicts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TensorDesc:
    """Shape and dtype of one tensor, as tables show it (``[1, 10]``, ``[4, 7] int64``)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def __str__(self) -> str:
        dims = "[" + ", ".join(str(s) for s in self.shape) + "]"
        return dims if self.dtype == torch.float32 else f"{dims} {str(self.dtype).removeprefix('torch.')}"

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": str(self.dtype).removeprefix("torch.")}


def describe(value: Any) -> Any:
    """Tensors -> TensorDesc, containers kept, anything else by a short repr."""
    if isinstance(value, torch.Tensor):
        return TensorDesc(tuple(value.shape), value.dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(describe(v) for v in value)
    if isinstance(value, dict):
        return {k: describe(v) for k, v in value.items()}
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def desc_text(value: Any) -> str:
    """One cell of the table: ``[1, 3, 32, 32]``, ``([1, 10], [1, 5])``, ``{logits: [1, 10]}``."""
    if isinstance(value, TensorDesc):
        return str(value)
    if isinstance(value, (tuple, list)):
        inner = ", ".join(desc_text(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {desc_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def desc_json(value: Any) -> Any:
    if isinstance(value, TensorDesc):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [desc_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): desc_json(v) for k, v in value.items()}
    return value
