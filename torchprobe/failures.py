"""Failure analysis for any classifier: every mistake recorded, explained and shown.

``update()`` never waits for the device and launches a handful of kernels: ``log_softmax``, the
top class, the target's log-probability; the batch's per-sample records (index, ``true*C +
predicted``, confidence, log-probability of the target) are kept as its own tensors, and the inputs
of the worst failures by a top-k merge. The first read brings the records to the CPU (the one
wait), counts them into the confusion matrix, calibration bins and per-class sums, and keeps the
failures. Nothing is capped: every failure since the last ``reset()`` is recorded. See
docs/failures.md.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Group
from rich.table import Table
from rich.text import Text
from torch import nn

from torchprobe.trace import preserved_training_flags

SCHEMA = "torchprobe.failures/1"
RESOLUTION = 3600  # equal calibration bins counted; calibration_error(n_bins) is exact for its divisors
COLLECT_EVERY = 1 << 20  # samples held as per-batch records before they are filtered (one wait)
RANKINGS = ("loss", "confidence")
PROBLEMS = ("targets below 0", "targets >= num_classes", "NaN (or +inf) outputs")


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
                "confidence": _json_float(self.confidence), "loss": _json_float(self.loss)}


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
                "error_rate": _json_float(self.error_rate), "calibration_error": _json_float(self.calibration_error)}

    def state(self) -> dict[str, Any]:
        """Everything, as tensors and numbers: checkpoints load with ``torch.load(weights_only=True)``."""
        return {**self.to_dict(), "failed": torch.from_numpy(self.failed), "seen": torch.from_numpy(self.seen)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochRecord:
        return cls(int(state["epoch"]), int(state["samples"]), int(state["errors"]), float(state["calibration_error"]),
                   state["failed"].numpy(), state["seen"].numpy())


@dataclass
class _Totals:
    """Counts over the collected samples (CPU): they only add up, so processes merge them by sum."""

    confusion: np.ndarray  # int64 (C*C,), at true*C + predicted
    bins: np.ndarray  # int64 (2*RESOLUTION,), at bin*2 + correct
    bin_confidence: np.ndarray  # float64 (RESOLUTION,): summed top-class probability per bin
    self_confidence: np.ndarray  # float64 (C,): summed p(true) per true class

    @classmethod
    def zeros(cls, num_classes: int) -> _Totals:
        return cls(np.zeros(num_classes**2, np.int64), np.zeros(2 * RESOLUTION, np.int64),
                   np.zeros(RESOLUTION), np.zeros(num_classes))

    def add(self, code: np.ndarray, confidence: np.ndarray, target_logp: np.ndarray, num_classes: int) -> None:
        true, predicted = np.divmod(code, num_classes)
        self.confusion += np.bincount(code, minlength=num_classes**2)
        confidence = confidence.astype(np.float64)
        fine = np.minimum((confidence * RESOLUTION).astype(np.int64), RESOLUTION - 1)  # exact for float32
        self.bins += np.bincount(fine * 2 + (true == predicted), minlength=2 * RESOLUTION)
        self.bin_confidence += np.bincount(fine, confidence, minlength=RESOLUTION)
        self.self_confidence += np.bincount(true, np.exp(target_logp).astype(np.float64), minlength=num_classes)


@dataclass
class _Kept:
    """The ``k`` worst failures by each key of RANKINGS, with their inputs: the only part whose size
    depends on the input size. Empty slots and correct samples have key ``-inf``."""

    key: torch.Tensor  # float32 (rankings, k)
    index: torch.Tensor  # int64 (rankings, k)
    inputs: torch.Tensor  # (rankings * k, *input_shape), ranking-major

    @classmethod
    def empty(cls, k: int, like: torch.Tensor) -> _Kept:
        r = len(RANKINGS)
        key = torch.full((r, k), -math.inf, device=like.device)
        return cls(key, torch.zeros((r, k), dtype=torch.int64, device=like.device), like.new_zeros((r * k, *like.shape[1:])))

    def merge(self, key: torch.Tensor, index: torch.Tensor, inputs: torch.Tensor) -> _Kept:
        """The top ``k`` of these and a batch (``key``: (rankings, batch)); the new inputs are
        gathered from ``cat(kept, batch)``, or, for a batch larger than the kept set, from
        ``cat(kept, the k rows per ranking that may enter)``."""
        r, k = self.key.shape
        key, index = torch.cat([self.key, key], 1), torch.cat([self.index, index.expand(r, -1)], 1)
        key, order = _top(k, key, index)
        kept = order < k
        first = torch.arange(0, r * k, k, device=order.device).view(r, 1)  # each ranking's first kept row
        if len(inputs) > r * k:  # gather the k rows per ranking that may enter first
            inputs = inputs.index_select(0, (order - k).clamp(min=0).flatten())
            rows = first + torch.where(kept, order, torch.arange(r * k, r * k + k, device=order.device))
        else:
            rows = order + torch.where(kept, first, r * k - k)
        inputs = torch.cat([self.inputs, inputs]).index_select(0, rows.flatten())  # rows of cat(kept, batch)
        return _Kept(key, index.gather(1, order), inputs)

    @classmethod
    def combine(cls, parts: Sequence[_Kept]) -> _Kept:
        """The top ``k`` of several processes' kept sets: exactly the top ``k`` of all their samples."""
        r, k = parts[0].key.shape
        key, index = torch.cat([p.key for p in parts], 1), torch.cat([p.index for p in parts], 1)
        key, order = _top(k, key, index)
        part, position = order.div(k, rounding_mode="floor"), order.remainder(k)
        rows = part * (r * k) + torch.arange(r, device=order.device)[:, None] * k + position
        inputs = torch.cat([p.inputs for p in parts]).index_select(0, rows.flatten())
        return cls(key, index.gather(1, order), inputs)

    def inputs_by(self, by: str) -> torch.Tensor:
        k = self.key.shape[1]
        return self.inputs[RANKINGS.index(by) * k:][:k]


def _top(k: int, key: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the first ``k`` keys and their positions, by key (descending), then index, then
    position: a total order, so top-k sets kept per batch or per process merge into exactly the
    top-k of all, ties included."""
    by_index = torch.argsort(index, dim=1, stable=True)
    top = torch.sort(key.gather(1, by_index), dim=1, descending=True, stable=True)
    return top.values[:, :k], by_index.gather(1, top.indices[:, :k])


@dataclass
class _Records:
    """Per-sample columns in arrival order, on the CPU: the failures once collected."""

    index: np.ndarray
    true: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray  # float32: p(predicted)
    loss: np.ndarray  # float32: -log p(true)

    @classmethod
    def empty(cls) -> _Records:
        ints, reals = np.empty(0, np.int64), np.empty(0, np.float32)
        return cls(ints, ints, ints, reals, reals)

    @classmethod
    def concat(cls, parts: Sequence[_Records]) -> _Records:
        return cls(*(np.concatenate(column) for column in zip(*(p.columns() for p in parts))))

    def columns(self) -> tuple[np.ndarray, ...]:
        return self.index, self.true, self.predicted, self.confidence, self.loss

    def take(self, rows: np.ndarray) -> _Records:
        return _Records(*(c[rows] for c in self.columns()))

    def failures(self) -> list[Failure]:
        return [Failure(int(i), int(t), int(p), float(c), float(l)) for i, t, p, c, l in zip(*self.columns())]


class FailureAnalyzer:
    """Confusion, per-class metrics, calibration and every misclassified sample of a classifier.

    ``update(outputs, targets, inputs=None, indices=None)`` per batch (logits or log-probabilities,
    any device); read with ``confusion_matrix()``, ``per_class()``, ``most_confused()``,
    ``calibration_error()``, ``failures``, ``worst()``, ``label_issues()``, ``to_dict()``.
    ``keep`` inputs are kept per ranking (by loss and by confidence): at most ``2 * keep`` inputs.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, *, keep: int = 64) -> None:
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        self.num_classes = num_classes
        self.class_names = None if class_names is None else [str(n) for n in class_names]
        self.keep = keep
        self.history: list[EpochRecord] = []
        self.reset()

    def reset(self) -> None:
        """Forget every batch since the last reset (``history`` stays)."""
        self.samples = 0
        self._device: torch.device | None = None
        self._totals = _Totals.zeros(self.num_classes)
        self._problems: torch.Tensor | None = None  # off the CPU: batches with each of PROBLEMS
        self._pending: list[tuple[torch.Tensor, ...]] = []
        self._pending_samples = 0
        self._failed = _Records.empty()
        self._seen = np.empty((0, 2), np.int64)
        self._kept: _Kept | None = None
        self._candidates: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # CPU: rows that may enter
        self._candidate_rows = 0
        self._with_inputs: bool | None = None  # decided by the first batch
        self._default_indices = False
        self._merged = False

    def label(self, cls: int) -> str | int:
        """How reports name a class: its name when ``class_names`` were given, else its index."""
        return cls if self.class_names is None else self.class_names[cls]

    # -- adding batches ----------------------------------------------------------------------------

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor | None = None,
               indices: torch.Tensor | Sequence[int] | None = None) -> None:
        """Add one batch: ``outputs`` (batch, num_classes) logits or log-probabilities, ``targets``
        class indices, ``inputs`` the model's inputs (kept for the worst failures), ``indices``
        dataset indices (default: a running count since ``reset()``). Never waits for the device;
        off the CPU, bad target values and NaN outputs are reported by the next read instead."""
        if self._merged:
            raise ValueError("this analyzer holds the merged state of all processes since sync(); "
                             "call reset() or end_epoch() before adding batches")
        n = self._check_shapes(outputs, targets, inputs)
        device = outputs.device
        if self._device is not None and device != self._device:
            raise ValueError(f"outputs are on {device}, earlier batches on {self._device}; reset() first")
        index = self._batch_indices(indices, n, device)
        if n == 0:
            return
        self._device = device
        logp = torch.log_softmax(outputs.detach(), 1, dtype=torch.float32)  # idempotent on log-probs
        top, predicted = logp.max(1)
        targets, target_logp = self._target_logp(logp, targets.to(device, torch.int64, non_blocking=True), top)
        confidence = top.exp()
        code = predicted.add(targets, alpha=self.num_classes)
        if self._with_inputs is None:  # the first batch decides, for all until reset()
            self._with_inputs = inputs is not None
            if inputs is not None and self.keep:
                self._kept = _Kept.empty(self.keep, inputs.to(device))
        self._default_indices |= indices is None
        self._pending.append((index, code, confidence, target_logp))
        if self._kept is not None:
            keys = torch.stack([target_logp.neg(), confidence])  # loss and confidence: RANKINGS
            keys.masked_fill_(predicted == targets, -math.inf)
            self._keep_worst(keys, index, inputs.detach().to(device, non_blocking=True))
        self.samples += n
        self._pending_samples += n
        if self._pending_samples >= COLLECT_EVERY:
            self._collect()

    def _keep_worst(self, keys: torch.Tensor, index: torch.Tensor, inputs: torch.Tensor) -> None:
        """Off the CPU, merge every batch into the kept sets (no value is read). On the CPU, where
        reading is free, set aside only the rows that reach the last kept key (a superset of those
        that enter) and merge them once they are as many as the kept sets hold: fewer, larger merges."""
        if not _reads_are_free(inputs.device):
            self._kept = self._kept.merge(keys, index, inputs)
            return
        rows = (keys >= self._kept.key[:, -1:]).any(0).nonzero().squeeze(1)
        if len(rows):
            self._candidates.append((keys[:, rows], index[rows], inputs.index_select(0, rows)))
            self._candidate_rows += len(rows)
            if self._candidate_rows >= self._kept.key.numel():
                self._merge_candidates()

    def _merge_candidates(self) -> None:
        if self._candidates:
            keys, index, inputs = zip(*self._candidates)
            self._kept = self._kept.merge(torch.cat(keys, 1), torch.cat(index), torch.cat(inputs))
            self._candidates, self._candidate_rows = [], 0

    def _check_shapes(self, outputs: Any, targets: Any, inputs: Any) -> int:
        c = self.num_classes
        if not isinstance(outputs, torch.Tensor) or not outputs.is_floating_point() or outputs.shape[1:] != (c,):
            raise ValueError(f"outputs must be a float tensor of shape (batch, {c}), got {_describe(outputs)}")
        n = outputs.shape[0]
        if not _is_index_tensor(targets) or tuple(targets.shape) != (n,):
            raise ValueError(f"targets must be an integer tensor of class indices of shape ({n},), "
                             f"got {_describe(targets)} (one-hot or soft targets: pass .argmax(1))")
        if self._with_inputs is not None and self._with_inputs != (inputs is not None):
            given = "given" if self._with_inputs else "not given"
            raise ValueError(f"inputs were {given} with the earlier batches: give them with every batch or with none")
        if inputs is not None:
            self._check_batch(inputs, n)
        return n

    def _check_batch(self, inputs: Any, n: int) -> None:
        if not isinstance(inputs, torch.Tensor) or inputs.dim() == 0 or inputs.shape[0] != n:
            raise ValueError(f"inputs must be a tensor with the batch size {n} first, got {_describe(inputs)}")
        if self._kept is not None:
            kept = self._kept.inputs
            if inputs.shape[1:] != kept.shape[1:] or inputs.dtype != kept.dtype:
                raise ValueError(f"inputs are {_describe(inputs)}, earlier batches had {_dtype(kept)} rows "
                                 f"of shape {tuple(kept.shape[1:])}")

    def _target_logp(self, logp: torch.Tensor, targets: torch.Tensor,
                     top: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(target) per sample, and the value checks: on the CPU a ValueError now (``gather``
        checks the range itself); elsewhere counted on the device, the targets clamped so no kernel
        reads out of bounds, and raised by the next read."""
        c, cpu = self.num_classes, targets.device.type == "cpu"
        if not cpu:
            lo, hi = torch.aminmax(targets)
            problems = torch.stack([lo < 0, hi >= c, top.isnan().any()]).long()
            self._problems = problems if self._problems is None else self._problems + problems
            targets = targets.clamp(0, c - 1)
        try:
            target_logp = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
        except RuntimeError:
            lo, hi = (int(v) for v in torch.aminmax(targets))
            if 0 <= lo and hi < c:
                raise
            raise ValueError(f"targets must be class indices in [0, {c}), got values from {lo} to {hi}") from None
        if cpu and math.isnan(float(top.sum())):  # NaN anywhere in a row makes its maximum NaN
            rows = top.isnan().nonzero().flatten()
            raise ValueError(f"outputs contain NaN (or +inf) in {len(rows)} of {len(top)} rows, "
                             f"first in row {int(rows[0])}")
        return targets, target_logp

    def _batch_indices(self, indices: Any, n: int, device: torch.device) -> torch.Tensor:
        if indices is None:
            return torch.arange(self.samples, self.samples + n, device=device)
        index = torch.as_tensor(indices)
        if not _is_index_tensor(index) or tuple(index.shape) != (n,):
            raise ValueError(f"indices must be {n} integers, got {_describe(index)}")
        return index.to(device, torch.int64, non_blocking=True, copy=True)

    # -- hooks and loops -----------------------------------------------------------------------------

    def attach(self, module: nn.Module, *, inputs: bool = False,
               select: Callable[[Any], torch.Tensor] | None = None) -> FailureHook:
        """Collect ``module``'s outputs with a forward hook; give each batch's targets with
        ``hook.targets(y)`` before or after its forward. ``inputs=True`` keeps the module's first
        positional input for the gallery; ``select`` picks the logits from a structured output."""
        return FailureHook(self, module, inputs, select)

    def end_epoch(self) -> EpochRecord:
        """Close an epoch: keep its numbers and failure set in ``history``, then ``reset()``."""
        self._settle()
        record = EpochRecord(len(self.history) + 1, self.samples, self.errors, self.calibration_error(),
                             np.unique(self._failed.index), self._seen)
        self.history.append(record)
        self.reset()
        return record

    def flips(self, epoch: int | None = None, to: str = "wrong") -> np.ndarray:
        """Indices that went right -> wrong (``to="wrong"``) or wrong -> right (``to="right"``)
        from epoch ``epoch - 1`` to ``epoch`` (default: the last two closed epochs). A sample
        counts only if both epochs saw it."""
        epoch = len(self.history) if epoch is None else epoch
        if not 2 <= epoch <= len(self.history):
            raise ValueError(f"flips need two closed epochs: epoch must be in 2..{len(self.history)} "
                             f"({len(self.history)} closed by end_epoch()), got {epoch}")
        if to not in ("wrong", "right"):
            raise ValueError(f"to must be 'wrong' or 'right', got {to!r}")
        before, after = self.history[epoch - 2], self.history[epoch - 1]
        if to == "right":
            before, after = after, before
        candidates = after.failed
        return candidates[_in_runs(candidates, before.seen) & ~np.isin(candidates, before.failed)]

    # -- reading -------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device | None:
        """Where the batches are (None before the first)."""
        return self._device

    def _collect(self) -> None:
        """Filter the pending per-sample records to failures (the one place that waits), and merge
        the rows set aside for the kept sets."""
        self._merge_candidates()
        if not self._pending:
            return
        index, code, confidence, target_logp = (torch.cat(column).cpu().numpy() for column in zip(*self._pending))
        self._pending, self._pending_samples = [], 0
        self._totals.add(code, confidence, target_logp, self.num_classes)
        true, predicted = np.divmod(code, self.num_classes)
        wrong = true != predicted
        self._seen = _union_runs(self._seen, _runs(np.unique(index)))
        new = _Records(index, true, predicted, confidence, -target_logp).take(wrong)
        self._failed = _Records.concat([self._failed, new])

    def _settle(self) -> None:
        if self._problems is not None:
            _raise_problems(self._problems.cpu(), self._device)
        self._collect()

    def _counts(self, name: str) -> np.ndarray:
        self._settle()
        return getattr(self._totals, name)

    def confusion_matrix(self) -> torch.Tensor:
        """Counts, rows = true class, columns = predicted class (int64, on the CPU)."""
        return torch.from_numpy(self._counts("confusion").reshape(self.num_classes, self.num_classes).copy())

    @property
    def errors(self) -> int:
        return self.samples - int(np.trace(self.confusion_matrix().numpy()))

    @property
    def error_rate(self) -> float:
        """Errors / samples since the last reset (NaN before any sample)."""
        return self.errors / self.samples if self.samples else math.nan

    def per_class(self) -> list[dict[str, Any]]:
        """Per class ``class``, ``precision``, ``recall``, ``f1``, ``support``; 0 where undefined
        (no predictions or no samples of the class), as scikit-learn's ``zero_division=0``."""
        cm = self.confusion_matrix().numpy()
        tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
        rows = []
        for c in range(self.num_classes):
            rows.append({"class": self.label(c), "precision": _ratio(tp[c], predicted[c]),
                         "recall": _ratio(tp[c], support[c]), "f1": _ratio(2 * tp[c], support[c] + predicted[c]),
                         "support": int(support[c])})
        return rows

    def most_confused(self, k: int = 10) -> list[tuple[str | int, str | int, int]]:
        """The ``k`` largest off-diagonal cells as ``(true, predicted, count)``, largest first
        (ties by true, then predicted class)."""
        cm = self.confusion_matrix().numpy().copy()
        np.fill_diagonal(cm, 0)
        true, predicted = np.nonzero(cm)
        order = np.lexsort((predicted, true, -cm[true, predicted]))[:k]
        return [(self.label(int(true[i])), self.label(int(predicted[i])), int(cm[true[i], predicted[i]])) for i in order]

    def reliability(self, n_bins: int = 15) -> dict[str, np.ndarray]:
        """Equal-width bins of the top-class probability: ``edges`` (n_bins + 1), per bin ``count``,
        ``correct`` and ``confidence`` (the sum). Bins are [lo, hi), the last one [lo, 1]."""
        if not isinstance(n_bins, int) or n_bins < 1 or RESOLUTION % n_bins:
            raise ValueError(f"n_bins must divide {RESOLUTION} (the resolution the bins are kept at), got {n_bins}")
        pairs = self._counts("bins").reshape(n_bins, -1, 2).sum(1)
        confidence = self._counts("bin_confidence").reshape(n_bins, -1).sum(1)
        edges = np.linspace(0, 1, n_bins + 1)
        return {"edges": edges, "count": pairs.sum(1), "correct": pairs[:, 1], "confidence": confidence}

    def calibration_error(self, n_bins: int = 15) -> float:
        """Expected calibration error of the top-class probability: sum over equal-width bins of
        ``count/N * |accuracy - mean confidence|`` (NaN before any sample)."""
        bins = self.reliability(n_bins)
        total = bins["count"].sum()
        return float(np.abs(bins["correct"] - bins["confidence"]).sum() / total) if total else math.nan

    @property
    def failures(self) -> list[Failure]:
        """Every misclassified sample since the last reset, by index (then arrival)."""
        self._settle()
        return self._failed.take(np.argsort(self._failed.index, kind="stable")).failures()

    def worst(self, by: str = "loss", k: int | None = None) -> list[Failure]:
        """Failures ranked by ``loss`` or ``confidence`` (highest first, ties by index); the first
        ``keep`` carry their ``input`` when inputs were given."""
        if by not in RANKINGS:
            raise ValueError(f"by must be one of {RANKINGS}, got {by!r}")
        self._settle()
        key = self._failed.loss if by == "loss" else self._failed.confidence
        ranked = self._failed.take(np.lexsort((self._failed.index, -key))[:k]).failures()
        if self._kept is not None:
            inputs = self._kept.inputs_by(by).cpu()
            for i, f in enumerate(ranked[: self.keep]):
                ranked[i] = Failure(f.index, f.true, f.predicted, f.confidence, f.loss, inputs[i])
        return ranked

    def label_issues(self, k: int | None = None) -> list[Failure]:
        """Candidates for wrong labels, most suspicious first: failures whose predicted class gets at
        least that class's threshold, the mean self-confidence of the samples labelled with it
        (confident learning, Northcutt et al. 2021), ranked by self-confidence, lowest first."""
        support = self.confusion_matrix().numpy().sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            threshold = self._counts("self_confidence") / support  # NaN: nobody has that label
        failed = self._failed
        confident = failed.confidence >= threshold[failed.predicted]
        order = np.lexsort((failed.index, -failed.loss))
        return failed.take(order[confident[order]][:k]).failures()

    # -- merging processes ---------------------------------------------------------------------------

    def sync(self) -> FailureAnalyzer:
        """Merge the state of all processes of the default ``torch.distributed`` group (gloo or
        nccl) into each of them, so data-parallel evaluation reports what one process would have.
        Every process must call it, once per evaluation, before reading or ``end_epoch()``; a no-op
        without an initialised group of two or more. Pass ``indices`` to ``update`` so samples keep
        their identity across processes."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2 or self._merged:
            return self
        self._collect()
        gloo = dist.get_backend() == "gloo"
        comm = torch.device("cpu") if gloo else torch.device("cuda", torch.cuda.current_device())  # nccl
        home = self._device if self._device is not None else comm
        totals = self._totals
        problems = torch.zeros(len(PROBLEMS), dtype=torch.int64) if self._problems is None else self._problems.cpu()
        extra = torch.tensor([self.samples, int(self._default_indices)])
        ints = [torch.from_numpy(totals.confusion), torch.from_numpy(totals.bins), problems, extra]
        reals = [torch.from_numpy(totals.bin_confidence), torch.from_numpy(totals.self_confidence)]
        ints, reals = ([t.cpu().numpy() for t in _all_reduce(group, comm)] for group in (ints, reals))
        self._totals = _Totals(ints[0], ints[1], reals[0], reals[1])
        self._problems = torch.from_numpy(ints[2])
        self.samples, default_indices = (int(v) for v in ints[3])
        index_columns = np.stack([self._failed.index, self._failed.true, self._failed.predicted], 1)
        real_columns = np.stack([self._failed.confidence, self._failed.loss], 1)
        ints = torch.cat(_gather_rows(torch.from_numpy(index_columns), comm)).cpu().numpy()
        reals = torch.cat(_gather_rows(torch.from_numpy(real_columns), comm)).cpu().numpy()
        self._failed = _Records(ints[:, 0], ints[:, 1], ints[:, 2], reals[:, 0], reals[:, 1])
        seen = torch.cat(_gather_rows(torch.from_numpy(self._seen), comm)).cpu().numpy()
        self._seen = _union_runs(seen, np.empty((0, 2), np.int64))
        self._sync_kept(comm, home)
        self._merged = True
        _raise_problems(self._problems, "the processes' devices")
        if default_indices:
            warnings.warn("sync(): some batches had no indices, so failure indices count per process; "
                          "pass indices= to update() to identify samples across processes", stacklevel=2)
        return self

    def _sync_kept(self, comm: torch.device, home: torch.device) -> None:
        """Each process's top-k candidates, gathered; the top-k of their union is the global one."""
        mine = None if self._with_inputs is None else (self._with_inputs, self._input_spec())
        specs = [None] * dist.get_world_size()
        dist.all_gather_object(specs, mine)
        modes = {s for s in specs if s is not None}
        if len({with_inputs for with_inputs, _ in modes}) > 1 or len({spec for _, spec in modes if spec}) > 1:
            raise ValueError(f"sync(): processes disagree on the inputs they were given: {sorted(modes, key=str)}")
        spec = next((s for _, s in modes if s), None)
        if spec is None:
            return
        shape, dtype = spec
        like = torch.zeros((1, *shape), dtype=getattr(torch, dtype), device=home)
        self._with_inputs = True
        kept = self._kept if self._kept is not None else _Kept.empty(self.keep, like)
        columns = [[t.to(home) for t in _gather_rows(c, comm)] for c in (kept.key, kept.index, kept.inputs)]
        self._kept = _Kept.combine([_Kept(*part) for part in zip(*columns)])

    def _input_spec(self) -> tuple[tuple[int, ...], str] | None:
        if self._kept is None:
            return None
        inputs = self._kept.inputs
        return tuple(inputs.shape[1:]), _dtype(inputs)

    # -- reports ---------------------------------------------------------------------------------

    def to_dict(self, failures: bool = True, n_bins: int = 15) -> dict[str, Any]:
        """The whole report, JSON-safe (non-finite numbers become null), schema ``torchprobe.failures/1``."""
        per_class = self.per_class()
        return {
            "schema": SCHEMA,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "samples": self.samples,
            "errors": self.errors,
            "error_rate": _json_float(self.error_rate),
            "calibration_error": _json_float(self.calibration_error(n_bins)),
            "n_bins": n_bins,
            "confusion_matrix": self.confusion_matrix().tolist(),
            "per_class": per_class,
            "macro": {m: float(np.mean([row[m] for row in per_class])) for m in ("precision", "recall", "f1")},
            "most_confused": [{"true": t, "predicted": p, "count": n}
                              for t, p, n in self.most_confused(self.num_classes**2)],
            "label_issues": [f.index for f in self.label_issues()],
            "failures": [f.to_dict() for f in self.failures] if failures else None,
            "history": [record.to_dict() for record in self.history],
        }

    def to_csv(self, file: str | Path | io.TextIOBase) -> None:
        """Every failure as one CSV row, by index: index, true, predicted (and their names when
        given), confidence, self_confidence, loss."""
        header = ["index", "true", "predicted"] + (["true_name", "predicted_name"] if self.class_names else [])
        header += ["confidence", "self_confidence", "loss"]
        if isinstance(file, (str, Path)):
            with open(file, "w", newline="") as handle:
                self.to_csv(handle)
            return
        writer = csv.writer(file)
        writer.writerow(header)
        for f in self.failures:
            names = [self.label(f.true), self.label(f.predicted)] if self.class_names else []
            numbers = [repr(f.confidence), repr(f.self_confidence), repr(f.loss)]
            writer.writerow([f.index, f.true, f.predicted, *names, *numbers])

    def __rich__(self) -> Any:
        return failure_report(self)

    def __str__(self) -> str:
        from torchprobe.report import render_text

        return render_text(self)

    def __repr__(self) -> str:  # no device wait: only what the host knows
        return f"FailureAnalyzer(num_classes={self.num_classes}, samples={self.samples}, epochs={len(self.history)})"


class FailureHook:
    """A forward hook that pairs each output of a module with the targets the caller gives, in
    either order, and adds the pair to the analyzer. A context manager: leaving removes it."""

    def __init__(self, analyzer: FailureAnalyzer, module: nn.Module, inputs: bool,
                 select: Callable[[Any], torch.Tensor] | None) -> None:
        self.analyzer = analyzer
        self._keep_inputs = inputs
        self._select = select or _first_tensor
        self._output: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._targets: tuple[torch.Tensor, Any] | None = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._output is not None:
            raise ValueError("the model ran twice without targets for the first output: "
                             "call hook.targets(y) for every forward")
        inputs = args[0] if self._keep_inputs and args and isinstance(args[0], torch.Tensor) else None
        self._output = (self._select(output).detach(), None if inputs is None else inputs.detach())
        self._pair()

    def targets(self, targets: torch.Tensor, indices: torch.Tensor | Sequence[int] | None = None) -> None:
        """The targets (and optional dataset indices) of the forward just run, or about to run."""
        if self._targets is not None:
            raise ValueError("targets given twice without a forward in between")
        self._targets = (targets, indices)
        self._pair()

    def _pair(self) -> None:
        if self._output is None or self._targets is None:
            return
        (outputs, inputs), (targets, indices) = self._output, self._targets
        self._output = self._targets = None
        self.analyzer.update(outputs, targets, inputs, indices)

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> FailureHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def analyze_failures(model: nn.Module, loader: Iterable[Any], num_classes: int | None = None, *,
                     class_names: Sequence[str] | None = None, analyzer: FailureAnalyzer | None = None,
                     keep: int = 64, inputs: bool = True, device: torch.device | str | None = None,
                     select: Callable[[Any], torch.Tensor] | None = None) -> FailureAnalyzer:
    """Evaluate ``model`` over ``loader`` (batches ``(inputs, targets)`` or ``(inputs, targets,
    indices)``; without indices, a sample's index is its position in the loader) in eval mode,
    without gradients, restoring every module's ``training`` flag; merged across processes
    (``sync()``) when ``torch.distributed`` is initialised. ``num_classes`` defaults to the width
    of the first output."""
    select = select or _first_tensor
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with preserved_training_flags(model), torch.no_grad():
        model.eval()
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
                raise ValueError("each batch must be (inputs, targets) or (inputs, targets, indices), "
                                 f"got {_describe(batch)}")
            x, y, index = (*batch, None)[:3]
            x = x.to(device, non_blocking=True)
            outputs = select(model(x))
            if analyzer is None:
                analyzer = FailureAnalyzer(num_classes or outputs.shape[-1], class_names, keep=keep)
            analyzer.update(outputs, y, x if inputs else None, index)
    if analyzer is None:
        if num_classes is None:
            raise ValueError("the loader gave no batches, so num_classes is unknown: pass it")
        analyzer = FailureAnalyzer(num_classes, class_names, keep=keep)
    return analyzer.sync()


# -- rendering -------------------------------------------------------------------------------------


def failure_report(analyzer: FailureAnalyzer, rows: int = 10) -> Any:
    """Headline, per-class table, most-confused pairs, worst failures, label issues, history."""
    parts: list[Any] = [_current_report(analyzer, rows)] if analyzer.samples else [
        Text(f"Failures: no samples since the last reset ({analyzer.num_classes} classes)", style="bold")]
    if analyzer.history:
        table = Table(title="History", title_justify="left")
        for column in ("Epoch", "Samples", "Errors", "Error rate", "ECE", "Right->wrong", "Wrong->right"):
            table.add_column(column, justify="right")
        for record in analyzer.history:
            flips = [len(analyzer.flips(record.epoch, to)) if record.epoch > 1 else "-" for to in ("wrong", "right")]
            table.add_row(str(record.epoch), f"{record.samples:,}", f"{record.errors:,}", f"{record.error_rate:.2%}",
                          f"{record.calibration_error:.4f}", str(flips[0]), str(flips[1]))
        parts.append(table)
    return Group(*parts)


def _current_report(analyzer: FailureAnalyzer, rows: int) -> Group:
    n, errors = analyzer.samples, analyzer.errors
    parts: list[Any] = [Text(f"Failures: {errors:,} of {n:,} samples ({errors / n:.2%} error), "
                             f"calibration error {analyzer.calibration_error():.4f} (15 bins)", style="bold")]
    per_class = analyzer.per_class()
    if len(per_class) > 2 * rows:
        per_class = sorted(per_class, key=lambda r: r["f1"])[: 2 * rows]
    title = "Per class" if len(per_class) == analyzer.num_classes else f"The {len(per_class)} classes with the lowest F1"
    table = Table(title=title, title_justify="left")
    for column in ("Class", "Support", "Precision", "Recall", "F1"):
        table.add_column(column, justify="left" if column == "Class" else "right")
    for row in per_class:
        table.add_row(str(row["class"]), f"{row['support']:,}", *(f"{row[m]:.4f}" for m in ("precision", "recall", "f1")))
    parts.append(table)
    pairs = analyzer.most_confused(rows)
    if pairs:
        table = Table(title="Most confused", title_justify="left")
        for column in ("True", "Predicted", "Count"):
            table.add_column(column, justify="right" if column == "Count" else "left")
        for true, predicted, count in pairs:
            table.add_row(str(true), str(predicted), f"{count:,}")
        parts.append(table)
        table = Table(title="Worst failures by loss", title_justify="left")
        for column in ("Index", "True", "Predicted", "Confidence", "Loss"):
            table.add_column(column, justify="right")
        for f in analyzer.worst("loss", rows):
            table.add_row(str(f.index), str(analyzer.label(f.true)), str(analyzer.label(f.predicted)),
                          f"{f.confidence:.3f}", f"{f.loss:.3f}")
        parts.append(table)
        issues = analyzer.label_issues()
        shown = ", ".join(str(f.index) for f in issues[:rows]) + (", …" if len(issues) > rows else "")
        parts.append(Text(f"Label-issue candidates: {len(issues):,}" + (f" (indices {shown})" if issues else "")))
    return Group(*parts)


# -- helpers -----------------------------------------------------------------------------------------


def _raise_problems(problems: torch.Tensor, where: object) -> None:
    found = [name for name, count in zip(PROBLEMS, problems.tolist()) if count]
    if found:
        raise ValueError(f"batches on {where} had {' and '.join(found)} (checked without waiting for the device, "
                         "so reported at this read); reset() before adding more batches")


def _all_reduce(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Sum same-dtype tensors across processes in one collective; the parts, split back."""
    flat = torch.cat([t.reshape(-1) for t in tensors]).to(device)
    dist.all_reduce(flat)
    return list(flat.split([t.numel() for t in tensors]))


def _gather_rows(rows: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Every process's ``rows`` (their first dimensions may differ), in rank order."""
    world = dist.get_world_size()
    rows = rows.to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(rows)], device=device))
    sizes = [int(s) for s in sizes]
    padded = torch.cat([rows, rows.new_zeros((max(sizes) - len(rows), *rows.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return [part[:size] for part, size in zip(parts, sizes)]


def _runs(values: np.ndarray) -> np.ndarray:
    """Sorted distinct integers as [start, stop) rows: ``arange(n)`` is one row, whatever ``n``."""
    if not len(values):
        return np.empty((0, 2), np.int64)
    breaks = np.flatnonzero(np.diff(values) != 1) + 1
    return np.stack([values[np.r_[0, breaks]], values[np.r_[breaks - 1, len(values) - 1]] + 1], 1)


def _union_runs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    rows = np.concatenate([a, b])
    if not len(rows):
        return rows
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    reach = np.maximum.accumulate(rows[:, 1])
    starts = np.flatnonzero(np.r_[True, rows[1:, 0] > reach[:-1]])
    return np.stack([rows[starts, 0], np.maximum.reduceat(rows[:, 1], starts)], 1)


def _in_runs(values: np.ndarray, runs: np.ndarray) -> np.ndarray:
    row = np.searchsorted(runs[:, 0], values, side="right") - 1
    return (row >= 0) & (values < runs[np.maximum(row, 0), 1]) if len(runs) else np.zeros(len(values), bool)


def _reads_are_free(device: torch.device) -> bool:
    """Reading a value waits for the device everywhere but on the CPU."""
    return device.type == "cpu"


def _first_tensor(output: Any) -> torch.Tensor:
    """The logits of a module's output: the tensor itself, or the first tensor in a tuple/list/dict."""
    if isinstance(output, torch.Tensor):
        return output
    items = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for item in items:
        if isinstance(item, torch.Tensor):
            return item
    raise ValueError(f"cannot find the logits in a {type(output).__name__}: pass select=")


def _is_index_tensor(value: Any) -> bool:
    if not isinstance(value, torch.Tensor):
        return False
    return not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {_dtype(value)} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
