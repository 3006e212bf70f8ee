"""The effective-receptive-field table: per layer, the theoretical span next to the gradient's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from torchprobe.render.text import Fitted, axes_text, numbers_whole, pixels_text, shape_text
from torchprobe.rf.effective import ERFResult, LayerERF


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _floats(values: Sequence[float | None] | None, digits: int = 1) -> str:
    if values is None:
        return "-"
    return "×".join("?" if v is None else f"{v:+.{digits}f}" if digits else f"{v:.{digits}f}" for v in values)


def _span(layer: LayerERF) -> str:
    if layer.span is None:
        return "unknown"
    return " × ".join("none" if s is None else pixels_text(*s) for s in layer.span)


def _std(layer: LayerERF) -> str:
    return "-" if layer.std is None else "×".join(f"{s:.2f}" for s in layer.std)


def inputs_line(result: ERFResult) -> str:
    if result.random_inputs:
        return (f"Inputs: {result.batch} samples, {result.inputs}, not data: a random-input ERF of these weights "
                "(untrained ones unless they were loaded).")
    return f"Inputs: a batch of {result.batch} given samples."


def erf_table(result: ERFResult) -> Group:
    axes = "".join(result.axis_names)

    def build(left_out: frozenset[str]) -> Table:
        table = Table(title=f"Effective receptive field, input {shape_text(result.input_shape)}, axes {axes}",
                      title_justify="left")
        columns = (("Layer", "left"), ("Type", "left"), ("Unit", "right"), ("RF", "right"), ("Span", "right"),
                   ("Inside", "right"), ("50% area", "right"), ("95% area", "right"), ("Offset", "right"),
                   ("Std", "right"), ("Size 95%", "right"))
        kept = [(column, justify) for column, justify in columns if column not in left_out]
        for column, justify in kept:
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for layer in result.layers:
            theory = layer.theory
            cells = {
                "Layer": layer.name or "(model)",
                "Type": theory.type,
                "Unit": ",".join(str(u) for u in layer.unit) or "-",
                "RF": axes_text(theory.rf) if theory.known else "unknown",
                "Span": _span(layer),
                "Inside": _percent(layer.inside),
                "50% area": _percent(layer.area50),
                "95% area": _percent(layer.area95),
                "Offset": _floats(layer.offset),
                "Std": _std(layer),
                "Size 95%": "-" if layer.size95 is None else axes_text(layer.size95),
            }
            table.add_row(*(cells[column] for column, _ in kept))
        return numbers_whole(table, ("Unit", "RF", "Span", "Inside", "50% area", "95% area", "Offset", "Std",
                                     "Size 95%"))

    parts: list[Any] = [
        Fitted(build, ("Type", "Std", "Offset", "Unit")),
        Text(inputs_line(result), style="bold"),
        Text("Inside: gradient mass within the theoretical span; 50%/95% area: the fewest pixels holding that share "
             "of it, over the span's area; Offset: its centroid minus the span's centre; Size 95%: the central 95% "
             "per axis (pixels).", style="dim"),
    ]
    dead = [layer.name or "(model)" for layer in result.layers if layer.mass == 0]
    if dead:
        parts.append(Text(f"note: no gradient reaches the input from {', '.join(dead)} on these inputs",
                          style="yellow"))
    return Group(*parts)
