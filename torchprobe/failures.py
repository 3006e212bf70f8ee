"""Failure analysis for any classifier: every mistake recorded, explained and shown.

``update()`` never waits for the device: the confusion matrix, the calibration bins and the
per-class self-confidence are ``index_add_`` accumulations on the outputs' device, each batch's
per-sample records (index, ``true*C + predicted``, confidence, log-probability of the target) are
kept as the batch's own tensors, and the inputs of the worst failures are kept by a top-k merge.
The first read filters the records to failures (the one wait) and answers from there. Nothing is
capped: every failure since the last ``reset()`` is recorded. See docs/failures.md.
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
RESOLUTION = 3600  # calibration bins kept per batch; calibration_error(n_bins) is exact for divisors
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


@dataclass
class _Totals:
    """The sums on the device: they only ever add up, so processes merge them by all-reduce."""

    confusion: torch.Tensor  # int64 (C*C,), at true*C + predicted
    bins: torch.Tensor  # int64 (2*RESOLUTION,), at bin*2 + correct
    bin_confidence: torch.Tensor  # float64 (RESOLUTION,): summed top-class probability per bin
    self_confidence: torch.Tensor  # float64 (C,): summed p(true) per true class
    problems: torch.Tensor  # int64 (3,): batches with each of PROBLEMS, off the CPU (checked late)

    @classmethod
    def zeros(cls, num_classes: int, device: torch.device) -> _Totals:
        real = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        ints = lambda n: torch.zeros(n, dtype=torch.int64, device=device)  # noqa: E731
        return cls(ints(num_classes**2), ints(2 * RESOLUTION), torch.zeros(RESOLUTION, dtype=real, device=device),
                   torch.zeros(num_classes, dtype=real, device=device), ints(len(PROBLEMS)))

    @property
    def device(self) -> torch.device:
        return self.confusion.device


@dataclass
class _Kept:
    """The ``k`` worst failures by one key, with their inputs: the only part whose size depends on
    the input size. Empty slots and correct samples have key ``-inf``."""

    key: torch.Tensor  # float32 (k,)
    index: torch.Tensor  # int64 (k,)
    inputs: torch.Tensor  # (k, *input_shape)

    @classmethod
    def empty(cls, k: int, like: torch.Tensor) -> _Kept:
        key = torch.full((k,), -math.inf, device=like.device)
        return cls(key, torch.zeros(k, dtype=torch.int64, device=like.device), like.new_zeros((k, *like.shape[1:])))

    def merge(self, key: torch.Tensor, index: torch.Tensor, inputs: torch.Tensor) -> _Kept:
        """The top ``k`` of these and a batch; inputs are gathered from both sides, not
        concatenated, so a large batch costs ``k`` rows, not ``k + batch``."""
        k = len(self.key)
        key, index = torch.cat([self.key, key]), torch.cat([self.index, index])
        order = _top(k, key, index)
        kept = (order < k).view(-1, *(1,) * (inputs.dim() - 1))
        rows = torch.where(kept, self.inputs.index_select(0, order.clamp(max=k - 1)), inputs.index_select(0, (order - k).clamp(min=0)))
        return _Kept(key[order], index[order], rows)


def _top(k: int, key: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Positions of the first ``k`` by key (descending), then index, then position: a total order,
    so top-k sets kept per batch or per process merge into exactly the top-k of all, ties included."""
    by_index = torch.argsort(index, stable=True)
    return by_index[torch.sort(key[by_index], descending=True, stable=True).indices[:k]]


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
        self._totals: _Totals | None = None
        self._pending: list[tuple[torch.Tensor, ...]] = []
        self._pending_samples = 0
        self._failed = _Records.empty()
        self._seen = np.empty((0, 2), np.int64)
        self._kept: dict[str, _Kept] = {}
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
        if self._totals is None:
            self._totals = _Totals.zeros(self.num_classes, device)
        elif device != self._totals.device:
            raise ValueError(f"outputs are on {device}, earlier batches on {self._totals.device}; reset() first")
        index = self._batch_indices(indices, n, device)
        if n == 0:
            return
        logp = torch.log_softmax(outputs.detach(), 1, dtype=torch.float32)  # idempotent on log-probs
        top, predicted = logp.max(1)
        targets = self._checked_targets(targets.to(device, torch.int64, non_blocking=True), top)
        target_logp = logp.gather(1, targets[:, None]).squeeze(1)
        confidence = top.exp()
        code = targets * self.num_classes + predicted
        correct = predicted == targets
        self._accumulate(code, correct, confidence, targets, target_logp)
        self._pending.append((index, code, confidence, target_logp))
        if self._kept:
            inputs = inputs.detach().to(device, non_blocking=True)
            for by, key in zip(RANKINGS, (target_logp.neg(), confidence)):
                self._kept[by] = self._kept[by].merge(key.masked_fill(correct, -math.inf), index, inputs)
        self.samples += n
        self._pending_samples += n
        if self._pending_samples >= COLLECT_EVERY:
            self._collect()

    def _accumulate(self, code: torch.Tensor, correct: torch.Tensor, confidence: torch.Tensor,
                    targets: torch.Tensor, target_logp: torch.Tensor) -> None:
        totals = self._totals
        one = torch.ones((), dtype=torch.int64, device=code.device).expand(len(code))
        totals.confusion.index_add_(0, code, one)
        confidence = confidence.to(totals.bin_confidence.dtype)
        fine = (confidence * RESOLUTION).long().clamp_(max=RESOLUTION - 1)
        totals.bins.index_add_(0, fine * 2 + correct, one)
        totals.bin_confidence.index_add_(0, fine, confidence)
        totals.self_confidence.index_add_(0, targets, target_logp.exp().to(confidence.dtype))

    def _check_shapes(self, outputs: Any, targets: Any, inputs: Any) -> int:
        c = self.num_classes
        if not isinstance(outputs, torch.Tensor) or outputs.dim() != 2 or outputs.shape[1] != c or not outputs.is_floating_point():
            raise ValueError(f"outputs must be a float tensor of shape (batch, {c}), got {_describe(outputs)}")
        n = outputs.shape[0]
        if not _is_index_tensor(targets) or tuple(targets.shape) != (n,):
            raise ValueError(f"targets must be an integer tensor of class indices of shape ({n},), got {_describe(targets)} "
                             "(one-hot or soft targets: pass .argmax(1))")
        if self._with_inputs is None:
            self._with_inputs = inputs is not None
        elif self._with_inputs != (inputs is not None):
            given = "given" if self._with_inputs else "not given"
            raise ValueError(f"inputs were {given} with the earlier batches: give them with every batch or with none")
        if inputs is not None:
            self._check_batch(inputs, n)
            if self.keep and not self._kept:
                self._kept = {by: _Kept.empty(self.keep, inputs.to(outputs.device)) for by in RANKINGS}
        return n

    def _check_batch(self, inputs: Any, n: int) -> None:
        if not isinstance(inputs, torch.Tensor) or inputs.dim() == 0 or inputs.shape[0] != n:
            raise ValueError(f"inputs must be a tensor with the batch size {n} first, got {_describe(inputs)}")
        if self._kept:
            kept = self._kept[RANKINGS[0]].inputs
            if inputs.shape[1:] != kept.shape[1:] or inputs.dtype != kept.dtype:
                raise ValueError(f"inputs are {_describe(inputs)}, earlier batches had {kept.dtype} rows of shape {tuple(kept.shape[1:])}")

    def _checked_targets(self, targets: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """Out-of-range targets and NaN outputs: a ValueError now on the CPU; elsewhere counted on
        the device (and clamped so no kernel reads out of bounds) and raised by the next read."""
        lo, hi = torch.aminmax(targets)
        nan = top.isnan()
        if targets.device.type == "cpu":
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(f"targets must be class indices in [0, {self.num_classes}), got values from {int(lo)} to {int(hi)}")
            if nan.any():
                rows = nan.nonzero().flatten()
                raise ValueError(f"outputs contain NaN (or +inf) in {len(rows)} of {len(top)} rows, first in row {int(rows[0])}")
            return targets
        self._totals.problems += torch.stack([lo < 0, hi >= self.num_classes, nan.any()])
        return targets.clamp(0, self.num_classes - 1)

    def _batch_indices(self, indices: Any, n: int, device: torch.device) -> torch.Tensor:
        if indices is None:
            self._default_indices = True
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
            raise ValueError(f"flips need two closed epochs (epoch 2..{len(self.history)}), got epoch {epoch}")
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
        return None if self._totals is None else self._totals.device

    def _collect(self) -> None:
        """Filter the pending per-sample records to failures: the one place that waits."""
        if not self._pending:
            return
        index, code, confidence, target_logp = (torch.cat(column).cpu().numpy() for column in zip(*self._pending))
        self._pending, self._pending_samples = [], 0
        true, predicted = np.divmod(code, self.num_classes)
        wrong = true != predicted
        self._seen = _union_runs(self._seen, _runs(np.unique(index)))
        new = _Records(index, true, predicted, confidence, -target_logp).take(wrong)
        self._failed = _Records.concat([self._failed, new])

    def _settle(self) -> None:
        if self._totals is not None:
            _raise_problems(self._totals.problems.cpu(), self._totals.device)
        self._collect()

    def _counts(self, name: str) -> np.ndarray:
        self._settle()
        totals = self._totals or _Totals.zeros(self.num_classes, torch.device("cpu"))
        return getattr(totals, name).cpu().numpy()

    def confusion_matrix(self) -> torch.Tensor:
        """Counts, rows = true class, columns = predicted class (int64, on the CPU)."""
        return torch.from_numpy(self._counts("confusion").reshape(self.num_classes, self.num_classes))

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
            rows.append({"class": self.label(c), "precision": _ratio(tp[c], predicted[c]), "recall": _ratio(tp[c], support[c]),
                         "f1": _ratio(2 * tp[c], support[c] + predicted[c]), "support": int(support[c])})
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
        confidence = self._counts("bin_confidence").astype(np.float64).reshape(n_bins, -1).sum(1)
        return {"edges": np.linspace(0, 1, n_bins + 1), "count": pairs.sum(1), "correct": pairs[:, 1], "confidence": confidence}

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
        if by in self._kept:
            inputs = self._kept[by].inputs.cpu()
            ranked[: self.keep] = [Failure(f.index, f.true, f.predicted, f.confidence, f.loss, inputs[i]) for i, f in enumerate(ranked[: self.keep])]
        return ranked

    def label_issues(self, k: int | None = None) -> list[Failure]:
        """Candidates for wrong labels, most suspicious first: failures whose predicted class gets at
        least that class's threshold, the mean self-confidence of the samples labelled with it
        (confident learning, Northcutt et al. 2021), ranked by self-confidence, lowest first."""
        support = self.confusion_matrix().numpy().sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            threshold = self._counts("self_confidence").astype(np.float64) / support  # NaN: nobody has that label
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
        comm = torch.device("cpu") if dist.get_backend() == "gloo" else torch.device("cuda", torch.cuda.current_device())
        home = self.device or comm
        totals = self._totals or _Totals.zeros(self.num_classes, home)
        extra = torch.tensor([self.samples, int(self._default_indices)], device=home)
        ints = [totals.confusion, totals.bins, totals.problems, extra]
        reals = [totals.bin_confidence, totals.self_confidence]
        ints, reals = _all_reduce(ints, comm), _all_reduce(reals, comm)
        self._totals = _Totals(*(t.to(home) for t in (ints[0], ints[1], reals[0], reals[1], ints[2])))
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
        _raise_problems(self._totals.problems.cpu(), "the processes' devices")
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
        for by in RANKINGS:
            kept = self._kept.get(by) or _Kept.empty(self.keep, like)
            key, index, inputs = (torch.cat(_gather_rows(t, comm)).to(home) for t in (kept.key, kept.index, kept.inputs))
            order = _top(self.keep, key, index)
            self._kept[by] = _Kept(key[order], index[order], inputs[order])

    def _input_spec(self) -> tuple[tuple[int, ...], str] | None:
        if not self._kept:
            return None
        inputs = self._kept[RANKINGS[0]].inputs
        return tuple(inputs.shape[1:]), str(inputs.dtype).removeprefix("torch.")

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
            "most_confused": [{"true": t, "predicted": p, "count": n} for t, p, n in self.most_confused(self.num_classes**2)],
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
            writer.writerow([f.index, f.true, f.predicted, *names, repr(f.confidence), repr(f.self_confidence), repr(f.loss)])

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
            raise ValueError("the model ran twice without targets for the first output: call hook.targets(y) for every forward")
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
                raise ValueError(f"each batch must be (inputs, targets) or (inputs, targets, indices), got {_describe(batch)}")
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
        table.add_row(str(row["class"]), f"{row['support']:,}", f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}")
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
            table.add_row(str(f.index), str(analyzer.label(f.true)), str(analyzer.label(f.predicted)), f"{f.confidence:.3f}", f"{f.loss:.3f}")
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
    return isinstance(value, torch.Tensor) and not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
