"""The analyzer's state, and how processes combine each part of it.

Like torchmetrics' ``add_state(..., dist_reduce_fx=...)``, every piece declares its reduction:
``"sum"`` (counts that only add up: one all-reduce of its parts) or ``"gather"`` (rows that every
process contributes: gathered, then ``combine``d). ``sync()`` runs one loop over them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, TypeVar

import numpy as np
import torch

from torchprobe.failures.records import FailureList

RESOLUTION = 3600  # equal calibration bins counted; calibration_error(n_bins) is exact for its divisors
Ranking = Literal["loss", "confidence"]
RANKINGS: tuple[Ranking, ...] = ("loss", "confidence")
PROBLEMS = ("targets below 0", "targets >= num_classes", "NaN (or +inf) outputs")
Reduction = Literal["sum", "gather"]
S = TypeVar("S", bound="SyncedState")


class SyncedState(Protocol):
    """A part of the state that processes can merge: its tensors, and how to rebuild it from them."""

    reduce: ClassVar[Reduction]

    def parts(self) -> list[torch.Tensor]: ...

    def from_parts(self: S, parts: Sequence[torch.Tensor]) -> S: ...


@dataclass
class Totals:
    """Counts over the collected samples (CPU): they only add up, so processes merge them by sum."""

    confusion: np.ndarray  # int64 (C*C,), at true*C + predicted
    bins: np.ndarray  # int64 (2*RESOLUTION,), at bin*2 + correct
    bin_confidence: np.ndarray  # float64 (RESOLUTION,): summed top-class probability per bin
    self_confidence: np.ndarray  # float64 (C,): summed p(true) per true class

    reduce: ClassVar[Reduction] = "sum"

    @classmethod
    def zeros(cls, num_classes: int) -> Totals:
        return cls(np.zeros(num_classes**2, np.int64), np.zeros(2 * RESOLUTION, np.int64),
                   np.zeros(RESOLUTION), np.zeros(num_classes))

    def add(self, code: np.ndarray, confidence: np.ndarray, target_logp: np.ndarray, num_classes: int) -> None:
        true, predicted = np.divmod(code, num_classes)
        if len(self.confusion) <= 4 * len(code):
            self.confusion += np.bincount(code, minlength=len(self.confusion))
        else:  # many classes: no temporary as large as the matrix (8*C^2 bytes)
            cells, counts = np.unique(code, return_counts=True)
            self.confusion[cells] += counts
        confidence = confidence.astype(np.float64)
        fine = np.minimum((confidence * RESOLUTION).astype(np.int64), RESOLUTION - 1)  # exact for float32
        self.bins += np.bincount(fine * 2 + (true == predicted), minlength=2 * RESOLUTION)
        self.bin_confidence += np.bincount(fine, confidence, minlength=RESOLUTION)
        self.self_confidence += np.bincount(true, np.exp(target_logp).astype(np.float64), minlength=num_classes)

    def parts(self) -> list[torch.Tensor]:
        return [torch.from_numpy(a) for a in (self.confusion, self.bins, self.bin_confidence, self.self_confidence)]

    def from_parts(self, parts: Sequence[torch.Tensor]) -> Totals:
        return Totals(*(p.cpu().numpy() for p in parts))


@dataclass
class Counters:
    """Samples, batches given without indices, and batches with each of PROBLEMS: they add up."""

    samples: int
    unindexed_batches: int
    problems: torch.Tensor | None  # int64 (len(PROBLEMS),), on the batches' device; None on the CPU

    reduce: ClassVar[Reduction] = "sum"

    def parts(self) -> list[torch.Tensor]:
        problems = torch.zeros(len(PROBLEMS), dtype=torch.int64) if self.problems is None else self.problems.cpu()
        return [torch.tensor([self.samples, self.unindexed_batches]), problems]

    def from_parts(self, parts: Sequence[torch.Tensor]) -> Counters:
        counts, problems = (p.cpu() for p in parts)
        return Counters(int(counts[0]), int(counts[1]), problems)


@dataclass
class Kept:
    """The ``k`` worst failures by each key of RANKINGS, with their inputs: the only part whose size
    depends on the input size. Empty slots and correct samples have key ``-inf``."""

    key: torch.Tensor  # float32 (rankings, k)
    index: torch.Tensor  # int64 (rankings, k)
    inputs: torch.Tensor  # (rankings * k, *input_shape), ranking-major

    reduce: ClassVar[Reduction] = "gather"

    @classmethod
    def empty(cls, k: int, like: torch.Tensor) -> Kept:
        r = len(RANKINGS)
        key = torch.full((r, k), -math.inf, device=like.device)
        index = torch.zeros((r, k), dtype=torch.int64, device=like.device)
        return cls(key, index, like.new_zeros((r * k, *like.shape[1:])))

    def merge(self, key: torch.Tensor, index: torch.Tensor, inputs: torch.Tensor) -> Kept:
        """The top ``k`` of these and a batch (``key``: (rankings, batch)); the new inputs are
        gathered from ``cat(kept, batch)``, or, for a batch larger than the kept set, from
        ``cat(kept, the k rows per ranking that may enter)``."""
        r, k = self.key.shape
        key, index = torch.cat([self.key, key], 1), torch.cat([self.index, index.expand(r, -1)], 1)
        key, order = top(k, key, index)
        kept = order < k
        first = torch.arange(0, r * k, k, device=order.device).view(r, 1)  # each ranking's first kept row
        if len(inputs) > r * k:  # gather the k rows per ranking that may enter first
            inputs = inputs.index_select(0, (order - k).clamp(min=0).flatten())
            rows = first + torch.where(kept, order, torch.arange(r * k, r * k + k, device=order.device))
        else:
            rows = order + torch.where(kept, first, r * k - k)
        inputs = torch.cat([self.inputs, inputs]).index_select(0, rows.flatten())  # rows of cat(kept, batch)
        return Kept(key, index.gather(1, order), inputs)

    @classmethod
    def combine(cls, parts: Sequence[Kept]) -> Kept:
        """The top ``k`` of several processes' kept sets: exactly the top ``k`` of all their samples."""
        r, k = parts[0].key.shape
        key, index = torch.cat([p.key for p in parts], 1), torch.cat([p.index for p in parts], 1)
        key, order = top(k, key, index)
        part, position = order.div(k, rounding_mode="floor"), order.remainder(k)
        rows = part * (r * k) + torch.arange(r, device=order.device)[:, None] * k + position
        inputs = torch.cat([p.inputs for p in parts]).index_select(0, rows.flatten())
        return cls(key, index.gather(1, order), inputs)

    def inputs_by(self, by: Ranking) -> torch.Tensor:
        k = self.key.shape[1]
        return self.inputs[RANKINGS.index(by) * k:][:k]

    def parts(self) -> list[torch.Tensor]:
        return [self.key, self.index, self.inputs]

    def from_parts(self, parts: Sequence[torch.Tensor]) -> Kept:
        return Kept(*parts)


def top(k: int, key: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the first ``k`` keys and their positions, by key (descending), then index, then
    position: a total order, so top-k sets kept per batch or per process merge into exactly the
    top-k of all, ties included."""
    by_index = torch.argsort(index, dim=1, stable=True)
    ranked = torch.sort(key.gather(1, by_index), dim=1, descending=True, stable=True)
    return ranked.values[:, :k], by_index.gather(1, ranked.indices[:, :k])


@dataclass
class Records:
    """Per-sample columns in arrival order, on the CPU: the failures once collected."""

    index: np.ndarray
    true: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray  # float32: p(predicted)
    loss: np.ndarray  # float32: -log p(true)

    reduce: ClassVar[Reduction] = "gather"

    @classmethod
    def empty(cls) -> Records:
        ints, reals = np.empty(0, np.int64), np.empty(0, np.float32)
        return cls(ints, ints, ints, reals, reals)

    def columns(self) -> tuple[np.ndarray, ...]:
        return self.index, self.true, self.predicted, self.confidence, self.loss

    def take(self, rows: np.ndarray) -> Records:
        return Records(*(c[rows] for c in self.columns()))

    def __len__(self) -> int:
        return len(self.index)

    def failures(self, rows: np.ndarray | None = None, inputs: torch.Tensor | None = None) -> FailureList:
        """The records at ``rows`` (all without), read lazily: no copy of the columns."""
        return FailureList(self.columns(), inputs, rows)

    def by_index(self) -> np.ndarray:
        """The rows by index, then arrival."""
        return np.argsort(self.index, kind="stable")

    def ranked(self, key: np.ndarray, k: int | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """The ``k`` rows (of ``rows``, default all) of highest ``key`` (all without ``k``), highest
        first, ties by index, then arrival. For a few of many, only those that reach the ``k``-th
        key are sorted."""
        n = len(key) if rows is None else len(rows)
        if k is not None and k < n:
            if k <= 0:
                return np.empty(0, np.int64)
            keys = key if rows is None else key[rows]
            threshold = np.partition(keys, n - k)[n - k]  # the k-th highest
            reach = np.flatnonzero(keys >= threshold)  # ties at the threshold included, in arrival order
            rows = reach if rows is None else rows[reach]
        if rows is None:
            return np.lexsort((self.index, -key))[:k]
        return rows[np.lexsort((self.index[rows], -key[rows]))][:k]

    def parts(self) -> list[torch.Tensor]:
        """Two tensors (integer columns, real columns), so rows travel in two collectives."""
        ints = np.stack([self.index, self.true, self.predicted], 1)
        return [torch.from_numpy(ints), torch.from_numpy(np.stack([self.confidence, self.loss], 1))]

    def from_parts(self, parts: Sequence[torch.Tensor]) -> Records:
        ints, reals = (p.cpu().numpy() for p in parts)
        return Records(ints[:, 0], ints[:, 1], ints[:, 2], reals[:, 0], reals[:, 1])

    @classmethod
    def combine(cls, parts: Sequence[Records]) -> Records:
        """Rows of all parts, in order: batches as they are collected, processes in rank order."""
        return cls(*(np.concatenate(column) for column in zip(*(p.columns() for p in parts))))


@dataclass
class SeenRuns:
    """The sample indices seen, as sorted disjoint ``[start, stop)`` rows."""

    rows: np.ndarray

    reduce: ClassVar[Reduction] = "gather"

    @classmethod
    def empty(cls) -> SeenRuns:
        return cls(np.empty((0, 2), np.int64))

    def add(self, indices: np.ndarray) -> SeenRuns:
        return SeenRuns(union_runs(self.rows, runs_of(np.unique(indices))))

    def parts(self) -> list[torch.Tensor]:
        return [torch.from_numpy(self.rows)]

    def from_parts(self, parts: Sequence[torch.Tensor]) -> SeenRuns:
        return SeenRuns(parts[0].cpu().numpy())

    @classmethod
    def combine(cls, parts: Sequence[SeenRuns]) -> SeenRuns:
        return cls(union_runs(np.concatenate([p.rows for p in parts]), np.empty((0, 2), np.int64)))


def runs_of(values: np.ndarray) -> np.ndarray:
    """Sorted distinct integers as [start, stop) rows: ``arange(n)`` is one row, whatever ``n``."""
    if not len(values):
        return np.empty((0, 2), np.int64)
    breaks = np.flatnonzero(np.diff(values) != 1) + 1
    return np.stack([values[np.r_[0, breaks]], values[np.r_[breaks - 1, len(values) - 1]] + 1], 1)


def union_runs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    rows = np.concatenate([a, b])
    if not len(rows):
        return rows
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    reach = np.maximum.accumulate(rows[:, 1])
    starts = np.flatnonzero(np.r_[True, rows[1:, 0] > reach[:-1]])
    return np.stack([rows[starts, 0], np.maximum.reduceat(rows[:, 1], starts)], 1)


def in_runs(values: np.ndarray, runs: np.ndarray) -> np.ndarray:
    row = np.searchsorted(runs[:, 0], values, side="right") - 1
    return (row >= 0) & (values < runs[np.maximum(row, 0), 1]) if len(runs) else np.zeros(len(values), bool)
