"""The smallest input a model accepts, per spatial axis, found by meta-device forwards.

Searching with real forwards on the meta device (shapes only, milliseconds each) is exact for any
graph, including branches and functional pooling, where inverting each layer's formula is not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from torchprobe.engine.faults import is_too_small
from torchprobe.engine.tracer import Tracer
from torchprobe.errors import ForwardError

SEARCH_LIMIT = 1 << 15


def smallest_input_size(
    model: nn.Module,
    sizes: Sequence[torch.Size],
    index: int = 0,
    kwargs: Mapping[str, Any] | None = None,
    spatial_dims: Sequence[int] | None = None,
) -> tuple[int, ...] | None:
    """Per spatial axis of input ``index`` (its dims ``spatial_dims``, batch included; default: all
    after the channel dim), the least size for which no layer runs out of input (other failures do
    not count: they are not about size). None if nothing up to 32768 fits."""
    base = sizes[index]
    dims = list(range(2, len(base))) if spatial_dims is None else list(spatial_dims)
    n_axes = len(dims)
    if n_axes < 1:
        return None

    def fits(spatial: Sequence[int]) -> bool:
        trial = list(sizes)
        shape = list(base)
        for d, n in zip(dims, spatial):
            shape[d] = n
        trial[index] = torch.Size(shape)
        try:
            Tracer(model, []).run(trial, kwargs)
        except ForwardError as error:
            return not is_too_small(error.__cause__ or error)
        return True

    upper = max(base[d] for d in dims)
    while not fits([upper] * n_axes):
        upper *= 2
        if upper > SEARCH_LIMIT:
            return None
    joint = least(lambda n: fits([n] * n_axes), upper)
    def along(axis: int) -> Callable[[int], bool]:
        return lambda v: fits([joint] * axis + [v] + [joint] * (n_axes - axis - 1))

    return tuple(least(along(a), joint) for a in range(n_axes))


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
