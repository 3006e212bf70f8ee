"""What the tracer reports: module calls and functional ops, and the identity every row shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import torch
from torch import nn

from torchprobe.engine.torch_utils import argument, tensors_in

CallKind = Literal["module", "op"]


@dataclass(frozen=True)
class CallSite:
    """Which call a row describes: a module call (by qualified name, and how many times that
    module ran before in this pass) or a functional op. Every probe's per-call record is one."""

    name: str
    type: str
    depth: int
    call: int
    kind: CallKind

    @property
    def label(self) -> str:
        """``features.0``, ``(model)`` for the root, ``block #2`` for a module's second call."""
        return (self.name or "(model)") + (f" #{self.call + 1}" if self.call else "")

    def site_dict(self) -> dict[str, Any]:
        """The identity's fields: what a record built on this call passes on, and what JSON shows."""
        return {"name": self.name, "type": self.type, "kind": self.kind, "depth": self.depth, "call": self.call}


@dataclass
class ModuleCall:
    """One call of one module: where it sits, what it got and (once it returned) what it gave."""

    name: str
    module: nn.Module
    depth: int
    call: int  # how many times this module was called before, in this pass
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any = None

    @property
    def type(self) -> str:
        return type(self.module).__name__

    @property
    def site(self) -> CallSite:
        return CallSite(self.name, self.type, self.depth, self.call, "module")

    @cached_property
    def leaf(self) -> bool:
        """No submodules: the call's row sums up everything it did (asked once per op it runs)."""
        return next(self.module.children(), None) is None


def shows_its_ops(owner: ModuleCall | None) -> bool:
    """Functional ops get rows of their own when the root or a composite module calls them; inside
    a leaf module (``F.conv2d`` in ``nn.Conv2d``) the module's own row already says it."""
    return owner is None or owner.depth == 0 or not owner.leaf


@dataclass
class OpCall:
    """One torch function or tensor method call, seen by the function mode."""

    name: str  # canonical op name: ``add`` for ``x + y``, ``Tensor.add_`` and ``torch.add``
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any
    owner: ModuleCall | None  # innermost module being executed, None outside the root
    inplace: bool = False

    @cached_property
    def inputs(self) -> list[torch.Tensor]:
        """Every tensor among its arguments, in order (found once, whichever probe asks; read only)."""
        return tensors_in((self.args, self.kwargs))

    @cached_property
    def outputs(self) -> list[torch.Tensor]:
        """Every tensor it returned, in order (read only)."""
        return tensors_in(self.output)

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """Argument by position or keyword, as the function's signature would bind it."""
        return argument(self.args, self.kwargs, index, name, default)

    @property
    def site(self) -> CallSite:
        """The op's own row: ``block.add`` inside ``block``, one level deeper than its owner (its
        first call; a probe that counts calls sets ``call``)."""
        owner = self.owner
        name = f"{owner.name}.{self.name}" if owner is not None and owner.name else self.name
        return CallSite(name, self.name, owner.depth + 1 if owner is not None else 0, 0, "op")
