"""Outputs of common ops on meta, made directly.

On the meta device many ops run ATen's Python decompositions and refs: a ``layer_norm`` costs
about 1.2 ms, ``gelu`` 0.6 ms, ``relu`` 0.4 ms, ``linear`` 0.3 ms, ``add`` 0.2 ms, while a
convolution costs 0.03 ms. Those dominate a meta forward of a transformer or a MobileNet, and a
pass only needs their outputs' metadata. :func:`meta_output` makes that output for the plain cases,
where its shape, dtype and strides are known to be the op's own: every tensor on meta, of one
dtype, contiguous, of fitting sizes, out of place, with autograd not recording (what it saves for
backward is counted by the summary). Anything else returns None and the op runs itself, so its own
errors still reach the diagnosis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchprobe.engine.torch_utils import META, argument

Shortcut = Callable[[tuple, dict], Tensor | None]
_PLAIN_TYPES = (Tensor, nn.Parameter)


def meta_output(func: Any, args: tuple, kwargs: dict) -> Tensor | None:
    """The output of ``func(*args, **kwargs)`` made directly, or None: run the op."""
    shortcut = _SHORTCUTS.get(func)
    return shortcut(args, kwargs) if shortcut is not None else None


def _quiet(*tensors: Any) -> bool:
    """Plain meta tensors (no subclass with ops of its own) of one floating dtype that autograd
    does not record."""
    first = tensors[0]
    if not all(type(t) in _PLAIN_TYPES and t.device.type == META and t.dtype == first.dtype for t in tensors):
        return False
    return first.is_floating_point() and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _plain(*tensors: Any) -> bool:
    """:func:`_quiet`, and contiguous with one set of strides: the op's output takes them."""
    return _quiet(*tensors) and tensors[0].is_contiguous() and all(t.stride() == tensors[0].stride() for t in tensors)


def _unary(*options: str) -> Shortcut:
    """An activation: the input's shape, dtype and strides (``options``: the keyword arguments
    it may take, each checked below)."""
    def shortcut(args: tuple, kwargs: dict) -> Tensor | None:
        if len(args) != 1 or any(k not in options for k in kwargs) or kwargs.get("inplace", False):
            return None
        if kwargs.get("approximate", "none") not in ("none", "tanh") or not _plain(args[0]):
            return None
        return torch.empty_like(args[0])
    return shortcut


def _binary(*options: str) -> Shortcut:
    """``add``, ``sub``, ``mul`` of two tensors of one shape and layout, or of a tensor and a
    number (``options``: ``alpha``, where the op takes it)."""
    def shortcut(args: tuple, kwargs: dict) -> Tensor | None:
        if len(args) != 2 or any(k not in options for k in kwargs) or type(kwargs.get("alpha", 1)) not in _NUMBERS:
            return None
        x, y = args
        if not isinstance(x, Tensor):
            return None
        if isinstance(y, Tensor):
            return torch.empty_like(x) if y.shape == x.shape and _plain(x, y) else None
        return torch.empty_like(x) if type(y) in _NUMBERS and _plain(x) else None
    return shortcut


_NUMBERS = (int, float)  # not bool, not complex: they would change the dtype


def _layer_norm(args: tuple, kwargs: dict) -> Tensor | None:
    x, shape = argument(args, kwargs, 0, "input"), argument(args, kwargs, 1, "normalized_shape")
    weight, bias = argument(args, kwargs, 2, "weight"), argument(args, kwargs, 3, "bias")
    if not isinstance(x, Tensor) or not isinstance(shape, (tuple, list, torch.Size)):
        return None
    shape = tuple(shape)
    params = [t for t in (weight, bias) if t is not None]
    if not shape or tuple(x.shape[x.dim() - len(shape):]) != shape or any(tuple(t.shape) != shape for t in params):
        return None
    return torch.empty_like(x) if _plain(x) and _quiet(x, *params) else None


def _linear(args: tuple, kwargs: dict) -> Tensor | None:
    """A contiguous tensor of the input's dtype, ``(*x.shape[:-1], out)``, whatever the input's
    strides (``linear`` gives that on meta, as on the CPU)."""
    x, weight, bias = (argument(args, kwargs, i, name) for i, name in enumerate(("input", "weight", "bias")))
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor) or x.dim() < 1 or weight.dim() != 2:
        return None
    if x.shape[-1] != weight.shape[1] or bias is not None and tuple(bias.shape) != (weight.shape[0],):
        return None
    if not _quiet(x, weight, *([bias] if bias is not None else [])):
        return None
    return torch.empty((*x.shape[:-1], weight.shape[0]), dtype=x.dtype, device=META)


def _batch_norm(args: tuple, kwargs: dict) -> Tensor | None:
    """Eval mode: the input's shape, dtype and strides."""
    if argument(args, kwargs, 5, "training", False):
        return None
    x = argument(args, kwargs, 0, "input")
    if not isinstance(x, Tensor) or x.device.type != META or x.dim() < 2:
        return None
    stats = [argument(args, kwargs, i + 1, n) for i, n in enumerate(("running_mean", "running_var", "weight", "bias"))]
    if any(s is not None and (s.numel() != x.shape[1] or s.device.type != META) for s in stats):
        return None
    return torch.empty_like(x)


_SHORTCUTS: dict[Any, Shortcut] = {
    F.linear: _linear,
    F.batch_norm: _batch_norm,
    F.layer_norm: _layer_norm,
    **dict.fromkeys((F.relu, F.silu, F.hardswish, F.hardsigmoid), _unary("inplace")),
    **dict.fromkeys((torch.relu, Tensor.relu, torch.sigmoid, Tensor.sigmoid, torch.tanh, Tensor.tanh), _unary()),
    F.gelu: _unary("approximate"),
    **dict.fromkeys((torch.add, Tensor.add, torch.sub, Tensor.sub), _binary("alpha")),
    **dict.fromkeys((torch.mul, Tensor.mul), _binary()),
}
