"""The summary table: shapes, parameters, RF and FLOPs per row, then the totals."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from torchprobe.render.rf import rf_cell, rf_steps, verdict
from torchprobe.render.text import axes_text, count, human_bytes, note_lines, shape_text
from torchprobe.shapes.tensors import desc_text
from torchprobe.stats.result import ModelSummary


def summary_table(summary: ModelSummary, depth: int | None = None, debug: bool = False) -> Group:
    """Rows with shapes, parameters, RF and FLOPs; then totals that the columns add up to."""
    shapes = ", ".join(shape_text(s) for s in summary.input_shapes)
    table = Table(title=f"Summary, input {shapes}", title_justify="left", show_footer=True)
    lines = summary.lines(depth)
    rf_on = summary.rf is not None
    columns = ["Layer", "Type", "Output shape", "Params"] + (["RF", "Jump"] if rf_on else []) + ["FLOPs"]
    params, flops = summary.column_totals(lines)
    footers = {"Layer": "Total", "Params": count(params), "FLOPs": count(flops)}
    for column in columns:
        justify = "left" if column in ("Layer", "Type", "Output shape") else "right"
        table.add_column(column, footer=footers.get(column, ""), justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for line in lines:
        call = line.stats
        cells = ["  " * call.depth + call.label, call.type, desc_text(call.output),
                 "(shared)" if line.shared else (count(line.params) if line.params else "-")]
        if rf_on:
            cells += [rf_cell(line.rf), axes_text(line.rf.jump)] if line.rf and line.rf.known else ["", ""]
        cells.append(count(line.flops) if line.flops else "-")
        table.add_row(*cells)
    uncalled = summary.uncalled_params
    totals = [
        f"Parameters: {count(summary.total_params)} (trainable {count(summary.trainable_params)}, "
        f"frozen {count(summary.frozen_params)})"
        + (f", of which {count(uncalled)} in modules the forward never called" if uncalled else ""),
        f"Buffers: {count(summary.buffer_elements)} elements; size of parameters and buffers: "
        f"{human_bytes(summary.size_bytes)} ({count(summary.size_bytes)} bytes)",
        f"FLOPs: {count(summary.total_flops)} for a batch of 1 (torch.utils.flop_counter)",
    ]
    parts: list[Any] = [table, *(Text(t) for t in totals)]
    if summary.rf is not None:
        parts.append(Text(verdict(summary.rf), style="bold"))
        if debug:
            parts += [Text(step) for step in rf_steps(summary.rf)]
    parts += note_lines(summary.notes)
    return Group(*parts)

