"""The summary table: the columns asked for per row, then the totals they add up to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from torchprobe.render.rf import rf_cell, rf_steps, verdict
from torchprobe.render.text import Fitted, axes_text, count, human_bytes, note_lines, numbers_whole, shape_text, si
from torchprobe.shapes.tensors import desc_text
from torchprobe.stats.result import ModelSummary, SummaryLine

HEADERS = {"type": "Type", "output": "Output shape", "params": "Params", "rf": "RF", "jump": "Jump",
           "flops": "FLOPs", "macs": "MACs", "activations": "Activations", "saved": "Saved for bwd"}
WORDS = ("Layer", "Type", "Output shape")
DROPPED_FIRST = ("saved", "activations", "macs", "jump", "rf")  # when the numbers alone are too wide
NEEDS_A_FORWARD = ("output", "rf", "jump", "flops", "macs", "activations", "saved")


def _cells(line: SummaryLine) -> dict[str, str]:
    call, known = line.stats, line.rf is not None and line.rf.known
    return {
        "type": call.type, "output": desc_text(call.output),
        "params": "(shared)" if line.shared else (count(line.params) if line.params else "-"),
        "rf": rf_cell(line.rf) if known and line.rf else "",
        "jump": axes_text(line.rf.jump) if known and line.rf else "",
        "flops": si(line.flops) if line.flops else "-", "macs": si(line.macs) if line.macs else "-",
        "activations": human_bytes(line.allocated) if line.allocated else "-",
        "saved": human_bytes(line.saved) if line.saved else "-",
    }


def summary_table(summary: ModelSummary, depth: int | None = None, debug: bool = False) -> Group:
    """Rows with the summary's columns (``depth`` overrides the depth it was made with); then
    totals that the columns add up to, and the memory of the pass."""
    lines = summary.lines(depth if depth is not None else summary.depth)
    ran = summary.memory is not None
    shown = [c for c in summary.columns
             if (ran or c not in NEEDS_A_FORWARD) and (summary.rf is not None or c not in ("rf", "jump"))]
    sums: dict[str, Callable[[SummaryLine], int]] = {
        "params": lambda line: line.params, "flops": lambda line: line.flops, "macs": lambda line: line.macs,
        "activations": lambda line: line.allocated, "saved": lambda line: line.saved,
    }
    footers = {"Layer": "Total"} | {
        HEADERS[c]: (human_bytes if c in ("activations", "saved") else count if c == "params" else si)(
            sum(sums[c](line) for line in lines)) for c in shown if c in sums
    }
    title = f"Summary, input {', '.join(shape_text(s) for s in summary.input_shapes)}" if ran else \
        "Summary, parameters only (no input given: nothing ran)"

    def build(left_out: frozenset[str]) -> Table:
        table = Table(title=title, title_justify="left", show_footer=True)
        headers = ["Layer"] + [HEADERS[c] for c in shown if HEADERS[c] not in left_out]
        for header in headers:
            table.add_column(header, footer=footers.get(header, ""), justify="left" if header in WORDS else "right")
        for line in lines:
            cells = {HEADERS[c]: v for c, v in _cells(line).items()}
            cells["Layer"] = "  " * line.stats.depth + line.stats.label
            table.add_row(*(cells[header] for header in headers))
        return numbers_whole(table, [h for h in headers if h not in WORDS])

    parts: list[Any] = [Fitted(build, [HEADERS[c] for c in DROPPED_FIRST if c in shown])]
    parts += [Text(t) for t in _totals(summary)]
    if summary.rf is not None:
        parts.append(Text(verdict(summary.rf), style="bold"))
        if debug:
            parts += [Text(step) for step in rf_steps(summary.rf)]
    parts += note_lines(summary.notes)
    return Group(*parts)


def _totals(summary: ModelSummary) -> list[str]:
    uncalled = summary.uncalled_params
    lines = [
        f"Parameters: {count(summary.total_params)} (trainable {count(summary.trainable_params)}, "
        f"frozen {count(summary.frozen_params)})"
        + (f", of which {count(uncalled)} that no op of the forward reads" if uncalled and summary.memory else ""),
        f"Buffers: {count(summary.buffer_elements)} elements; size of parameters and buffers: "
        f"{human_bytes(summary.size_bytes)} ({count(summary.size_bytes)} bytes)",
    ]
    if summary.memory is None:
        return lines
    flops = summary.total_flops
    exact = f" ({count(flops)})" if si(flops) != str(flops) else ""
    lines.append(f"FLOPs: {si(flops)}{exact} for the input above; a multiply and an add count as two "
                 "(FLOPs = 2 x multiply-adds, torch.utils.flop_counter's convention)")
    memory = summary.memory
    saved = f"; saved for backward {human_bytes(summary.saved_bytes)}" if summary.mode == "train" else ""
    lines.append(
        f"Memory ({summary.mode}): input {human_bytes(memory.input_bytes)}; activations "
        f"{human_bytes(summary.allocated_bytes)} allocated, at most {human_bytes(memory.peak_activations)} alive at "
        f"once{saved}; peak {human_bytes(summary.peak_bytes)} with parameters and buffers"
    )
    return lines
