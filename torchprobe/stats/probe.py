"""The summary probe: per module call, its output and the FLOPs counted while it ran.

FLOPs come from PyTorch's own ``FlopCounterMode`` (read before and after each call), not from
formulas.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from torchprobe.engine.events import CallSite, ModuleCall
from torchprobe.engine.probe import Probe
from torchprobe.shapes.tensors import describe


@dataclass(frozen=True)
class CallStats(CallSite):
    """One module call as the summary sees it."""

    parent: int | None  # index of the enclosing call's row
    module: nn.Module = field(repr=False)
    output: Any = None  # described: TensorDesc, or containers of them
    flops: int = 0  # inclusive of the calls inside it


class SummaryProbe(Probe):
    def __init__(self) -> None:
        self.rows: list[CallStats] = []
        self.counter: FlopCounterMode | None = None
        self._open: list[tuple[int, int]] = []  # (row index, FLOPs counted when it started)

    def context(self) -> AbstractContextManager[Any]:
        self.counter = FlopCounterMode(display=False)
        return self.counter

    def start(self, inputs: Any) -> None:
        self.rows, self._open = [], []

    def module_enter(self, call: ModuleCall) -> None:
        parent = self._open[-1][0] if self._open else None
        self.rows.append(CallStats(**call.site.site_dict(), parent=parent, module=call.module))
        self._open.append((len(self.rows) - 1, self.total_flops()))

    def module_exit(self, call: ModuleCall) -> None:
        index, started = self._open.pop()
        self.rows[index] = replace(self.rows[index], flops=self.total_flops() - started, output=describe(call.output))

    def total_flops(self) -> int:
        return self.counter.get_total_flops() if self.counter is not None else 0

    def result(self) -> list[CallStats]:
        return self.rows
