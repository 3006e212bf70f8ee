"""The run folder's layout and its safe IO: every file name once, atomic writes, ``weights_only`` reads.

The names are the run folder's public interface (docs, scripts and resumed runs read them), so each
is spelled here only; the writers (``run_folder.py``, ``report.py``) and the tests use these.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"  # everything --resume needs, rewritten after every epoch
MODEL = "model.pt"  # the final weights (a state dict)
METRICS = "metrics.json"  # the run's settings, the per-epoch history and the final scores
SUMMARY = "summary.txt"  # torchprobe's summary of the model, as evaluated
REPORT = "report.md"  # one page that ties the folder together
VAL_FAILURES = "val_failures.csv"  # every misclassified validation image
CURVES = "curves.png"  # loss and accuracy per epoch
SAMPLES = "samples.png"  # augmented training images
FAILURES = "failures.png"  # the worst validation failures by loss
CONFUSION = "confusion.png"  # the validation confusion matrix


def new_run_folder(out: str | os.PathLike[str] | None) -> Path:
    """``out``, or ``runs/<timestamp>`` when none is given; created if missing."""
    path = Path(out) if out else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp_path)`` then rename: a crash never leaves a half-written file under ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(obj: object, path: Path) -> None:
    """Atomically, so an interrupt mid-save keeps the previous checkpoint."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_tensors(path: Path) -> Any:
    """Only tensors, numbers, strings and containers: nothing in the file is executed."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_json(obj: object, path: Path) -> None:
    """Atomically, so readers of a live run never see half a file."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))
