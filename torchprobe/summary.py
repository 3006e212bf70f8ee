"""The summary probe: per module call, output shape, parameters and FLOPs; totals that add up.

Parameters are attributed to the first visible row that owns them, so a shared module or a tied
weight is counted once and every column sums to its printed total, at any folding depth. FLOPs
come from PyTorch's own ``FlopCounterMode`` (read before and after each call), not from formulas.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from torchprobe.probe import ModuleCall, Probe, register_probe
from torchprobe.rf.result import LayerRF, RFResult
from torchprobe.shapes import describe, spec_json

SUMMARY_SCHEMA = "torchprobe.summary/1"


@dataclass
class CallStats:
    """One module call as the summary sees it."""

    name: str
    type: str
    depth: int
    call: int
    parent: int | None  # index of the enclosing call's row
    module: nn.Module
    output: Any = None  # described: TensorSpec, or containers of them
    flops: int = 0  # inclusive of the calls inside it

    @property
    def label(self) -> str:
        return (self.name or "(model)") + (f" #{self.call + 1}" if self.call else "")


@register_probe("summary")
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
        self.rows.append(CallStats(call.name, call.type, call.depth, call.call, parent, call.module))
        self._open.append((len(self.rows) - 1, self.total_flops()))

    def module_exit(self, call: ModuleCall) -> None:
        index, started = self._open.pop()
        row = self.rows[index]
        row.flops = self.total_flops() - started
        row.output = describe(call.output)

    def total_flops(self) -> int:
        return self.counter.get_total_flops() if self.counter is not None else 0

    def result(self) -> list[CallStats]:
        return self.rows


@dataclass(frozen=True)
class SummaryLine:
    """A visible row: what it shows once folding and first-owner attribution are applied."""

    stats: CallStats
    params: int
    shared: bool  # every parameter it holds was already counted on an earlier row
    flops: int
    rf: LayerRF | None


@dataclass(frozen=True)
class ModelSummary:
    """Shapes, parameters, FLOPs and receptive field of one forward pass, with totals."""

    model: nn.Module = field(repr=False)
    input_shapes: tuple[tuple[int, ...], ...]
    calls: tuple[CallStats, ...]
    rf: RFResult | None
    device: str
    fallback_reason: str | None = None

    # -- totals ---------------------------------------------------------------------------------

    @property
    def total_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def buffer_elements(self) -> int:
        return sum(b.numel() for b in self.model.buffers())

    @property
    def size_bytes(self) -> int:
        """Bytes of the unique parameters and buffers (shared and tied tensors once)."""
        return sum(t.numel() * t.element_size() for t in [*self.model.parameters(), *self.model.buffers()])

    @property
    def total_flops(self) -> int:
        roots = [c.flops for c in self.calls if c.parent is None]
        return sum(roots)

    @property
    def uncalled_params(self) -> int:
        """Parameters of modules the forward never called (they appear in no row)."""
        called = {id(p) for c in self.calls for p in c.module.parameters()}
        return sum(p.numel() for p in self.model.parameters() if id(p) not in called)

    # -- rows -----------------------------------------------------------------------------------

    def lines(self, depth: int | None = None) -> list[SummaryLine]:
        """Visible rows; a row at the folding depth carries everything inside it."""
        counted: set[int] = set()
        child_flops: dict[int, int] = {}
        for call in self.calls:
            if call.parent is not None:
                child_flops[call.parent] = child_flops.get(call.parent, 0) + call.flops
        rf_rows = {(l.name, l.call): l for l in self.rf.layers if l.kind == "module"} if self.rf else {}
        lines = []
        for index, call in enumerate(self.calls):
            if depth is not None and call.depth > depth:
                continue
            folded = depth is not None and call.depth == depth
            held = list(call.module.parameters(recurse=folded))  # each tensor once, as torch yields them
            new = [p for p in held if id(p) not in counted]
            counted.update(id(p) for p in new)
            flops = call.flops if folded else call.flops - child_flops.get(index, 0)
            lines.append(SummaryLine(call, sum(p.numel() for p in new), bool(held) and not new, flops, rf_rows.get((call.name, call.call))))
        return lines

    def to_dict(self) -> dict[str, Any]:
        out = self.rf.output.to_dict() if self.rf else None
        return {
            "schema": SUMMARY_SCHEMA,
            "input_shapes": [list(s) for s in self.input_shapes],
            "device": self.device,
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "frozen_params": self.frozen_params,
            "uncalled_params": self.uncalled_params,
            "buffer_elements": self.buffer_elements,
            "size_bytes": self.size_bytes,
            "flops": self.total_flops,
            "rf": out,
            "layers": [
                {
                    "name": line.stats.name, "type": line.stats.type, "call": line.stats.call, "depth": line.stats.depth,
                    "output": spec_json(line.stats.output),
                    "params": line.params, "shared": line.shared, "flops": line.flops,
                    "rf": line.rf.to_dict()["rf"] if line.rf else None,
                    "jump": line.rf.to_dict()["jump"] if line.rf else None,
                }
                for line in self.lines()
            ],
        }

    def __rich__(self) -> Any:
        from torchprobe.report import summary_table

        return summary_table(self)

    def __str__(self) -> str:
        from torchprobe.report import render_text

        return render_text(self)

