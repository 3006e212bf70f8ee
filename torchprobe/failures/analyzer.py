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

import io
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from torchprobe.display import Displayable
from torchprobe.failures import checks, metrics
from torchprobe.failures.collectives import gather_fixed, synced
from torchprobe.failures.hook import FailureHook
from torchprobe.failures.records import EpochRecord, FailureList, json_float
from torchprobe.failures.state import (
    RANKINGS,
    Counters,
    Kept,
    Ranking,
    Records,
    SeenRuns,
    Totals,
    in_runs,
)

SCHEMA = "torchprobe.failures/1"
COLLECT_EVERY = 1 << 20  # samples held as per-batch records before they are filtered (one wait)
SYNCED = ("_totals", "_counters", "_failed", "_seen", "_kept")  # the state sync() merges


class FailureAnalyzer(Displayable):
    """Confusion, per-class metrics, calibration and every misclassified sample of a classifier.

    ``update(outputs, targets, inputs=None, indices=None)`` per batch (logits or log-probabilities,
    any device); read with ``confusion_matrix()``, ``per_class()``, ``most_confused()``,
    ``calibration_error()``, ``failures``, ``worst()``, ``label_issues()``, ``to_dict()``.
    ``keep`` inputs are kept per ranking (by loss and by confidence): at most ``2 * keep`` inputs.
    Arguments are checked at once: a TypeError for a wrong kind (``keep=2.5``), a ValueError for a
    wrong value (``num_classes=0``, ``keep=-1``).
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, *, keep: int = 64) -> None:
        self.num_classes = checks.size("num_classes", num_classes, 2)
        self.class_names = checks.class_names(class_names, self.num_classes)
        self.keep = checks.size("keep", keep, 0)
        self.history: list[EpochRecord] = []
        self.reset()

    def reset(self) -> None:
        """Forget every batch since the last reset (``history`` stays)."""
        self._counters = Counters(0, 0, None)  # problems: counted off the CPU, where checks cannot wait
        self._device: torch.device | None = None
        self._totals = Totals.zeros(self.num_classes)
        self._pending: list[tuple[torch.Tensor, ...]] = []
        self._pending_samples = 0
        self._failed = Records.empty()
        self._seen = SeenRuns.empty()
        self._kept: Kept | None = None
        self._candidates: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # CPU: rows that may enter
        self._candidate_rows = 0
        self._with_inputs: bool | None = None  # decided by the first batch
        self._inputs_like: torch.Tensor | None = None  # an empty batch shaped as the first batch's inputs
        self._merged = False

    @property
    def samples(self) -> int:
        """Samples added since the last reset (on every process, after ``sync()``)."""
        return self._counters.samples

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
        n = checks.batch_size(outputs, targets, inputs, self.num_classes, self._with_inputs, self._inputs_like)
        device = outputs.device
        if self._device is not None and device != self._device:
            raise ValueError(f"outputs are on {device}, earlier batches on {self._device}; reset() first")
        index = checks.batch_indices(indices, n, self.samples, device)
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
            if inputs is not None:
                self._inputs_like = inputs.new_empty((0, *inputs.shape[1:]), device="cpu")
            if inputs is not None and self.keep:
                self._kept = Kept.empty(self.keep, inputs.to(device))
        self._counters.unindexed_batches += indices is None
        self._pending.append((index, code, confidence, target_logp))
        if self._kept is not None:
            keys = torch.stack([target_logp.neg(), confidence])  # loss and confidence: RANKINGS
            keys.masked_fill_(predicted == targets, -math.inf)
            assert inputs is not None  # kept sets exist only for batches with inputs
            self._keep_worst(self._kept, keys, index, inputs.detach().to(device, non_blocking=True))
        self._counters.samples += n
        self._pending_samples += n
        if self._pending_samples >= COLLECT_EVERY:
            self._collect()

    def _keep_worst(self, kept: Kept, keys: torch.Tensor, index: torch.Tensor, inputs: torch.Tensor) -> None:
        """Off the CPU, merge every batch into the kept sets (no value is read). On the CPU, where
        reading is free, set aside only the rows that reach the last kept key (a superset of those
        that enter) and merge them once they are as many as the kept sets hold: fewer, larger merges."""
        if not _reads_are_free(inputs.device):
            self._kept = kept.merge(keys, index, inputs)
            return
        rows = (keys >= kept.key[:, -1:]).any(0).nonzero().squeeze(1)
        if len(rows):
            self._candidates.append((keys[:, rows], index[rows], inputs.index_select(0, rows)))
            self._candidate_rows += len(rows)
            if self._candidate_rows >= kept.key.numel():
                self._merge_candidates()

    def _merge_candidates(self) -> None:
        if self._candidates and self._kept is not None:
            keys, index, inputs = zip(*self._candidates)
            self._kept = self._kept.merge(torch.cat(keys, 1), torch.cat(index), torch.cat(inputs))
            self._candidates, self._candidate_rows = [], 0

    def _target_logp(self, logp: torch.Tensor, targets: torch.Tensor,
                     top: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(target) per sample, and the value checks: on the CPU a ValueError now (``gather``
        checks the range itself); elsewhere counted on the device, the targets clamped so no kernel
        reads out of bounds, and raised by the next read."""
        c, cpu = self.num_classes, targets.device.type == "cpu"
        if not cpu:
            lo, hi = torch.aminmax(targets)
            problems = torch.stack([lo < 0, hi >= c, top.isnan().any()]).long()
            counted = self._counters.problems
            self._counters.problems = problems if counted is None else counted + problems
            targets = targets.clamp(0, c - 1)
        try:
            target_logp = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
        except RuntimeError:
            low, high = (int(v) for v in torch.aminmax(targets))
            if 0 <= low and high < c:
                raise
            raise ValueError(f"targets must be class indices in [0, {c}), got values from {low} to {high}") from None
        if cpu and math.isnan(float(top.sum())):  # NaN anywhere in a row makes its maximum NaN
            rows = top.isnan().nonzero().flatten()
            raise ValueError(f"outputs contain NaN (or +inf) in {len(rows)} of {len(top)} rows, "
                             f"first in row {int(rows[0])}")
        return targets, target_logp

    # -- hooks and loops -----------------------------------------------------------------------------

    def attach(self, module: nn.Module, *, inputs: bool = False,
               select: Callable[[Any], torch.Tensor] | None = None) -> FailureHook:
        """Collect ``module``'s outputs with a forward hook; give each batch's targets with
        ``hook.targets(y)`` before or after its forward. ``inputs=True`` keeps the module's first
        positional input for the gallery; ``select`` picks the logits from a structured output."""
        return FailureHook(self.update, module, inputs, select)

    def end_epoch(self) -> EpochRecord:
        """Close an epoch: keep its numbers and failure set in ``history``, then ``reset()``."""
        self._settle()
        record = EpochRecord(len(self.history) + 1, self.samples, self.errors, self.calibration_error(),
                             np.unique(self._failed.index), self._seen.rows)
        self.history.append(record)
        self.reset()
        return record

    def flips(self, epoch: int | None = None, to: Literal["wrong", "right"] = "wrong") -> np.ndarray:
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
        return candidates[in_runs(candidates, before.seen) & ~np.isin(candidates, before.failed)]

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
        self._seen = self._seen.add(index)
        new = Records(index, true, predicted, confidence, -target_logp).take(wrong)
        self._failed = Records.combine([self._failed, new])

    def _settle(self) -> None:
        if self._counters.problems is not None:
            checks.raise_problems(self._counters.problems.cpu(), self._device)
        self._collect()

    def _counts(self, name: str) -> np.ndarray:
        self._settle()
        return getattr(self._totals, name)

    def _confusion(self) -> np.ndarray:
        """The counts themselves (a view, not a copy: 8*C^2 bytes), for reading only."""
        return self._counts("confusion").reshape(self.num_classes, self.num_classes)

    def confusion_matrix(self) -> torch.Tensor:
        """Counts, rows = true class, columns = predicted class (int64, on the CPU; a copy of
        ``8 * num_classes**2`` bytes, yours to change)."""
        return torch.from_numpy(self._confusion().copy())

    @property
    def errors(self) -> int:
        """Misclassified samples since the last reset: the number of failure records (no copy)."""
        self._settle()
        return len(self._failed)

    @property
    def error_rate(self) -> float:
        """Errors / samples since the last reset (NaN before any sample)."""
        return self.errors / self.samples if self.samples else math.nan

    def per_class(self) -> list[dict[str, Any]]:
        """Per class ``class``, ``precision``, ``recall``, ``f1``, ``support``; 0 where undefined
        (no predictions or no samples of the class), as scikit-learn's ``zero_division=0``."""
        return metrics.per_class(self._confusion(), self.label)

    def most_confused(self, k: int = 10) -> list[tuple[str | int, str | int, int]]:
        """The ``k`` largest off-diagonal cells as ``(true, predicted, count)``, largest first
        (ties by true, then predicted class)."""
        return metrics.most_confused(self._confusion(), k, self.label)

    def reliability(self, n_bins: int = 15) -> dict[str, np.ndarray]:
        """Equal-width bins of the top-class probability: ``edges`` (n_bins + 1), per bin ``count``,
        ``correct`` and ``confidence`` (the sum). Bins are [lo, hi), the last one [lo, 1]."""
        return metrics.reliability(self._counts("bins"), self._counts("bin_confidence"), n_bins)

    def calibration_error(self, n_bins: int = 15) -> float:
        """Expected calibration error of the top-class probability: sum over equal-width bins of
        ``count/N * |accuracy - mean confidence|`` (NaN before any sample)."""
        return metrics.calibration_error(self.reliability(n_bins))

    @property
    def failures(self) -> FailureList:
        """Every misclassified sample since the last reset, by index (then arrival): a read-only
        sequence of :class:`Failure` (a list's ``len``, indexing, iteration, ``==``), made lazily."""
        self._settle()
        return self._failed.failures(self._failed.by_index())

    def worst(self, by: Ranking = "loss", k: int | None = None) -> FailureList:
        """Failures ranked by ``loss`` or ``confidence`` (highest first, ties by index); the first
        ``keep`` carry their ``input`` when inputs were given."""
        if by not in RANKINGS:
            raise ValueError(f"by must be one of {RANKINGS}, got {by!r}")
        self._settle()
        key = self._failed.loss if by == "loss" else self._failed.confidence
        inputs = self._kept.inputs_by(by).cpu() if self._kept is not None else None
        return self._failed.failures(self._failed.ranked(key, k), inputs)

    def label_issues(self, k: int | None = None) -> FailureList:
        """Candidates for wrong labels, most suspicious first: failures whose predicted class gets at
        least that class's threshold, the mean self-confidence of the samples labelled with it
        (confident learning, Northcutt et al. 2021), ranked by self-confidence, lowest first."""
        support = self._confusion().sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            threshold = self._counts("self_confidence") / support  # NaN: nobody has that label
        failed = self._failed
        confident = np.flatnonzero(failed.confidence >= threshold[failed.predicted])
        return failed.failures(failed.ranked(failed.loss, k, confident))

    # -- merging processes ---------------------------------------------------------------------------

    def sync(self) -> FailureAnalyzer:
        """Merge the state of all processes of the default ``torch.distributed`` group (gloo or
        nccl) into each of them, so data-parallel evaluation reports what one process would have.
        Every process must call it, once per evaluation, before reading or ``end_epoch()``; a no-op
        without an initialised group of two or more. Pass ``indices`` to ``update`` so samples keep
        their identity across processes."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return self
        self._collect()
        gloo = dist.get_backend() == "gloo"
        comm = torch.device("cpu") if gloo else torch.device("cuda", torch.cuda.current_device())  # nccl
        home = self._device if self._device is not None else comm
        self._agree(comm, home)
        if self._merged:  # every process is merged already (they agree): nothing to add
            return self
        for name in SYNCED:  # each part of the state merges as it declares (see failures.state)
            state = getattr(self, name)
            if state is not None:
                setattr(self, name, synced(state, comm, home))
        self._merged = True
        if self._counters.problems is not None:
            checks.raise_problems(self._counters.problems, "the processes' devices")
        if self._counters.unindexed_batches:
            warnings.warn("sync(): some batches had no indices, so failure indices count per process; "
                          "pass indices= to update() to identify samples across processes", stacklevel=2)
        return self

    def _agree(self, comm: torch.device, home: torch.device) -> None:
        """Before anything whose size depends on the state travels (gloo aborts the process on a
        size mismatch; nccl hangs), one all_gather of a fixed-size row per process: class count,
        ``keep``, whether merged, and the inputs' presence, dtype and shape. Any disagreement raises
        the same ValueError on every process. A process that saw no batch takes the others' inputs:
        an empty kept set, so that every process gathers alike."""
        row = checks.agreement_row(self.num_classes, self.keep, self._merged, self._with_inputs, self._inputs_like)
        rows = gather_fixed(row, comm)
        problem = checks.disagreement(rows)
        if problem is not None:
            raise ValueError(problem)
        like = next((t for t in (checks.like_of(r, home) for r in rows) if t is not None), None)
        if like is not None and self._with_inputs is None:
            self._with_inputs, self._inputs_like = True, like.cpu()
            if self.keep:
                self._kept = Kept.empty(self.keep, like)

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
            "error_rate": json_float(self.error_rate),
            "calibration_error": json_float(self.calibration_error(n_bins)),
            "n_bins": n_bins,
            "confusion_matrix": self._confusion().tolist(),  # lists straight from the counts: no copy
            "per_class": per_class,
            "macro": {m: float(np.mean([row[m] for row in per_class])) for m in ("precision", "recall", "f1")},
            "most_confused": [{"true": t, "predicted": p, "count": n}
                              for t, p, n in self.most_confused(self.num_classes**2)],
            "label_issues": self.label_issues().indices.tolist(),
            "failures": self.failures.to_dicts() if failures else None,
            "history": [record.to_dict() for record in self.history],
        }

    def to_csv(self, file: str | Path | io.TextIOBase) -> None:
        """Every failure as one CSV row, by index: index, true, predicted (and their names when
        given), confidence, self_confidence, loss."""
        if isinstance(file, (str, Path)):
            with open(file, "w", newline="") as handle:
                self.to_csv(handle)
            return
        metrics.write_csv(file, self.failures, self.label if self.class_names else None)

    def __repr__(self) -> str:  # no device wait: only what the host knows
        return f"FailureAnalyzer(num_classes={self.num_classes}, samples={self.samples}, epochs={len(self.history)})"


# -- helpers -----------------------------------------------------------------------------------------


def _reads_are_free(device: torch.device) -> bool:
    """Reading a value waits for the device everywhere but on the CPU."""
    return device.type == "cpu"
