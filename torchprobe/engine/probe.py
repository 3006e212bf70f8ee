"""The Probe protocol: what a plugin implements to observe one traced forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from torchprobe.engine.events import ModuleCall, OpCall


class Probe:
    """Base class of all probes: override the events you need; each default does nothing."""

    def context(self) -> AbstractContextManager[Any]:
        """A context the trace holds open around the forward (a dispatch mode, say)."""
        return nullcontext()

    def enters(self, name: str) -> AbstractContextManager[Any] | None:
        """A context to run the model's torch function ``name`` in (a dispatch mode that must see
        that function's aten ops), or None; asked before every function, so keep it cheap."""
        return None

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
