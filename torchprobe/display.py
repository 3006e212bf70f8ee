"""How results show themselves: rich in terminals, plain text for ``str()``.

Results are data; :mod:`torchprobe.render` formats them. The renderer imports the result types,
so the results reach it through this mixin's lazy import, the one import cycle torchprobe has.
"""

from __future__ import annotations

from typing import Any


class Displayable:
    """Mixin for result types: ``console.print(result)`` draws its table, ``str(result)`` gives it
    as plain text of the width golden files use."""

    def __rich__(self) -> Any:
        from torchprobe.render import renderable  # lazy: torchprobe.render imports the results

        return renderable(self)

    def __str__(self) -> str:
        from torchprobe.render import render_text  # lazy: torchprobe.render imports the results

        return render_text(self)
