"""The receptive-field table, its verdict sentence and the ``--rf-steps`` formulas."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from torchprobe.render.text import Fitted, axes_text, note_lines, number, numbers_whole, pixels_text, shape_text
from torchprobe.rf.result import AxisStep, LayerRF, RFResult, RFStep


def rf_cell(layer: LayerRF) -> str:
    if layer.unknown is not None or not layer.known:
        return "unknown" if layer.unknown else "-"
    text = axes_text(layer.rf)
    return f"{text} global" if all(layer.is_global) else text


def flags(layer: LayerRF) -> str:
    return ("" if layer.uniform else "*") + ("" if layer.aligned else "!")


def verdict(result: RFResult) -> str:
    """One sentence: the model's RF and whether it covers the whole input."""
    out = result.output
    size = axes_text(result.spatial_size)
    if not out.known:
        return f"Receptive field of the output: unknown on the {size} input (see the notes below)."
    rf = axes_text(out.rf)
    if all(out.is_global):
        return f"Receptive field of the output: {rf} on a {size} input: global."
    names = result.axis_names
    partial = [
        _unseen_text(out, a, names[a]) or f"on axis {names[a]} not every unit covers all {m.size} pixels"
        for a, (m, covered) in enumerate(zip(out.known_maps, out.is_global)) if not covered
    ]
    return f"Receptive field of the output: {rf} on a {size} input: not global ({'; '.join(partial)})."


def _unseen_text(layer: LayerRF, axis: int, name: str) -> str | None:
    ranges = layer.unseen(axis)
    if ranges is None:
        return f"on axis {name} no unit sees any pixel"
    parts = [pixels_text(first, last) for first, last in ranges]
    return f"on axis {name} pixel(s) {' and '.join(parts)} reach no unit" if parts else None


def units_cell(layer: LayerRF, names: tuple[str, ...]) -> str:
    """Which input axes each unit dim of the output addresses: ``1:HW`` for ViT tokens."""
    dims: dict[int, str] = {}
    for name, carriers in zip(names, layer.axis_dims):
        for d in carriers:
            dims[d] = dims.get(d, "") + name
    return " ".join(f"{d}:{axes}" for d, axes in sorted(dims.items()))


def _moves_axes(result: RFResult) -> bool:
    """Some row has an input axis on several dims, or a dim with several axes (tokens, windows)."""
    for layer in result.layers:
        carriers = [d for dims in layer.axis_dims for d in dims]
        if any(len(dims) > 1 for dims in layer.axis_dims) or len(carriers) != len(set(carriers)):
            return True
    return False


def rf_table(result: RFResult, depth: int | None = None) -> Group:
    axes = "".join(result.axis_names)
    show_units = _moves_axes(result)
    layers = [layer for layer in result.layers if depth is None or layer.depth <= depth]

    def build(left_out: frozenset[str]) -> Table:
        table = Table(title=f"Receptive field, input {shape_text(result.input_shape)}, axes {axes}",
                      title_justify="left")
        columns = (("Layer", "left"), ("Type", "left"), ("Output shape", "left"), ("RF", "right"),
                   ("Jump", "right"), ("Start", "right")) + ((("Units", "left"),) if show_units else ())
        kept = [(column, justify) for column, justify in columns if column not in left_out]
        for column, justify in kept:
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for layer in layers:
            cells = {
                "Layer": "  " * layer.depth + layer.label + flags(layer),
                "Type": layer.type if layer.kind == "module" else f"ƒ {layer.type}",
                "Output shape": shape_text(layer.output_shape),
                "RF": rf_cell(layer),
                "Jump": axes_text(layer.jump) if layer.known else "",
                "Start": axes_text(layer.start, ", ") if layer.known else "",
                "Units": units_cell(layer, result.axis_names) if show_units else "",
            }
            table.add_row(*(cells[column] for column, _ in kept))
        return numbers_whole(table, ("RF", "Jump", "Start", "Units"))

    parts: list[Any] = [Fitted(build, ("Start", "Units", "Jump")), Text(verdict(result), style="bold")]
    if any(not layer.uniform for layer in result.layers):
        parts.append(Text("* non-uniform: units differ in span; RF is the widest, start is unit 0's", style="dim"))
    if any(not layer.aligned for layer in result.layers):
        parts.append(Text("! misaligned merge: branches with different unit grids; spans are their union", style="dim"))
    if show_units:
        parts.append(Text("Units: output dim -> the input axes it addresses (1:HW = tokens over rows and columns)",
                          style="dim"))
    parts += note_lines(result.notes)
    return Group(*parts)


def rf_steps(result: RFResult) -> list[str]:
    """Each change of the RF with the formula that gives it (the summary's ``--rf-steps``)."""
    lines = [_step_text(step) for step in result.steps()]
    header = ("RF steps (rf_out = rf_in + (k_eff-1)×jump_in, jump_out = jump_in×stride, "
              "start_out = start_in + ((k_eff-1)/2 - pad)×jump_in):")
    return [header, *lines]


def _step_text(step: RFStep) -> str:
    per_axis = [_axis_step_text(axis) for axis in step.axes]
    if len(set(per_axis)) == 1:
        axes = per_axis[0]
    else:
        axes = "; ".join(f"axis {a}: {t}" for a, t in enumerate(per_axis))
    return f"  {step.layer.name or '(model)'} ({step.layer.type}): {axes}"


def _axis_step_text(s: AxisStep) -> str:
    if s.reduced:
        return f"rf {s.rf}: every unit sees the whole axis (reduced)"
    if s.k_eff is None or s.jump_in is None or s.jump is None or s.start is None or s.start_in is None:
        return f"rf {s.rf}, jump {number(s.jump)}, start {number(s.start)}"
    shift = (s.start - s.start_in) / s.jump_in
    return (
        f"rf {s.rf} = {s.rf_in} + ({number(s.k_eff)}-1)×{number(s.jump_in)}, "
        f"jump {number(s.jump)} = {number(s.jump_in)}×{number(s.jump / s.jump_in)}, "
        f"start {number(s.start)} = {number(s.start_in)} + {number(shift)}×{number(s.jump_in)}"
    )
