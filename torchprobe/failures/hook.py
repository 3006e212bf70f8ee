"""Attaching an analyzer to a model: a forward hook that pairs each output with its targets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

Indices = torch.Tensor | Sequence[int] | None
Update = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", Indices], None]


class FailureHook:
    """A forward hook that pairs each output of a module with the targets the caller gives, in
    either order, and hands the pair to ``update`` (an analyzer's). A context manager: leaving
    removes it."""

    def __init__(self, update: Update, module: nn.Module, inputs: bool,
                 select: Callable[[Any], torch.Tensor] | None) -> None:
        self._update = update
        self._keep_inputs = inputs
        self._select = select or first_tensor
        self._output: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._targets: tuple[torch.Tensor, Any] | None = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._output is not None:
            raise ValueError("the model ran twice without targets for the first output: "
                             "call hook.targets(y) for every forward")
        inputs = args[0] if self._keep_inputs and args and isinstance(args[0], torch.Tensor) else None
        self._output = (self._select(output).detach(), None if inputs is None else inputs.detach())
        self._pair()

    def targets(self, targets: torch.Tensor, indices: Indices = None) -> None:
        """The targets (and optional dataset indices) of the forward just run, or about to run."""
        if self._targets is not None:
            raise ValueError("targets given twice without a forward in between")
        self._targets = (targets, indices)
        self._pair()

    def _pair(self) -> None:
        if self._output is None or self._targets is None:
            return
        (outputs, inputs), (targets, indices) = self._output, self._targets
        self._output = self._targets = None
        self._update(outputs, targets, inputs, indices)

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> FailureHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def first_tensor(output: Any) -> torch.Tensor:
    """The logits of a module's output: the tensor itself, or the first tensor in a tuple/list/dict."""
    if isinstance(output, torch.Tensor):
        return output
    items = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for item in items:
        if isinstance(item, torch.Tensor):
            return item
    raise ValueError(f"cannot find the logits in a {type(output).__name__}: pass select=")
