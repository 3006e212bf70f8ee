"""What the RF probe knows about one tensor: a span map per input spatial axis, and which tensor
dimension (counted from the end, so that broadcasting lines up) carries each axis."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from torchprobe.rf.axis import AxisMap
from torchprobe.rf.support import Support, fused


@dataclass(frozen=True)
class TensorRF:
    """Receptive field of every unit of a tensor, per input spatial axis.

    ``dims[a]`` is the (negative) tensor dimension that indexes axis ``a``, or None once the axis
    was reduced away (pooled globally, flattened, contracted by a Linear): then every unit spans
    the same interval and ``axes[a]`` is a constant map. ``aligned`` turns False for good once two
    branches whose unit grids disagree were merged.
    """

    axes: tuple[AxisMap, ...]
    dims: tuple[int | None, ...]
    aligned: bool = True

    @classmethod
    def of_input(cls, spatial_sizes: Sequence[int]) -> TensorRF:
        n = len(spatial_sizes)
        return cls(tuple(AxisMap.identity(s) for s in spatial_sizes), tuple(range(-n, 0)))

    def units(self, axis: int, shape: Sequence[int]) -> int:
        """How many units the tensor has along ``axis`` (1 once reduced)."""
        dim = self.dims[axis]
        return 1 if dim is None or -dim > len(shape) else shape[dim]

    def map_axes(self, fn: Callable[[int, AxisMap, int | None], tuple[AxisMap, int | None]]) -> TensorRF:
        """Apply ``fn(axis, map, dim) -> (map, dim)`` to every axis."""
        pairs = [fn(a, m, d) for a, (m, d) in enumerate(zip(self.axes, self.dims))]
        return replace(self, axes=tuple(p[0] for p in pairs), dims=tuple(p[1] for p in pairs))

    @property
    def factors(self) -> list[tuple[Support, ...]]:
        """The support as terms: ``factors[t][a]`` (see :mod:`torchprobe.rf.support`)."""
        return list(zip(*(m.terms for m in self.axes)))

    def fused(self) -> TensorRF:
        """The same state with its support in fewest terms."""
        if all(len(m.terms) == 1 and m.terms[0].reaches().any() for m in self.axes):
            return self  # one term that reaches some unit: already fused (the common case)
        terms = fused(self.factors)
        return replace(self, axes=tuple(m.with_terms(t[a] for t in terms) for a, m in enumerate(self.axes)))

    def reduced(self, axis: int, keep_dim: bool = False) -> tuple[AxisMap, int | None]:
        """``(map, dim)`` of ``axis`` once every unit along it is combined into one."""
        return self.axes[axis].reduced(), (self.dims[axis] if keep_dim else None)

    def with_dims(self, remap: Callable[[int], int | None]) -> TensorRF:
        """Move axes to new dims (``remap`` takes and returns negative dims); None reduces."""

        def move(a: int, m: AxisMap, d: int | None) -> tuple[AxisMap, int | None]:
            if d is None:
                return m, None
            new = remap(d)
            return (m, new) if new is not None else self.reduced(a)

        return self.map_axes(move)


@dataclass(frozen=True)
class UnknownRF:
    """No rule covers an op on the path from the input, or its rule failed (``error``):
    everything downstream is unknown."""

    op: str
    where: str
    error: str = ""

    @property
    def reason(self) -> str:
        where = self.where or "<root>"
        if self.error:
            return f"rule for op {self.op!r} failed (called in {where}): {self.error}"
        return f"no receptive-field rule for op {self.op!r} (called in {where})"


RFState = TensorRF | UnknownRF
