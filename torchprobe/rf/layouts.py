"""Input layouts: which dims of an input are channels or features and which are spatial axes.

One letter per dim, batch excluded: ``C`` is a channel or feature dim, any other letter a spatial
axis named by it in reports (``CHW`` an image, ``LC`` tokens with features, ``T`` a raw signal,
``THWC`` a channels-last video). Without a layout an input of rank >= 2 is ``C`` followed by its
spatial axes (``L``, ``HW``, ``DHW``), and a rank-1 input is features only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torchprobe.errors import UsageError

FEATURE = "C"
DEFAULT_AXES = {1: "L", 2: "HW", 3: "DHW"}

LayoutArg = str | Sequence[str] | None


@dataclass(frozen=True)
class InputLayout:
    """A parsed layout of one input (batch excluded)."""

    letters: str

    @property
    def spatial(self) -> tuple[int, ...]:
        """The spatial dims, counted without the batch dim, in order."""
        return tuple(i for i, letter in enumerate(self.letters) if letter != FEATURE)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.letters[i] for i in self.spatial)


def default_layout(rank: int) -> str:
    if rank < 2:
        return FEATURE * rank
    spatial = DEFAULT_AXES.get(rank - 1) or "".join(chr(ord("P") + i) for i in range(rank - 1))
    return FEATURE + spatial


def input_layout(layout: LayoutArg, shapes: Sequence[Sequence[int]], index: int) -> InputLayout:
    """The layout of input ``index`` (``shapes`` exclude the batch dim): ``layout`` is one string
    for that input, one per input, or None for the default."""
    if layout is None:
        return InputLayout(default_layout(len(shapes[index])))
    if isinstance(layout, str):
        letters = layout
    else:
        layouts = list(layout)
        if len(layouts) != len(shapes):
            raise UsageError(f"{len(layouts)} layouts for {len(shapes)} inputs: give one per input")
        for i, (each, shape) in enumerate(zip(layouts, shapes)):
            _check(each, shape, i)
        letters = layouts[index]
    _check(letters, shapes[index], index)
    return InputLayout(letters)


def _check(letters: str, shape: Sequence[int], index: int) -> None:
    if not isinstance(letters, str) or not letters.isalpha() or not letters.isupper():
        raise UsageError(f"layout {letters!r} must be capital letters, one per input dim (C for channels)")
    if len(letters) != len(shape):
        raise UsageError(f"layout {letters!r} has {len(letters)} letters but input {index} has {len(shape)} dims "
                         f"{tuple(shape)} (batch excluded): give one letter per dim")
    spatial = [letter for letter in letters if letter != FEATURE]
    twice = sorted({letter for letter in spatial if spatial.count(letter) > 1})
    if twice:
        raise UsageError(f"layout {letters!r} names axis {', '.join(twice)} twice")
