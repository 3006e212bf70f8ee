"""Bytes a forward pass holds: what its ops allocate, how much is alive at once, what autograd
saves for backward.

Storages are followed, not tensors: a view or an in-place op allocates nothing, and a storage is
freed when its last tensor dies (a finalizer on it says when), exactly as on a real device. So a
meta pass tells what a CPU or GPU pass would hold, allocator rounding and the scratch space
inside one kernel aside.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch


class MemoryCounter:
    """Running totals over one pass: bytes ``allocated`` by its ops, ``live`` now and their
    ``peak``; and the storages autograd saved for backward (only while it records,
    ``mode="train"``), each with the ``tag`` (a row) current when it was saved."""

    def __init__(self) -> None:
        self.allocated = self.live = self.peak = 0
        self.tag = -1
        self._held: set[int] = set()  # storages that exist before the pass: parameters, buffers, inputs
        self._made: set[int] = set()  # storages the pass allocated, while they live
        self._kept: dict[int, tuple[int, int]] = {}  # saved storage -> (bytes, tag), while it lives
        self._open = True

    def hold(self, tensors: Iterable[torch.Tensor]) -> int:
        """Mark storages that are not the pass's to allocate; returns their bytes (each once)."""
        fresh = {key: _nbytes(t) for t in tensors if (key := _key(t)) not in self._held}
        self._held.update(fresh)
        return sum(fresh.values())

    def see(self, tensors: Iterable[torch.Tensor]) -> None:
        """An op returned ``tensors``: count the storages that are new."""
        for tensor in tensors:
            self._track(tensor)

    def saved_by_tag(self) -> dict[int, int]:
        """Bytes saved for backward that are still alive, per tag: what a backward would need."""
        out: dict[int, int] = {}
        for size, tag in self._kept.values():
            out[tag] = out.get(tag, 0) + size
        return out

    def close(self) -> None:
        """The pass is over: storages freed from now on (the caller's output) change nothing."""
        self._open = False

    def saving(self) -> AbstractContextManager[Any]:
        """Autograd's saved-tensor hooks: each storage it saves is noted once (parameters and
        inputs are held anyway), and counted as allocated if no op returned it (a dropout mask,
        BatchNorm's batch statistics)."""
        return torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def _track(self, tensor: torch.Tensor) -> None:
        key = _key(tensor)
        if key in self._held or key in self._made:
            return
        size = _nbytes(tensor)
        self._made.add(key)
        self.allocated += size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(tensor.untyped_storage(), self._freed, key, size)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _key(tensor)
        if self._open and key not in self._held:
            self._track(tensor)
            self._kept.setdefault(key, (_nbytes(tensor), self.tag))
        return tensor

    def _freed(self, key: int, size: int) -> None:
        if self._open:
            self.live -= size
            self._made.discard(key)
            self._kept.pop(key, None)


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _key(tensor: torch.Tensor) -> int:
    return int(tensor.untyped_storage()._cdata)


def _nbytes(tensor: torch.Tensor) -> int:
    return int(tensor.untyped_storage().nbytes())
