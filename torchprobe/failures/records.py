"""What the analyzer reports: one failure, one closed epoch."""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import torch


@dataclass(frozen=True)
class Failure:
    """One misclassified sample. ``confidence`` is the probability of the (wrong) prediction,
    ``loss`` the cross-entropy ``-log p(true)``; ``input`` is set for the kept worst ones only."""

    index: int
    true: int
    predicted: int
    confidence: float
    loss: float
    input: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @property
    def self_confidence(self) -> float:
        """The probability of the given label (cleanlab's word): low means "probably mislabelled"."""
        return math.exp(-self.loss)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "true": self.true, "predicted": self.predicted,
                "confidence": json_float(self.confidence), "loss": json_float(self.loss)}


class FailureList(Sequence[Failure]):
    """Failures as a read-only sequence over their columns (index, true, predicted, confidence,
    loss), taken at ``rows`` (all, in order, without): ``len``, indexing, slices (lists),
    iteration and ``==`` (with lists too) as a list of :class:`Failure`, but a ``Failure`` object
    is made only for each row read, so millions of failures cost 8 bytes each (the row numbers),
    not a few hundred. ``inputs``: the kept inputs of the first rows."""

    __slots__ = ("_columns", "_inputs", "_rows")
    CHUNK = 4096  # rows converted to Python numbers at once while iterating

    def __init__(self, columns: Sequence[np.ndarray], inputs: torch.Tensor | None = None,
                 rows: np.ndarray | None = None) -> None:
        self._columns = tuple(columns)  # the arrays are never written in place: a snapshot
        self._inputs = inputs
        self._rows = rows

    def __len__(self) -> int:
        return len(self._columns[0]) if self._rows is None else len(self._rows)

    @overload
    def __getitem__(self, item: int) -> Failure: ...

    @overload
    def __getitem__(self, item: slice) -> list[Failure]: ...

    def __getitem__(self, item: int | slice) -> Failure | list[Failure]:
        if isinstance(item, slice):
            return [self[i] for i in range(*item.indices(len(self)))]
        n = len(self)
        i = item + n if item < 0 else item
        if not 0 <= i < n:
            raise IndexError(f"failure {item} of {n}")
        row = i if self._rows is None else int(self._rows[i])
        index, true, predicted, confidence, loss = (c[row].item() for c in self._columns)
        return Failure(index, true, predicted, confidence, loss, self._input(i))

    def _input(self, i: int) -> torch.Tensor | None:
        return self._inputs[i] if self._inputs is not None and i < len(self._inputs) else None

    def _column(self, c: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        column = self._columns[c]
        return column[start:stop] if self._rows is None else column[self._rows[start:stop]]

    def __iter__(self) -> Iterator[Failure]:
        for start in range(0, len(self), self.CHUNK):
            rows = zip(*(self._column(c, start, start + self.CHUNK).tolist() for c in range(5)))
            for i, (index, true, predicted, confidence, loss) in enumerate(rows, start):
                yield Failure(index, true, predicted, confidence, loss, self._input(i))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FailureList):
            return len(self) == len(other) and all(np.array_equal(self._column(c), other._column(c)) for c in range(5))
        if isinstance(other, (list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as a list's

    def __repr__(self) -> str:
        shown = ", ".join(repr(f) for f in self[:3])
        return f"[{shown}]" if len(self) <= 3 else f"[{shown}, ... ({len(self):,} failures)]"

    @property
    def indices(self) -> np.ndarray:
        """The failures' sample indices (int64), in this order."""
        return self._column(0)

    def to_dicts(self) -> list[dict[str, Any]]:
        """``[f.to_dict() for f in self]``, column by column (no Failure objects)."""
        index, true, predicted = (self._column(c).tolist() for c in range(3))
        reals = []
        for c in (3, 4):
            column = self._column(c)
            values = column.astype(np.float64).tolist()
            for i in np.flatnonzero(~np.isfinite(column)).tolist():  # JSON has no NaN or infinity
                values[i] = None
            reals.append(values)
        collecting = gc.isenabled()
        gc.disable()  # millions of new dicts (no cycles) would start many full collections for nothing
        try:
            return [{"index": i, "true": t, "predicted": p, "confidence": c, "loss": loss}
                    for i, t, p, c, loss in zip(index, true, predicted, *reals)]
        finally:
            if collecting:
                gc.enable()


@dataclass(frozen=True)
class EpochRecord:
    """One epoch as :meth:`FailureAnalyzer.end_epoch` closed it (``epoch`` counts from 1)."""

    epoch: int
    samples: int
    errors: int
    calibration_error: float
    failed: np.ndarray = field(repr=False, compare=False)  # distinct indices that failed, sorted
    seen: np.ndarray = field(repr=False, compare=False)  # indices seen, as [start, stop) rows

    @property
    def error_rate(self) -> float:
        return self.errors / self.samples if self.samples else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "samples": self.samples, "errors": self.errors,
                "error_rate": json_float(self.error_rate), "calibration_error": json_float(self.calibration_error)}

    def state(self) -> dict[str, Any]:
        """Everything, as tensors and numbers: checkpoints load with ``torch.load(weights_only=True)``."""
        return {**self.to_dict(), "failed": torch.from_numpy(self.failed), "seen": torch.from_numpy(self.seen)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochRecord:
        return cls(int(state["epoch"]), int(state["samples"]), int(state["errors"]), float(state["calibration_error"]),
                   state["failed"].numpy(), state["seen"].numpy())


def json_float(value: float) -> float | None:
    """JSON has no NaN or infinity: they become null."""
    return float(value) if math.isfinite(value) else None
