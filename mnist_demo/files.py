"""The run folder: metrics, checkpoints (atomic, ``weights_only`` loadable) and the report."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
METRICS = "metrics.json"


def new_run_folder(out: str | os.PathLike | None) -> Path:
    path = Path(out) if out else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, write: Any) -> None:
    """``write(tmp_path)`` then rename: a crash never leaves a half-written file under ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_tensors(path: Path) -> Any:
    """Only tensors, numbers, strings and containers: nothing in the file is executed."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_json(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))
