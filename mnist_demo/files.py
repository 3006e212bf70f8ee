"""The run folder's layout and its safe IO: every file name once, atomic writes, ``weights_only`` reads.

The names are the run folder's public interface (docs, scripts and resumed runs read them), so each
is spelled here only; the writers (``run_folder.py``, ``report.py``, ``pictures.py``) and the tests
use these.

Every file of a run folder is written by :func:`write_file`: the bytes go to a new temporary file in
the same folder (created with ``O_EXCL | O_NOFOLLOW``), which is fsynced and renamed over the name,
then the folder is fsynced. A crash leaves the previous file or the new one, never half of one; a
symlink planted under the name is replaced, its target is never written; every file gets the mode
``0666`` less the umask. The temporary files a crash leaves behind (``.<name>.*``) are removed when
a run starts or resumes in the folder (:func:`remove_temp_files`).

One exception: TensorBoard's event files under ``tensorboard/`` are append-only logs that
TensorBoard tails while the run goes, written by its ``SummaryWriter`` under new, unique names;
their folder is made by :func:`tensorboard_folder`, which replaces a planted symlink instead of
following it, and ``--overwrite`` removes them.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import tempfile
from contextlib import suppress
from datetime import datetime
from itertools import count
from pathlib import Path
from typing import Any

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
CONFUSION_ERRORS = "confusion_errors.png"  # the same, errors only (diagonal masked)
RELIABILITY = "reliability.png"  # the reliability diagram of the final validation pass
MOST_CONFUSED = "most_confused.png"  # the most frequent (true -> predicted) mistakes
PER_CLASS = "per_class.png"  # validation accuracy (recall) per class
RF = "rf.png"  # theoretical receptive-field windows of a few units per stage over a validation digit
ERF = "erf.png"  # the effective receptive field per stage, initial weights and trained
TENSORBOARD = "tensorboard"  # a folder: TensorBoard's event files (events.out.tfevents.*)
EVENT_FILE_PREFIX = "events.out.tfevents."

PICTURES = (CURVES, SAMPLES, FAILURES, CONFUSION, CONFUSION_ERRORS, RELIABILITY, MOST_CONFUSED, PER_CLASS, RF, ERF)
RUN_FILES = (CHECKPOINT, MODEL, METRICS, SUMMARY, REPORT, VAL_FAILURES, *PICTURES)
RUN_MARKERS = (CHECKPOINT, METRICS, MODEL)  # a folder holding one of these holds a run (started or finished)
_PROBE = "write-check"  # the name of the file that checks a folder can be written
_TEMP_PREFIXES = tuple(f".{name}." for name in (*RUN_FILES, _PROBE))


class RunFolderError(ValueError):
    """A run folder, or a file in it, that cannot be used: the message is one line for ``error: ...``
    and names the folder or file."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


# -- the folder ---------------------------------------------------------------------------------


def _timestamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def new_run_folder(
    out: str | os.PathLike[str] | None, *, resume: bool = False, overwrite: bool = False
) -> Path:
    """The run folder, checked and ready to write.

    ``out=None``: a new ``runs/<timestamp>`` (``-2``, ``-3``... when that name is taken: the folder
    is created with one ``mkdir``, so simultaneous launches never share one). Otherwise ``out``,
    created if missing; one that already holds a run (a checkpoint, metrics or model) needs
    ``resume`` (continue it: it must have a checkpoint) or ``overwrite`` (its run files are deleted
    first). Raises :class:`RunFolderError` for a file in the way, a folder that cannot be written,
    or one holding a run. Temporary files left by a crash are removed."""
    if overwrite and resume:
        raise RunFolderError("--resume and --overwrite exclude each other")
    if out is None:
        if resume:
            raise RunFolderError("--resume needs --out: the run folder to continue")
        path = _unique_folder(Path("runs"), _timestamp())
    else:
        path = Path(out)
        if os.path.lexists(path) and not path.is_dir():
            raise RunFolderError(f"--out {path} is a file, not a folder")
        if resume and not path.is_dir():
            raise RunFolderError(f"--resume: no run folder {path}")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunFolderError(f"--out {path}: cannot create the folder: {_reason(error)}") from error
    _check_writable(path)
    remove_temp_files(path)
    held = [name for name in RUN_MARKERS if os.path.lexists(path / name)]
    if resume:
        if not os.path.lexists(path / CHECKPOINT):
            raise RunFolderError(f"--resume: no {CHECKPOINT} in {path}")
    elif held and not overwrite:
        raise RunFolderError(f"{path} already holds a run ({', '.join(held)}): continue it with --resume, "
                             f"or replace it with --overwrite")
    elif held:
        for name in RUN_FILES:  # a symlink: the link goes, not its target
            try:
                (path / name).unlink(missing_ok=True)
            except OSError as error:
                raise RunFolderError(f"--overwrite: cannot remove {path / name}: {_reason(error)}") from error
        _remove_event_files(path / TENSORBOARD)
    return path


def _remove_event_files(folder: Path) -> None:
    """``--overwrite``: the earlier run's TensorBoard events (a symlink in their place: the link only)."""
    try:
        if folder.is_symlink() or (os.path.lexists(folder) and not folder.is_dir()):
            folder.unlink()
            return
        if not folder.is_dir():
            return
        for entry in folder.iterdir():
            if entry.name.startswith(EVENT_FILE_PREFIX) and (entry.is_symlink() or entry.is_file()):
                entry.unlink()
    except OSError as error:
        raise RunFolderError(f"--overwrite: cannot remove the events in {folder}: {_reason(error)}") from error


def tensorboard_folder(out: Path) -> Path:
    """``out/tensorboard``, a real folder: a symlink or a file planted under the name is removed
    (never followed), as :func:`write_file` replaces one under a file's name."""
    folder = out / TENSORBOARD
    if folder.is_symlink() or (os.path.lexists(folder) and not folder.is_dir()):
        folder.unlink()
    folder.mkdir(exist_ok=True)
    return folder


def _unique_folder(parent: Path, stem: str) -> Path:
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for n in count(1):
            path = parent / (stem if n == 1 else f"{stem}-{n}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return path
    except OSError as error:
        raise RunFolderError(f"cannot create a run folder in {parent}: {_reason(error)}") from error
    raise AssertionError("unreachable")


def _check_writable(folder: Path) -> None:
    """Create and remove a file: a read-only file system or folder fails here, before any training."""
    try:
        fd, tmp = _create_temp(folder, _PROBE)
        os.close(fd)
        os.unlink(tmp)
    except OSError as error:
        raise RunFolderError(f"--out {folder}: cannot write there: {_reason(error)}") from error


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files an interrupted write left in ``folder`` (``.<run file>.*``); returns them."""
    removed = []
    with suppress(FileNotFoundError):
        for entry in folder.iterdir():
            if entry.name.startswith(_TEMP_PREFIXES):
                with suppress(FileNotFoundError):
                    entry.unlink()
                    removed.append(entry)
    return removed


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


# -- writing ------------------------------------------------------------------------------------


def _create_temp(folder: Path, name: str) -> tuple[int, str]:
    """A new, empty temporary file next to ``name`` (``O_EXCL``: never an existing file or symlink)."""
    return tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def file_mode() -> int:
    """``0666`` less the process's umask: the mode of every file of the run folder."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_file(path: Path, data: bytes) -> None:
    """``data`` under ``path``, atomically and durably (see the module's docstring). An ``OSError``
    (a full disk, say) names ``path``; the previous file stays and no temporary file is left."""
    folder = path.parent
    tmp = None
    try:
        fd, tmp = _create_temp(folder, path.name)
        try:
            os.fchmod(fd, file_mode())
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)  # a symlink at ``path`` is replaced itself, its target untouched
        tmp = None
        _fsync_folder(folder)
    except OSError as error:
        raise OSError(error.errno, _reason(error), str(path)) from error
    finally:
        if tmp is not None:
            with suppress(OSError):
                os.unlink(tmp)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as error:  # some file systems cannot fsync a directory
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def save_text(text: str, path: Path) -> None:
    write_file(path, text.encode())


def save_json(obj: object, path: Path) -> None:
    """Atomically, so readers of a live run never see half a file."""
    save_text(json.dumps(obj, indent=2) + "\n", path)


def save_tensors(obj: object, path: Path) -> None:
    """Atomically, so an interrupt mid-save keeps the previous checkpoint. Serialised in memory
    first: a full disk is an ``OSError`` of the write, not an error inside ``torch.save``."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_file(path, buffer.getvalue())


# -- reading ------------------------------------------------------------------------------------


def load_tensors(path: Path) -> Any:
    """Only tensors, numbers, strings and containers: nothing in the file is executed. A missing,
    empty, truncated, corrupt or foreign file raises :class:`RunFolderError` naming it."""
    import torch

    try:
        size = os.stat(path).st_size
    except OSError as error:
        raise RunFolderError(f"{path}: cannot read it: {_reason(error)}") from error
    if size == 0:
        raise RunFolderError(f"{path}: the file is empty (a crash or a full disk while it was written?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = _unpickling_reason(error)
        if "global" in reason.lower():  # a class or function to import: what a malicious file needs
            raise RunFolderError(f"{path}: refused: it holds more than tensors and plain containers "
                                 f"({reason}); nothing in it was run") from error
        raise RunFolderError(f"{path}: not a readable PyTorch file (corrupt: {reason})") from error
    except Exception as error:  # anything the parser of an untrusted file raises: the file is bad
        raise RunFolderError(f"{path}: not a readable PyTorch file (truncated or corrupt: "
                             f"{type(error).__name__}: {_first_line(error)})") from error


def _unpickling_reason(error: pickle.UnpicklingError) -> str:
    """What ``weights_only`` objected to, without PyTorch's paragraphs of advice around it."""
    advice = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(error).splitlines()]
    reasons = [line for line in lines if line and not line.startswith(advice)]
    return (reasons[0] if reasons else _first_line(error))[:160]


def load_state_dict(path: Path) -> dict[str, Any]:
    """A state dict saved by :func:`save_tensors` (``model.pt``): names to tensors, checked."""
    import torch

    state = load_tensors(path)
    if not isinstance(state, dict) or not state:
        raise RunFolderError(f"{path}: not a state dict (a {type(state).__name__})")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise RunFolderError(f"{path}: not a state dict of tensors ({key!r}: a {type(value).__name__})")
    return state


def _first_line(error: BaseException) -> str:
    """The first sentence of the first line (PyTorch's messages go on with advice)."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line.split(". ")[0].rstrip(".")[:160]
