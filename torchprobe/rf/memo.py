"""Rule results by value, within one pass: a transformer's blocks, once its receptive field has
gone global, hand each op the same states, block after block; their rules run once.

A call is keyed by its op, every argument (a tensor by shape, dtype, device and RF state; plain
values as they are) and the shapes of its outputs. Only built-in rules that read nothing else are
memoised; a tensor whose values a rule could read (one on a real device that does not follow the
input: an index, a mask) makes the call unkeyed, as does an unknown state.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch

from torchprobe.rf.state import RFState, TensorRF

# rule modules whose rules read only arguments, shapes, states and the values of tensors that a
# key refuses (writes also read the strides of the view they write through)
PURE_FAMILIES = frozenset(f"torchprobe.rf.rules.{family}" for family in (
    "core", "sliding", "resample", "elementwise", "joins", "reductions", "attention", "layout", "gathers"))
_PLAIN = (int, float, str, bytes, type(None), type(Ellipsis), torch.dtype, torch.device, torch.memory_format,
          torch.layout)


class _Unkeyed(Exception):
    """An argument a key cannot stand for."""


def call_key(name: str, rule: Callable[..., Any] | None, args: tuple, kwargs: dict, output: Any,
             state_of: Callable[[torch.Tensor], RFState | None]) -> Hashable | None:
    """What decides the rule's result for this call, as one hashable value; None: not memoised."""
    if getattr(rule, "__module__", None) not in PURE_FAMILIES:
        return None
    try:
        return name, _key(args, state_of), _key(kwargs, state_of), _key(output, None)
    except _Unkeyed:
        return None


def _key(value: Any, state_of: Callable[[torch.Tensor], RFState | None] | None) -> Hashable:
    if isinstance(value, torch.Tensor):
        if state_of is None:  # an output: its shape
            return tuple(value.shape), value.dtype
        state = state_of(value)
        if state is None and value.device.type != "meta" or state is not None and not isinstance(state, TensorRF):
            raise _Unkeyed
        return tuple(value.shape), value.dtype, value.device.type, state
    if isinstance(value, _PLAIN):
        return type(value), value
    if isinstance(value, (tuple, list)):
        return type(value), tuple(_key(v, state_of) for v in value)
    if isinstance(value, slice):
        return slice, _key(value.start, state_of), _key(value.stop, state_of), _key(value.step, state_of)
    if isinstance(value, dict):
        return dict, tuple((k, _key(v, state_of)) for k, v in value.items())
    raise _Unkeyed
