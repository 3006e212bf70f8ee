"""What ``torchprobe.summary`` returns: per visible row, output, parameters, FLOPs, memory and RF;
totals.

Parameters are attributed to the first visible row whose ops read them, so a shared module or a
tied weight is counted once; FLOPs and bytes belong to the row whose own ops did the work (a
folded row: its subtree's). So every column sums to its printed total, at any folding depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from torchprobe.display import Displayable
from torchprobe.notes import Note, fallback_notes
from torchprobe.rf.result import LayerRF, RFResult
from torchprobe.shapes.tensors import desc_json
from torchprobe.stats.probe import CallStats, PassMemory

SUMMARY_SCHEMA = "torchprobe.summary/1"
COLUMNS = ("type", "output", "params", "rf", "jump", "flops", "macs", "activations", "saved")
DEFAULT_COLUMNS = ("type", "output", "params", "rf", "jump", "flops")


@dataclass(frozen=True)
class SummaryLine:
    """A visible row: what it shows once folding and attribution (the first row that reads a parameter) are applied."""

    stats: CallStats
    params: int
    shared: bool  # every parameter it holds was already counted on an earlier row
    flops: int
    rf: LayerRF | None
    allocated: int = 0  # bytes its ops allocated
    saved: int = 0  # bytes its ops saved for backward (mode="train")

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
    memory: PassMemory | None = None  # None: no forward ran (a summary without an input)
    mode: str = "eval"
    depth: int | None = None  # the folding depth asked for: what renders and to_dict() show
    columns: tuple[str, ...] = DEFAULT_COLUMNS

    @property
    def notes(self) -> tuple[Note, ...]:
        """The receptive-field notes, then the fallback to real tensors when there was one."""
        return (self.rf.diagnostics if self.rf else ()) + fallback_notes(self.device, self.fallback_reason)

    @classmethod
    def of_parameters(cls, model: nn.Module, depth: int | None, columns: tuple[str, ...]) -> ModelSummary:
        """Without an input nothing runs: a row per module (its own parameters), in definition order."""
        rows: list[CallStats] = []
        index_of: dict[str, int] = {}
        for name, module in model.named_modules():
            parent_name = name.rpartition(".")[0]
            index_of[name] = len(rows)
            rows.append(CallStats(
                name, type(module).__name__, 0 if not name else name.count(".") + 1, 0, "module",
                parent=None if not name else index_of[parent_name], module=module,
                reads=frozenset(f"{name}.{p}" if name else p for p, v in module._parameters.items() if v is not None),
            ))
        return cls(model, (), tuple(rows), None, "none", depth=depth, columns=columns)

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
        return self.param_bytes + self.buffer_bytes

    @property
    def total_flops(self) -> int:
        roots = [c.flops for c in self.calls if c.parent is None]
        return sum(roots)

    @property
    def total_macs(self) -> int:
        return self.total_flops // 2

    @property
    def param_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    @property
    def buffer_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.model.buffers())

    @property
    def allocated_bytes(self) -> int:
        """Bytes of every storage the pass's ops created (its activations and temporaries)."""
        return sum(c.allocated for c in self.calls if c.parent is None)

    @property
    def saved_bytes(self) -> int:
        """Bytes autograd saved for backward, alive when the forward ended (``mode="train"``)."""
        return sum(c.saved for c in self.calls if c.parent is None)

    @property
    def peak_bytes(self) -> int:
        """The most bytes alive at once during the forward: parameters, buffers, the input and the
        activations alive together."""
        extra = self.memory.input_bytes + self.memory.peak_activations if self.memory else 0
        return self.size_bytes + extra

    @property
    def uncalled_params(self) -> int:
        """Parameters no op of the forward read (they appear in no row)."""
        named = dict(self.model.named_parameters(remove_duplicate=False))
        read = {id(named[n]) for c in self.calls for n in c.reads if n in named}
        return sum(p.numel() for p in self.model.parameters() if id(p) not in read)

    # -- rows -----------------------------------------------------------------------------------

    def lines(self, depth: int | None = None) -> list[SummaryLine]:
        """Visible rows (``depth=None``: all); a row at the folding depth carries everything inside it."""
        counted: set[int] = set()
        children: dict[int, list[CallStats]] = {}
        for call in self.calls:
            if call.parent is not None:
                children.setdefault(call.parent, []).append(call)
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
            inner = [] if folded else children.get(index, [])  # what its children's rows show
            lines.append(SummaryLine(
                call, sum(p.numel() for p in new), bool(held) and not new,
                call.flops - sum(c.flops for c in inner), rf_rows.get((call.name, call.call)),
                call.allocated - sum(c.allocated for c in inner), call.saved - sum(c.saved for c in inner),
            ))
        return lines

    def visible(self) -> list[SummaryLine]:
        """The rows at the depth the summary was asked for."""
        return self.lines(self.depth)

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
            "macs": self.total_macs,
            "mode": self.mode,
            "depth": self.depth,
            "memory": {
                "input_bytes": self.memory.input_bytes, "param_bytes": self.param_bytes,
                "buffer_bytes": self.buffer_bytes, "allocated_bytes": self.allocated_bytes,
                "peak_activation_bytes": self.memory.peak_activations, "saved_bytes": self.saved_bytes,
                "peak_bytes": self.peak_bytes,
            } if self.memory else None,
            "rf": out,
            "notes": [note.to_dict() for note in self.notes],
            "layers": [
                {
                    "name": line.stats.name, "type": line.stats.type, "call": line.stats.call,
                    "depth": line.stats.depth, "output": desc_json(line.stats.output),
                    "params": line.params, "shared": line.shared, "flops": line.flops, "macs": line.macs,
                    "allocated_bytes": line.allocated, "saved_bytes": line.saved,
                    "rf": line.rf.to_dict()["rf"] if line.rf else None,
                    "jump": line.rf.to_dict()["jump"] if line.rf else None,
                }
                for line in self.visible()
            ],
        }
