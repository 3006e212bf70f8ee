"""The summary table: shapes, parameters, RF and FLOPs per row, then the totals."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from torchprobe.render.rf import rf_cell, rf_steps, verdict
from torchprobe.render.text import Fitted, axes_text, count, human_bytes, note_lines, numbers_whole, shape_text, si
from torchprobe.shapes.tensors import desc_text
from torchprobe.stats.result import ModelSummary


def summary_table(summary: ModelSummary, depth: int | None = None, debug: bool = False) -> Group:
    """Rows with shapes, parameters, RF and FLOPs; then totals that the columns add up to."""
    shapes = ", ".join(shape_text(s) for s in summary.input_shapes)
    lines = summary.lines(depth)
    rf_on = summary.rf is not None
    params, flops = summary.column_totals(lines)
    footers = {"Layer": "Total", "Params": count(params), "FLOPs": si(flops)}

    def build(left_out: frozenset[str]) -> Table:
        table = Table(title=f"Summary, input {shapes}", title_justify="left", show_footer=True)
        every = ["Layer", "Type", "Output shape", "Params"] + (["RF", "Jump"] if rf_on else []) + ["FLOPs"]
        columns = [c for c in every if c not in left_out]
        for column in columns:
            justify = "left" if column in ("Layer", "Type", "Output shape") else "right"
            table.add_column(column, footer=footers.get(column, ""), justify=justify)  # type: ignore[arg-type]
        for line in lines:
            call = line.stats
            cells = {"Layer": "  " * call.depth + call.label, "Type": call.type, "Output shape": desc_text(call.output),
                     "Params": "(shared)" if line.shared else (count(line.params) if line.params else "-"),
                     "FLOPs": si(line.flops) if line.flops else "-"}
            known = line.rf is not None and line.rf.known
            cells["RF"] = rf_cell(line.rf) if known and line.rf else ""
            cells["Jump"] = axes_text(line.rf.jump) if known and line.rf else ""
            table.add_row(*(cells[column] for column in columns))
        return numbers_whole(table, ("Params", "RF", "Jump", "FLOPs"))

    uncalled = summary.uncalled_params
    exact = f" ({count(summary.total_flops)})" if si(summary.total_flops) != str(summary.total_flops) else ""
    totals = [
        f"Parameters: {count(summary.total_params)} (trainable {count(summary.trainable_params)}, "
        f"frozen {count(summary.frozen_params)})"
        + (f", of which {count(uncalled)} that no op of the forward reads" if uncalled else ""),
        f"Buffers: {count(summary.buffer_elements)} elements; size of parameters and buffers: "
        f"{human_bytes(summary.size_bytes)} ({count(summary.size_bytes)} bytes)",
        f"FLOPs: {si(summary.total_flops)}{exact} for a batch of 1; a multiply and an add count as two "
        "(FLOPs = 2 x multiply-adds, torch.utils.flop_counter's convention)",
    ]
    parts: list[Any] = [Fitted(build, ("Jump", "RF")), *(Text(t) for t in totals)]
    if summary.rf is not None:
        parts.append(Text(verdict(summary.rf), style="bold"))
        if debug:
            parts += [Text(step) for step in rf_steps(summary.rf)]
    parts += note_lines(summary.notes)
    return Group(*parts)

