"""The summary probe: per module call, its output, the FLOPs counted while it ran, the bytes its
ops allocated and autograd saved for backward, and the parameters its own ops read.

FLOPs come from ``torch.utils.flop_counter``'s formulas on shapes (:mod:`.flops`), added up as
each function returns and read before and after each call. A parameter belongs to the call whose
ops read it (seen when the tensor enters an op), so a submodule used through ``.weight``
(``nn.MultiheadAttention.out_proj``) or a ``ParameterList`` is counted where it is used. Memory is
followed storage by storage (:mod:`.memory`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from torchprobe.engine.events import CallSite, ModuleCall, OpCall
from torchprobe.engine.probe import Probe
from torchprobe.engine.torch_utils import tensors_in
from torchprobe.shapes.tensors import describe
from torchprobe.stats.flops import FlopCounter, counted_by_dispatch
from torchprobe.stats.memory import MemoryCounter


@dataclass(frozen=True)
class CallStats(CallSite):
    """One module call as the summary sees it."""

    parent: int | None  # index of the enclosing call's row
    module: nn.Module = field(repr=False)
    output: Any = None  # described: TensorDesc, or containers of them
    flops: int = 0  # inclusive of the calls inside it
    allocated: int = 0  # bytes of the storages its ops created, inclusive
    saved: int = 0  # bytes its ops saved for backward, alive when the pass ended (mode="train"), inclusive
    reads: frozenset[str] = frozenset()  # qualified names of the parameters its own ops read


@dataclass(frozen=True)
class PassMemory:
    """Bytes of one pass beyond the model's own: the input, and the most the ops' storages held
    at once."""

    input_bytes: int
    peak_activations: int


@dataclass
class _Open:
    """A call that has not returned yet: its row's place."""

    call: ModuleCall
    parent: int | None

    def stats(self) -> CallStats:
        """Its row if it never returns (a failed pass): where it sits, nothing counted."""
        call = self.call
        return CallStats(call.name, call.type, call.depth, call.call, "module", self.parent, call.module)


class SummaryProbe(Probe):
    def __init__(self) -> None:
        self.rows: list[CallStats | _Open] = []  # a call's row is built when it returns (or when the pass ends)
        self.counter = FlopCounter()
        self.memory = MemoryCounter()
        self.input_bytes = 0
        self._open: list[tuple[int, int, int, ModuleCall]] = []  # row index, FLOPs and bytes when it started, call
        self._names: dict[int, str] = {}  # id of a parameter (the pass's stand-in) -> its qualified name
        self._reads: dict[int, set[str]] = {}  # row index -> parameters its own ops read

    def context(self) -> AbstractContextManager[Any]:
        return self._counting()

    @contextmanager
    def _counting(self) -> Iterator[None]:
        self.counter, self.memory = FlopCounter(), MemoryCounter()
        with self.memory.saving():
            yield

    def enters(self, name: str) -> FlopCounter | None:
        """Functions that only their aten ops can count run under the FLOP counter's dispatch
        mode; the rest are counted on their shapes when they return (:mod:`.flops`)."""
        return self.counter if self._open and counted_by_dispatch(name) else None

    def start(self, inputs: Any) -> None:
        self.rows, self._open, self._names, self._reads = [], [], {}, {}

    def module_enter(self, call: ModuleCall) -> None:
        if not self._open:  # the root call: the pass's stand-ins are the module's parameters now
            for name, tensor in call.module.named_parameters(remove_duplicate=False):
                self._names.setdefault(id(tensor), name)
            self.memory.hold([*call.module.parameters(), *call.module.buffers()])
            self.input_bytes = self.memory.hold(tensors_in((call.args, call.kwargs)))
        self.rows.append(_Open(call, self._open[-1][0] if self._open else None))  # its place: children come after
        self._open.append((len(self.rows) - 1, self.counter.total, self.memory.allocated, call))
        self.memory.tag = len(self.rows) - 1

    def module_exit(self, call: ModuleCall) -> None:
        index, flops, allocated, _ = self._open.pop()
        parent = self._open[-1][0] if self._open else None
        self.rows[index] = CallStats(
            call.name, call.type, call.depth, call.call, "module", parent, call.module, describe(call.output),
            self.counter.total - flops, self.memory.allocated - allocated, 0, frozenset(self._reads.pop(index, ())),
        )
        self.memory.tag = parent if parent is not None else -1
        if not self._open:
            self._close_memory()

    def _close_memory(self) -> None:
        """What is saved for backward is known once the pass ends (a graph whose output died freed
        its saved tensors): each row gets its own ops' and its children's."""
        self.memory.close()
        saved = self.memory.saved_by_tag()
        for index in range(len(self.rows) - 1, -1, -1):  # children come after their parent
            row = self.rows[index]
            if isinstance(row, _Open):
                row = self.rows[index] = row.stats()
            total = row.saved + saved.get(index, 0)
            if total != row.saved:  # (none in eval mode: no row is rebuilt)
                self.rows[index] = replace(row, saved=total)
            if row.parent is not None:
                saved[row.parent] = saved.get(row.parent, 0) + total

    def failed(self, error: BaseException, stack: Any) -> None:
        self._close_memory()

    def function(self, op: OpCall) -> None:
        if not self._open:
            return
        self.counter.count(op)
        self.memory.see(op.outputs)
        names = [self._names[id(t)] for t in op.inputs if id(t) in self._names]
        if names:
            self._reads.setdefault(self._open[-1][0], set()).update(names)

    def result(self) -> list[CallStats]:
        """Every call's row; one that never returned (a failed pass) with what is known of it."""
        return [row.stats() if isinstance(row, _Open) else row for row in self.rows]

    def pass_memory(self) -> PassMemory:
        return PassMemory(self.input_bytes, self.memory.peak)
