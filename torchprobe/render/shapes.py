"""The shape-trace table: every call with its inputs and outputs, then the failure's diagnosis."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from torchprobe.render.text import note_lines
from torchprobe.shapes.result import ShapeTrace
from torchprobe.shapes.tensors import desc_text


def trace_table(trace: ShapeTrace, depth: int | None = None) -> Group:
    """The calls with their input and output shapes; a failed call in red, then the diagnosis."""
    title = "Shape trace" + (" (failed)" if trace.failed else "")
    table = Table(title=title, title_justify="left")
    for column in ("Layer", "Type", "Input", "Output"):
        table.add_column(column, overflow="fold")  # every column wraps: a shape is never cut
    for row in trace.rows:
        if depth is not None and row.depth > depth:
            continue
        name = "  " * row.depth + row.label
        kind = row.type if row.kind == "module" else f"ƒ {row.type}"
        if row.status == "failed":
            table.add_row(f"✗ {name}", kind, row.inputs_text(), "raised", style="bold red")
        else:
            table.add_row(name, kind, row.inputs_text(), desc_text(row.outputs) if row.status == "ok" else "…")
    parts: list[Any] = [table]
    if trace.diagnosis is not None:
        parts += [Text(line, style="bold red" if i == 0 else "") for i, line in enumerate(trace.diagnosis.lines())]
    parts += note_lines(trace.notes)
    return Group(*parts)

