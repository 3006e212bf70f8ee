"""Argument checks of ``FailureAnalyzer``: one clear one-line error naming what is wrong (TypeError
for a wrong kind of value, ValueError for a wrong value), and what processes must agree on to sync."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch

from torchprobe.engine.torch_utils import describe_value, dtype_name
from torchprobe.failures.state import PROBLEMS


def size(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (Python or numpy integers; not bool)."""
    wanted = f"{name} must be an integer >= {minimum}, got {value!r}"
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{wanted} ({kind(value)})") from None
    if number < minimum:
        raise ValueError(wanted)
    return number


def class_names(names: Any, num_classes: int) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise TypeError(f"class_names must be a sequence of {num_classes} names, got {names!r} ({kind(names)})")
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names for {num_classes} classes")
    return [str(n) for n in names]


def kind(value: Any) -> str:
    name = type(value).__name__
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def not_meta(**tensors: Any) -> None:
    """Meta tensors have shapes but no values: refuse them before anything is recorded."""
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_meta:
            raise ValueError(f"{name} are on the meta device (shapes without values): FailureAnalyzer needs real "
                             "values; run the model on the CPU or an accelerator")


def batch_size(outputs: Any, targets: Any, inputs: Any, num_classes: int, with_inputs: bool | None,
               kept: torch.Tensor | None) -> int:
    """The batch size, once outputs, targets and inputs agree with each other and with earlier
    batches (``with_inputs``: whether they had inputs; ``kept``: the inputs kept from them)."""
    c = num_classes
    not_meta(outputs=outputs, targets=targets, inputs=inputs)
    if not isinstance(outputs, torch.Tensor) or not outputs.is_floating_point() or outputs.shape[1:] != (c,):
        raise ValueError(f"outputs must be a float tensor of shape (batch, {c}), got {describe_value(outputs)}")
    n = outputs.shape[0]
    if not is_index_tensor(targets) or tuple(targets.shape) != (n,):
        raise ValueError(f"targets must be an integer tensor of class indices of shape ({n},), "
                         f"got {describe_value(targets)} (one-hot or soft targets: pass .argmax(1))")
    if with_inputs is not None and with_inputs != (inputs is not None):
        given = "given" if with_inputs else "not given"
        raise ValueError(f"inputs were {given} with the earlier batches: give them with every batch or with none")
    if inputs is None:
        return n
    if not isinstance(inputs, torch.Tensor) or inputs.dim() == 0 or inputs.shape[0] != n:
        raise ValueError(f"inputs must be a tensor with the batch size {n} first, got {describe_value(inputs)}")
    if kept is not None and (inputs.shape[1:] != kept.shape[1:] or inputs.dtype != kept.dtype):
        raise ValueError(f"inputs are {describe_value(inputs)}, earlier batches had {dtype_name(kept)} rows "
                         f"of shape {tuple(kept.shape[1:])}")
    return n


def batch_indices(
    indices: torch.Tensor | Sequence[int] | None, n: int, first: int, device: torch.device
) -> torch.Tensor:
    """The batch's dataset indices, on ``device``; by default ``first .. first + n - 1``."""
    if indices is None:
        return torch.arange(first, first + n, device=device)
    not_meta(indices=indices)
    index = torch.as_tensor(indices)
    if not is_index_tensor(index) or tuple(index.shape) != (n,):
        raise ValueError(f"indices must be {n} integers, got {describe_value(index)}")
    return index.to(device, torch.int64, non_blocking=True, copy=True)


def raise_problems(problems: torch.Tensor, where: object) -> None:
    found = [name for name, count in zip(PROBLEMS, problems.tolist()) if count]
    if found:
        raise ValueError(f"batches on {where} had {' and '.join(found)} (checked without waiting for the device, "
                         "so reported at this read); reset() before adding more batches")


def is_index_tensor(value: Any) -> bool:
    if not isinstance(value, torch.Tensor):
        return False
    return not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)


# -- what sync() checks first: one fixed-size row per process ----------------------------------------

MAX_DIMS = 16  # dimensions of one input (without the batch) that a row describes
DTYPES = sorted({v for v in vars(torch).values() if isinstance(v, torch.dtype)}, key=str)
NO_BATCH, NO_INPUTS, INPUTS = -1, 0, 1
AGREEMENT = ["num_classes", "keep", "merged", "inputs", "dtype", "ndim"]  # then MAX_DIMS sizes
ROW = len(AGREEMENT) + MAX_DIMS


def agreement_row(num_classes: int, keep: int, merged: bool, inputs: bool | None,
                  like: torch.Tensor | None) -> list[int]:
    """What this process's analyzer must share with the others before anything variable-size travels."""
    mode = NO_BATCH if inputs is None else INPUTS if inputs else NO_INPUTS
    shape = list(like.shape[1:]) if like is not None else []
    dtype = DTYPES.index(like.dtype) if like is not None else -1
    dims = (shape + [-1] * MAX_DIMS)[:MAX_DIMS]
    return [num_classes, keep, int(merged), mode, dtype, len(shape) if like is not None else -1, *dims]


def disagreement(rows: list[list[int]]) -> str | None:
    """The message every process raises when the rows (one per rank) cannot be merged, else None."""
    def each(values: list[Any]) -> str:
        return ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))

    for name in ("num_classes", "keep"):
        values = [row[AGREEMENT.index(name)] for row in rows]
        if len(set(values)) > 1:
            return (f"sync(): the processes' analyzers disagree on {name} ({each(values)}); create every "
                    "process's FailureAnalyzer with the same num_classes and keep")
    merged = [row[AGREEMENT.index("merged")] for row in rows]
    if len(set(merged)) > 1:
        holding = ", ".join(f"rank {r}" for r, m in enumerate(merged) if m)
        others = ", ".join(f"rank {r}" for r, m in enumerate(merged) if not m)
        return (f"sync(): {holding} holds the merged state from an earlier sync(), {others} does not; "
                "call sync() on every process, and reset() or end_epoch() on every process alike")
    given = [row for row in rows if row[AGREEMENT.index("inputs")] != NO_BATCH]
    deep = [row[AGREEMENT.index("ndim")] for row in given if row[AGREEMENT.index("ndim")] > MAX_DIMS]
    if deep:
        return f"sync(): inputs may have at most {MAX_DIMS} dimensions besides the batch, got {deep[0]}"
    if len({tuple(row[3:]) for row in given}) > 1:
        return f"sync(): the processes disagree on the inputs they were given ({each([describe(r) for r in rows])})"
    return None


def describe(row: list[int]) -> str:
    mode, dtype, ndim = row[3:6]
    if mode == NO_BATCH:
        return "no batches"
    if mode == NO_INPUTS:
        return "none"
    return f"{str(DTYPES[dtype]).removeprefix('torch.')} rows of shape {tuple(row[6:6 + ndim])}"


def like_of(row: list[int], device: torch.device) -> torch.Tensor | None:
    """An empty batch shaped like the inputs a row describes (None: no inputs described)."""
    mode, dtype, ndim = row[3:6]
    if mode != INPUTS or ndim < 0:
        return None
    return torch.empty((0, *row[6:6 + ndim]), dtype=DTYPES[dtype], device=device)
