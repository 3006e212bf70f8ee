"""What ``torchprobe.summary`` returns: per visible row, output, parameters, FLOPs and RF; totals.

Parameters are attributed to the first visible row that owns them, so a shared module or a tied
weight is counted once and every column sums to its printed total, at any folding depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from torchprobe.display import Displayable
from torchprobe.notes import Note, fallback_notes
from torchprobe.rf.result import LayerRF, RFResult
from torchprobe.shapes.tensors import desc_json
from torchprobe.stats.probe import CallStats

SUMMARY_SCHEMA = "torchprobe.summary/1"


@dataclass(frozen=True)
class SummaryLine:
    """A visible row: what it shows once folding and attribution (the first row that reads a parameter) are applied."""

    stats: CallStats
    params: int
    shared: bool  # every parameter it holds was already counted on an earlier row
    flops: int
    rf: LayerRF | None

    @property
    def macs(self) -> int:
        """Multiply-adds: every FLOP formula counts a multiply and an add as two."""
        return self.flops // 2


@dataclass(frozen=True)
class ModelSummary(Displayable):
    """Shapes, parameters, FLOPs and receptive field of one forward pass, with totals."""

    model: nn.Module = field(repr=False)
    input_shapes: tuple[tuple[int, ...], ...]
    calls: tuple[CallStats, ...]
    rf: RFResult | None
    device: str
    fallback_reason: str | None = None

    @property
    def notes(self) -> tuple[Note, ...]:
        """The receptive-field notes, then the fallback to real tensors when there was one."""
        return (self.rf.diagnostics if self.rf else ()) + fallback_notes(self.device, self.fallback_reason)

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
    def total_macs(self) -> int:
        return self.total_flops // 2

    @property
    def uncalled_params(self) -> int:
        """Parameters no op of the forward read (they appear in no row)."""
        named = dict(self.model.named_parameters(remove_duplicate=False))
        read = {id(named[n]) for c in self.calls for n in c.reads if n in named}
        return sum(p.numel() for p in self.model.parameters() if id(p) not in read)

    # -- rows -----------------------------------------------------------------------------------

    def lines(self, depth: int | None = None) -> list[SummaryLine]:
        """Visible rows; a row at the folding depth carries everything inside it."""
        counted: set[int] = set()
        child_flops: dict[int, int] = {}
        for call in self.calls:
            if call.parent is not None:
                child_flops[call.parent] = child_flops.get(call.parent, 0) + call.flops
        rf_rows = {(r.name, r.call): r for r in self.rf.layers if r.kind == "module"} if self.rf else {}
        named = dict(self.model.named_parameters(remove_duplicate=False))
        inside: list[set[str]] = [set(call.reads) for call in self.calls]  # a call's reads and its children's
        for index in range(len(self.calls) - 1, -1, -1):  # children come after their parent
            parent = self.calls[index].parent
            if parent is not None:
                inside[parent] |= inside[index]
        lines = []
        for index, call in enumerate(self.calls):
            if depth is not None and call.depth > depth:
                continue
            folded = depth is not None and call.depth == depth
            held = list({id(named[n]): named[n] for n in sorted(inside[index] if folded else call.reads)
                         if n in named}.values())  # each tensor once (tied weights have two names)
            new = [p for p in held if id(p) not in counted]
            counted.update(id(p) for p in new)
            flops = call.flops if folded else call.flops - child_flops.get(index, 0)
            params = sum(p.numel() for p in new)
            lines.append(SummaryLine(call, params, bool(held) and not new, flops, rf_rows.get((call.name, call.call))))
        return lines

    @staticmethod
    def column_totals(lines: Sequence[SummaryLine]) -> tuple[int, int]:
        """Parameters and FLOPs of the given rows: at any folding depth, the model's totals."""
        return sum(line.params for line in lines), sum(line.flops for line in lines)

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
            "notes": [note.to_dict() for note in self.notes],
            "layers": [
                {
                    "name": line.stats.name, "type": line.stats.type, "call": line.stats.call,
                    "depth": line.stats.depth, "output": desc_json(line.stats.output),
                    "params": line.params, "shared": line.shared, "flops": line.flops,
                    "rf": line.rf.to_dict()["rf"] if line.rf else None,
                    "jump": line.rf.to_dict()["jump"] if line.rf else None,
                }
                for line in self.lines()
            ],
        }
