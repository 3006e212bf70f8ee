"""Rendering: rich tables for terminals and notebooks, plain text for golden files."""

from __future__ import annotations

import io
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from torchprobe.rf.result import LayerRF, RFResult

RENDER_WIDTH = 200


def number(value: Fraction | int | None) -> str:
    """7 -> "7", 15/2 -> "7.5", 1/3 -> "1/3", None -> "?"."""
    if value is None:
        return "?"
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    denominator = value.denominator
    while denominator % 2 == 0:
        denominator //= 2
    while denominator % 5 == 0:
        denominator //= 5
    return f"{float(value):g}" if denominator == 1 else str(value)


def axes_text(values: Sequence[Any], separator: str = "×") -> str:
    return separator.join(number(v) for v in values)


def rf_cell(layer: LayerRF) -> str:
    if layer.unknown is not None or not layer.known:
        return "unknown" if layer.unknown else "-"
    text = axes_text(layer.rf)
    return f"{text} global" if all(layer.is_global) else text


def flags(layer: LayerRF) -> str:
    return ("" if layer.uniform else "*") + ("" if layer.aligned else "!")


def shape_text(shape: Sequence[int] | None) -> str:
    return "-" if shape is None else "[" + ", ".join(str(s) for s in shape) + "]"


def verdict(result: RFResult) -> str:
    """One sentence: the model's RF and whether it covers the whole input."""
    out = result.output
    size = axes_text(result.spatial_size)
    if not out.known:
        return f"Receptive field of the output: unknown on the {size} input (see the notes below)."
    rf = axes_text(out.rf)
    if all(out.is_global):
        return f"Receptive field of the output: {rf} on a {size} input: global."
    partial = [
        f"on axis {a} not every unit covers all {n} pixels"
        for a, (n, covered) in enumerate(zip(result.spatial_size, out.is_global))
        if not covered
    ]
    return f"Receptive field of the output: {rf} on a {size} input: not global ({'; '.join(partial)})."


def rf_table(result: RFResult, depth: int | None = None) -> Group:
    table = Table(title=f"Receptive field, input {shape_text(result.input_shape)}", title_justify="left")
    for column, justify in (("Layer", "left"), ("Type", "left"), ("Output shape", "left"), ("RF", "right"), ("Jump", "right"), ("Start", "right")):
        table.add_column(column, justify=justify, no_wrap=True)
    for layer in result.layers:
        if depth is not None and layer.depth > depth:
            continue
        name = "  " * layer.depth + (layer.name or "(model)")
        if layer.call:
            name += f" #{layer.call + 1}"
        table.add_row(
            name + flags(layer),
            layer.type if layer.kind == "module" else f"ƒ {layer.type}",
            shape_text(layer.output_shape),
            rf_cell(layer),
            axes_text(layer.jump) if layer.known else "",
            axes_text(layer.start, ", ") if layer.known else "",
        )
    parts: list[Any] = [table, Text(verdict(result), style="bold")]
    if any(not l.uniform for l in result.layers):
        parts.append(Text("* non-uniform: units differ in span; RF is the widest, start is unit 0's", style="dim"))
    if any(not l.aligned for l in result.layers):
        parts.append(Text("! misaligned merge: branches with different unit grids; spans are their union", style="dim"))
    if result.fallback_reason:
        parts.append(Text(f"ran on {result.device}: the meta device failed ({result.fallback_reason})", style="yellow"))
    parts += [Text(f"note: {d}", style="yellow") for d in result.diagnostics]
    return Group(*parts)


def render_text(renderable: Any, width: int = RENDER_WIDTH) -> str:
    """Plain text of a rich renderable, the same on every terminal (golden files use it)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, record=True)
    console.print(renderable)
    return console.export_text()
