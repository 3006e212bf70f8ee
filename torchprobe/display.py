"""How results show themselves: rich in terminals, plain text for ``str()``, the same table in
notebooks (IPython's ``_repr_html_`` and ``_repr_pretty_``).

Results are data; :mod:`torchprobe.render` formats them. The renderer imports the result types,
so the results reach it through this mixin's lazy import, the one import cycle torchprobe has.
"""

from __future__ import annotations

from typing import Any


class Displayable:
    """Mixin for result types: ``console.print(result)`` draws its table, ``str(result)`` gives it
    as plain text of the width golden files use, and a notebook shows it as HTML (or that text)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # IPython takes the first class in the MRO that has _repr_pretty_ or __repr__, and
        # dataclasses write a __repr__ into each result class: put the table first there too
        cls._repr_pretty_ = Displayable._repr_pretty_  # type: ignore[method-assign]

    def __rich__(self) -> Any:
        from torchprobe.render import renderable  # lazy: torchprobe.render imports the results

        return renderable(self)

    def __str__(self) -> str:
        from torchprobe.render import render_text  # lazy: torchprobe.render imports the results

        return render_text(self)

    def _repr_html_(self) -> str:
        from torchprobe.render import render_html  # lazy: torchprobe.render imports the results

        return render_html(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"<{type(self).__name__}>" if cycle else str(self))
