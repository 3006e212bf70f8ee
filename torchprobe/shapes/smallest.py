"""The input sizes a model accepts, per spatial axis, found by meta-device forwards.

Searching with real forwards on the meta device (shapes only, milliseconds each) is exact for any
graph, including branches and functional pooling, where inverting each layer's formula is not.
The sizes that work need not be an interval: a U-Net or HRNet that joins a downsampled-then-
upsampled branch to the input's takes only multiples of 2^k, a model with a fixed window grid
only one size. So besides the least size no layer runs out of, the sizes a whole forward passes at
are tried, and described only as far as they were tried.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn

from torchprobe.engine.faults import is_too_small
from torchprobe.engine.tracer import Tracer
from torchprobe.errors import ForwardError

SEARCH_LIMIT = 1 << 15
TRY_LIMIT = 512  # sizes that work are tried up to here (or twice the given size, if less)
TRY_BUDGET = 40_000  # every size up to the bound is tried when that costs fewer module calls (~2 s on meta)


def smallest_input_size(
    model: nn.Module,
    sizes: Sequence[torch.Size],
    index: int = 0,
    kwargs: Mapping[str, Any] | None = None,
    spatial_dims: Sequence[int] | None = None,
) -> InputSizes | None:
    """The sizes input ``index`` may take along its dims ``spatial_dims`` (batch included;
    default: all after the channel dim), searched when asked. None without a spatial axis."""
    base = sizes[index]
    dims = tuple(range(2, len(base))) if spatial_dims is None else tuple(spatial_dims)
    if not dims:
        return None
    return InputSizes(model, tuple(sizes), index, dict(kwargs or {}), dims)


@dataclass(frozen=True)
class AxisSizes:
    """The sizes one axis was tried at and those a forward passed at; ``bound``: every size
    from 1 to it was tried (None: only some near ``near``)."""

    tried: tuple[int, ...]
    passed: tuple[int, ...]
    bound: int | None
    near: int

    def text(self) -> str:
        if self.bound is not None:
            return sizes_text(self.passed, self.bound, self.near)
        return f"sizes that work near {self.near}: {', '.join(map(str, self.passed))} (not every size tried)"

    def every_size_from(self, n: int) -> bool:
        """Every size tried from ``n`` on passed: ``at least n`` is no claim a forward contradicts."""
        return all(v in self.passed for v in self.tried if v >= n) and all(v >= n for v in self.passed)

    def around(self, n: int) -> tuple[int, ...]:
        """``n`` if it passed, else the nearest passing sizes below and above it."""
        if n in self.passed:
            return (n,)
        below = [v for v in self.passed if v < n][-1:]
        above = [v for v in self.passed if v > n][:1]
        return tuple(below + above)


def sizes_text(passed: Sequence[int], bound: int, near: int | None = None) -> str:
    """Every size from 1 to ``bound`` tried, those that ``passed`` in words: an arithmetic
    progression that reaches the bound, a short list, or the ones nearest ``near``."""
    p = sorted(passed)
    steps = {b - a for a, b in zip(p, p[1:])}
    tried = f" (all sizes up to {bound} tried)"
    if len(p) >= 3 and len(steps) == 1 and p[-1] + (step := steps.pop()) > bound:
        if step == 1:
            return f"every size from {p[0]}{tried}"
        if p[0] % step == 0:
            return f"multiples of {step} from {p[0]}{tried}"
        return f"{p[0]}, {p[1]}, {p[2]}, ... (step {step}){tried}"
    if len(p) <= 8 or near is None:
        return f"only {', '.join(map(str, p))}{tried}"
    close = [v for v in p if v < near][-2:] + [v for v in p if v >= near][:2]
    return f"sizes that work near {near}: {', '.join(map(str, close))}{tried}"


class InputSizes:
    """Input ``index`` of ``sizes`` along ``dims``: the least size no layer runs out of, and the
    sizes a whole forward passes at."""

    def __init__(self, model: nn.Module, sizes: tuple[torch.Size, ...], index: int, kwargs: dict[str, Any],
                 dims: tuple[int, ...]) -> None:
        self.model, self.sizes, self.index, self.kwargs, self.dims = model, sizes, index, kwargs, dims
        self._passed: dict[tuple[int, ...], bool] = {}
        self.modules = sum(1 for _ in model.modules())  # what one forward costs, in module calls

    @property
    def given(self) -> tuple[int, ...]:
        return tuple(self.sizes[self.index][d] for d in self.dims)

    def shape_text(self, spatial: Sequence[int]) -> str:
        """The per-sample input with these spatial sizes, as ``3x224x224``."""
        return "x".join(str(s) for s in self._shape(spatial)[1:])

    def _shape(self, spatial: Sequence[int]) -> torch.Size:
        shape = list(self.sizes[self.index])
        for d, n in zip(self.dims, spatial):
            shape[d] = n
        return torch.Size(shape)

    def failure(self, spatial: Sequence[int]) -> BaseException | None:
        """The model's error at these spatial sizes, None when the forward passes."""
        trial = list(self.sizes)
        trial[self.index] = self._shape(spatial)
        try:
            Tracer(self.model, []).run(trial, self.kwargs)
        except ForwardError as error:
            return error.__cause__ or error
        return None

    def passes(self, spatial: Sequence[int]) -> bool:
        """Whether a whole forward runs (remembered)."""
        key = tuple(spatial)
        if key not in self._passed:
            self._passed[key] = self.failure(key) is None
        return self._passed[key]

    def fits(self, spatial: Sequence[int]) -> bool:
        """No layer runs out of input (other failures do not count: they are not about size)."""
        error = self.failure(spatial)
        return error is None or not is_too_small(error)

    @cached_property
    def smallest(self) -> tuple[int, ...] | None:
        """Per axis, the least size no layer runs out of; None if nothing up to 32768 fits."""
        n_axes = len(self.dims)
        upper = max(self.given)
        while not self.fits([upper] * n_axes):
            upper *= 2
            if upper > SEARCH_LIMIT:
                return None
        joint = least(lambda n: self.fits([n] * n_axes), upper)

        def along(axis: int) -> Callable[[int], bool]:
            return lambda v: self.fits([joint] * axis + [v] + [joint] * (n_axes - axis - 1))

        return tuple(least(along(a), joint) for a in range(n_axes))

    def admissible(self, near: Sequence[int]) -> tuple[AxisSizes, ...] | None:
        """Per axis, the sizes a forward passes at, tried around ``near``: the multiples of 64,
        32, ... 1 nearest to it, then every size up to a bound if the model is small enough for
        that many forwards (decided by its size, never by a clock: the answer is reproducible).
        Equal sizes are tried together (one set for every axis). None when an axis has no size
        that passed."""
        n_axes, bound = len(self.dims), min(TRY_LIMIT, max(64, 2 * max(near)))
        square = len(set(near)) == 1
        joint = self._axis(lambda n: [n] * n_axes, max(near), None)
        if not joint.passed:
            return None
        exhaustive = self.modules * bound * (1 if square else 1 + n_axes) <= TRY_BUDGET
        if exhaustive:
            joint = self._axis(lambda n: [n] * n_axes, max(near), bound)
        if square:
            return (joint,) * n_axes
        held = [joint.around(n)[0] for n in near]

        def varying(axis: int) -> Callable[[int], list[int]]:
            return lambda v: held[:axis] + [v] + held[axis + 1:]

        axes = tuple(self._axis(varying(a), near[a], bound if exhaustive else None) for a in range(n_axes))
        return axes if all(axis.passed for axis in axes) else None

    def _axis(self, spatial: Callable[[int], list[int]], near: int, bound: int | None) -> AxisSizes:
        tried = range(1, bound + 1) if bound is not None else near_multiples(near)
        passed = tuple(sorted(v for v in tried if self.passes(spatial(v))))
        return AxisSizes(tuple(sorted(tried)), passed, bound, near)


def near_multiples(n: int) -> list[int]:
    """The multiples of 64, 32, ... 1 just below and above ``n``: sizes a model that takes only
    multiples of 2^k takes, in a dozen forwards."""
    found: list[int] = []
    for step in (64, 32, 16, 8, 4, 2, 1):
        for v in (n // step * step, n // step * step + step):
            if v > 0 and v not in found:
                found.append(v)
    return found


def least(fits: Callable[[int], bool], upper: int) -> int:
    """Smallest ``n`` in ``1..upper`` with ``fits(n)``, given ``fits(upper)`` and monotonicity."""
    low = 0  # fits(low) is taken as False
    while upper - low > 1:
        middle = (low + upper) // 2
        if fits(middle):
            upper = middle
        else:
            low = middle
    return upper
