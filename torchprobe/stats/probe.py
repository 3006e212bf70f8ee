"""The summary probe: per module call, its output, the FLOPs counted while it ran and the
parameters its own ops read.

FLOPs come from ``torch.utils.flop_counter``'s formulas on meta shapes (:mod:`.flops`), read
before and after each call. A parameter belongs to the call whose ops read it (seen when the tensor enters an op),
so a submodule used through ``.weight`` (``nn.MultiheadAttention.out_proj``) or a ``ParameterList``
is counted where it is used.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from torchprobe.engine.events import CallSite, ModuleCall, OpCall
from torchprobe.engine.probe import Probe
from torchprobe.engine.torch_utils import tensors_in
from torchprobe.shapes.tensors import describe
from torchprobe.stats.flops import FlopCounter, ran_on_a_real_device


@dataclass(frozen=True)
class CallStats(CallSite):
    """One module call as the summary sees it."""

    parent: int | None  # index of the enclosing call's row
    module: nn.Module = field(repr=False)
    output: Any = None  # described: TensorDesc, or containers of them
    flops: int = 0  # inclusive of the calls inside it
    reads: frozenset[str] = frozenset()  # qualified names of the parameters its own ops read


class SummaryProbe(Probe):
    def __init__(self) -> None:
        self.rows: list[CallStats] = []
        self.counter = FlopCounter()
        self._open: list[tuple[int, int]] = []  # (row index, FLOPs counted when it started)
        self._names: dict[int, str] = {}  # id of a parameter (the pass's stand-in) -> its qualified name
        self._reads: dict[int, set[str]] = {}  # row index -> parameters its own ops read

    def context(self) -> AbstractContextManager[Any]:
        self.counter = FlopCounter()
        return self.counter

    def start(self, inputs: Any) -> None:
        self.rows, self._open, self._names, self._reads = [], [], {}, {}

    def module_enter(self, call: ModuleCall) -> None:
        if not self._open:  # the root call: the pass's stand-ins are the module's parameters now
            for name, tensor in call.module.named_parameters(remove_duplicate=False):
                self._names.setdefault(id(tensor), name)
        parent = self._open[-1][0] if self._open else None
        self.rows.append(CallStats(**call.site.site_dict(), parent=parent, module=call.module))
        self._open.append((len(self.rows) - 1, self.total_flops()))

    def module_exit(self, call: ModuleCall) -> None:
        index, started = self._open.pop()
        self.rows[index] = replace(self.rows[index], flops=self.total_flops() - started, output=describe(call.output),
                                   reads=frozenset(self._reads.pop(index, ())))

    def function(self, op: OpCall) -> None:
        if not self._open:
            return
        if ran_on_a_real_device(op):
            self.counter.replay_on_meta(op)
        names = [self._names[id(t)] for t in tensors_in((op.args, op.kwargs)) if id(t) in self._names]
        if names:
            self._reads.setdefault(self._open[-1][0], set()).update(names)

    def total_flops(self) -> int:
        return self.counter.total

    def result(self) -> list[CallStats]:
        return self.rows
