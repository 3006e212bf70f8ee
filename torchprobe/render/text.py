"""Plain-text building blocks of every table: numbers, shapes, byte counts, notes."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from torchprobe.notes import Note

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


def shape_text(shape: Sequence[int] | None) -> str:
    return "-" if shape is None else "[" + ", ".join(str(s) for s in shape) + "]"


def pixels_text(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}..{last}"


def count(n: int) -> str:
    return f"{n:,}"


def si(n: int) -> str:
    """A count with a unit: 9408 -> "9.41 k", 3628146688 -> "3.63 G" (under 1,000: as it is)."""
    for unit, scale in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


def note_lines(notes: Iterable[Note]) -> list[Text]:
    """``note: ...`` per note; the fallback to real tensors reads as a sentence of its own."""
    return [Text(n.message if n.code == "real_fallback" else f"note: {n.message}", style="yellow") for n in notes]


def render_text(renderable: Any, width: int = RENDER_WIDTH) -> str:
    """Plain text of a rich renderable, the same on every terminal (golden files use it)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, record=True)
    console.print(renderable)
    return console.export_text()


HTML_FORMAT = ('<pre style="font-family: Menlo, \'DejaVu Sans Mono\', Consolas, monospace; line-height: 1.25; '
               'white-space: pre;">{code}</pre>')


def render_html(renderable: Any, width: int = RENDER_WIDTH) -> str:
    """The same table as an HTML fragment with inline colours (a notebook cell's output)."""
    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system="truecolor", record=True)
    console.print(renderable)
    return console.export_html(inline_styles=True, code_format=HTML_FORMAT)


class Fitted:
    """A table that fits the width it is printed at: words wrap, numbers are never cut (see
    :func:`numbers_whole`); when the numbers alone are too wide, the ``optional`` columns go,
    least important first, and a line says which."""

    def __init__(self, build: Callable[[frozenset[str]], Table], optional: Sequence[str] = ()) -> None:
        self.build = build  # the table without the columns named
        self.optional = tuple(optional)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        left_out: list[str] = []
        table = self.build(frozenset())
        for column in self.optional:
            if _needed(table) <= options.max_width:
                break
            left_out.append(column)
            table = self.build(frozenset(left_out))
        yield table
        if left_out:
            yield Text(f"(left out to fit {options.max_width} characters: {', '.join(left_out)})", style="dim")


TEXT_WIDTH = 16  # what a column of words is given before optional columns go, if its words are longer


def _needed(table: Table) -> int:
    """Characters the table needs: numbers whole, words at up to TEXT_WIDTH a line, the borders."""
    width = 1
    for column in table.columns:
        longest = max([len(str(cell)) for cell in column.cells] + [len(str(column.header))])
        width += 3 + (column.min_width or longest if column.no_wrap else min(longest, TEXT_WIDTH))
    return width


def numbers_whole(table: Table, numeric: Iterable[str]) -> Table:
    """Columns named in ``numeric`` keep their widest cell whole; the others wrap their words."""
    numeric = set(numeric)
    for column in table.columns:
        cells = [str(cell) for cell in column.cells] + [str(column.header), str(column.footer or "")]
        if column.header in numeric:
            column.no_wrap, column.min_width = True, max(len(cell) for cell in cells)
        else:
            column.no_wrap, column.overflow = False, "fold"
    return table
