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
from torchprobe.shapes import ShapeTrace, spec_text
from torchprobe.summary import ModelSummary

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
    partial = [unseen(out, a) or f"on axis {a} not every unit covers all {m.size} pixels" for a, (m, covered) in enumerate(zip(out.maps, out.is_global)) if not covered]
    return f"Receptive field of the output: {rf} on a {size} input: not global ({'; '.join(partial)})."


def unseen(layer: LayerRF, axis: int) -> str | None:
    """Border pixels no unit can see (floor division in an unpadded strided layer drops some)."""
    pixels = layer.seen(axis)
    if pixels is None:
        return f"on axis {axis} no unit sees any pixel"
    lo, hi = pixels
    size = layer.maps[axis].size
    parts = [_pixels(0, lo - 1)] if lo > 0 else []
    parts += [_pixels(hi + 1, size - 1)] if hi < size - 1 else []
    return f"on axis {axis} pixel(s) {' and '.join(parts)} reach no unit" if parts else None


def _pixels(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}..{last}"


def fallback_note(result: RFResult | ShapeTrace | ModelSummary) -> list[Text]:
    """Say so when the meta device could not run the model and real tensors were used."""
    if not result.fallback_reason:
        return []
    return [Text(f"ran on {result.device}: the meta device failed ({result.fallback_reason})", style="yellow")]


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
    parts += fallback_note(result)
    parts += [Text(f"note: {d}", style="yellow") for d in result.diagnostics]
    return Group(*parts)


def render_text(renderable: Any, width: int = RENDER_WIDTH) -> str:
    """Plain text of a rich renderable, the same on every terminal (golden files use it)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, record=True)
    console.print(renderable)
    return console.export_text()


def trace_table(trace: ShapeTrace, depth: int | None = None) -> Group:
    """The calls with their input and output shapes; a failed call in red, then the diagnosis."""
    title = "Shape trace" + (" (failed)" if trace.failed else "")
    table = Table(title=title, title_justify="left")
    for column in ("Layer", "Type", "Input", "Output"):
        table.add_column(column, no_wrap=column in ("Layer", "Type"), overflow="fold")
    for row in trace.rows:
        if depth is not None and row.depth > depth:
            continue
        name = "  " * row.depth + row.label
        kind = row.type if row.kind == "module" else f"ƒ {row.type}"
        if row.status == "failed":
            table.add_row(f"✗ {name}", kind, row.inputs_text(), "raised", style="bold red")
        else:
            table.add_row(name, kind, row.inputs_text(), spec_text(row.outputs) if row.status == "ok" else "…")
    parts: list[Any] = [table]
    if trace.diagnosis is not None:
        parts += [Text(line, style="bold red" if i == 0 else "") for i, line in enumerate(trace.diagnosis.lines())]
    parts += fallback_note(trace)
    return Group(*parts)


def count(n: int) -> str:
    return f"{n:,}"


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


def summary_table(summary: ModelSummary, depth: int | None = None, debug: bool = False) -> Group:
    """Rows with shapes, parameters, RF and FLOPs; then totals that the columns add up to."""
    shapes = ", ".join(shape_text(s) for s in summary.input_shapes)
    table = Table(title=f"Summary, input {shapes}", title_justify="left", show_footer=True)
    lines = summary.lines(depth)
    rf_on = summary.rf is not None
    columns = ["Layer", "Type", "Output shape", "Params"] + (["RF", "Jump"] if rf_on else []) + ["FLOPs"]
    footers = {"Layer": "Total", "Params": count(sum(l.params for l in lines)), "FLOPs": count(sum(l.flops for l in lines))}
    for column in columns:
        table.add_column(column, footer=footers.get(column, ""), justify="left" if column in ("Layer", "Type", "Output shape") else "right", no_wrap=True)
    for line in lines:
        call = line.stats
        cells = ["  " * call.depth + call.label, call.type, spec_text(call.output),
                 "(shared)" if line.shared else (count(line.params) if line.params else "-")]
        if rf_on:
            cells += [rf_cell(line.rf), axes_text(line.rf.jump)] if line.rf and line.rf.known else ["", ""]
        cells.append(count(line.flops) if line.flops else "-")
        table.add_row(*cells)
    totals = [
        f"Parameters: {count(summary.total_params)} (trainable {count(summary.trainable_params)}, frozen {count(summary.frozen_params)})"
        + (f", of which {count(summary.uncalled_params)} in modules the forward never called" if summary.uncalled_params else ""),
        f"Buffers: {count(summary.buffer_elements)} elements; size of parameters and buffers: {human_bytes(summary.size_bytes)} ({count(summary.size_bytes)} bytes)",
        f"FLOPs: {count(summary.total_flops)} for a batch of 1 (torch.utils.flop_counter)",
    ]
    parts: list[Any] = [table, *(Text(t) for t in totals)]
    if summary.rf is not None:
        parts.append(Text(verdict(summary.rf), style="bold"))
        if debug:
            parts += [Text(step) for step in rf_steps(summary.rf)]
        parts += [Text(f"note: {d}", style="yellow") for d in summary.rf.diagnostics]
    parts += fallback_note(summary)
    return Group(*parts)


def rf_steps(result: RFResult) -> list[str]:
    """The seed's ``debug=True``: each change of the RF with the formula that gives it."""
    steps = []
    n = len(result.spatial_size)
    previous = (((1,) * n, (Fraction(1),) * n, (Fraction(0),) * n), True)  # the input pixels
    for layer in result.layers:
        if not layer.known or not layer.leaf:
            continue
        numbers = (layer.rf, layer.jump, layer.start)
        if numbers != previous[0]:
            per_axis = []
            for r0, j0, s0, r1, j1, s1 in zip(*previous[0], *numbers):
                if j1 == 0:
                    per_axis.append(f"rf {r1}: every unit sees the whole axis (reduced)")
                elif j0 and layer.uniform and previous[1]:
                    k_eff = Fraction(r1 - r0, 1) / j0 + 1
                    per_axis.append(
                        f"rf {r1} = {r0} + ({number(k_eff)}-1)×{number(j0)}, jump {number(j1)} = {number(j0)}×{number(j1 / j0)}, "
                        f"start {number(s1)} = {number(s0)} + {number((s1 - s0) / j0)}×{number(j0)}"
                    )
                else:
                    per_axis.append(f"rf {r1}, jump {number(j1)}, start {number(s1)}")
            axes = per_axis[0] if len(set(per_axis)) == 1 else "; ".join(f"axis {a}: {t}" for a, t in enumerate(per_axis))
            steps.append(f"  {layer.name or '(model)'} ({layer.type}): {axes}")
        previous = (numbers, layer.uniform)
    return ["RF steps (rf_out = rf_in + (k_eff-1)×jump_in, jump_out = jump_in×stride, start_out = start_in + ((k_eff-1)/2 - pad)×jump_in):", *steps]
