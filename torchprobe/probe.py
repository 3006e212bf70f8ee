"""The Probe protocol: what a plugin implements to observe one traced forward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from torch import nn

PROBE_ENTRY_POINT_GROUP = "torchprobe.probes"


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
    def leaf(self) -> bool:
        """No submodules: the call's row sums up everything it did."""
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

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """Argument by position or keyword, as the function's signature would bind it."""
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[index] if index < len(self.args) else default


class Probe:
    """Base class of all probes: override the events you need; each default does nothing."""

    def context(self) -> AbstractContextManager[Any]:
        """A context the trace holds open around the forward (a dispatch mode, say)."""
        return nullcontext()

    def start(self, inputs: Sequence[Any]) -> None:
        """The forward is about to run on ``inputs`` (the tensors actually passed)."""

    def module_enter(self, call: ModuleCall) -> None:
        """A module's forward begins."""

    def module_exit(self, call: ModuleCall) -> None:
        """A module's forward returned ``call.output``."""

    def function(self, op: OpCall) -> None:
        """A torch function or tensor method returned."""

    def op_failed(self, op: OpCall) -> None:
        """A torch function raised (``op.output`` is None); the user's code may still catch it."""

    def failed(self, error: BaseException, stack: Sequence[ModuleCall]) -> None:
        """The forward raised inside ``stack`` (outermost first)."""

    def result(self) -> Any:
        """What the probe found."""
        return None


@dataclass
class ProbeRegistry:
    """Probe classes by name, including those third parties declare as entry points."""

    probes: dict[str, type[Probe]] = field(default_factory=dict)
    _loaded_entry_points: bool = False

    def register(self, name: str) -> Callable[[type[Probe]], type[Probe]]:
        def decorate(cls: type[Probe]) -> type[Probe]:
            self.probes[name] = cls
            return cls

        return decorate

    def get(self, name: str) -> type[Probe]:
        if not self._loaded_entry_points:
            self._loaded_entry_points = True
            for ep in entry_points(group=PROBE_ENTRY_POINT_GROUP):
                self.probes.setdefault(ep.name, ep.load())
        if name not in self.probes:
            raise KeyError(f"no probe named {name!r}; known: {', '.join(sorted(self.probes))}")
        return self.probes[name]


PROBES = ProbeRegistry()
register_probe = PROBES.register
