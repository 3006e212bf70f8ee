"""Watching a run: progress that works with and without a terminal, status lines for the passes
that are not training, and TensorBoard event files.

On a terminal, training shows rich's bar and the other passes (BatchNorm re-estimation,
validation, the final evaluation) a spinner; without one (piped into a file, a job log) a plain
line every ``every`` seconds and at the end of each epoch (step/steps, loss, accuracy, learning
rate, images/s), and one line as each other pass starts.

:class:`Board` writes TensorBoard event files under the run folder's ``tensorboard/`` (rank 0
only): per-step loss and learning rate, per-epoch metrics, the pictures and the failure gallery.
The event file is TensorBoard's append-only log, written by ``SummaryWriter`` as the run goes
(TensorBoard tails it live), so it is the one file of the run folder not written by
``files.write_file``; its folder is made by :func:`files.tensorboard_folder`, which never follows
a planted symlink. Without the ``tensorboard`` package the run says so once and goes on.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mnist_demo.files import tensorboard_folder
from mnist_demo.history import EpochMetrics

PROGRESS_SECONDS = 30.0  # without a terminal: a progress line at least this often (and at each epoch's end)
NO_TENSORBOARD = ("tensorboard is not installed: this run writes no event files "
                  "(pip install tensorboard, or pass --no-tensorboard)")


class EpochProgress:
    """One training pass's progress: ``update`` at each of the trainer's sync points. On a terminal
    rich's transient bar; otherwise a plain line when ``every`` seconds have passed since the last
    one, and always at the last step."""

    def __init__(self, console: Console, epoch: int, epochs: int, steps: int, every: float = PROGRESS_SECONDS,
                 world: int = 1) -> None:
        self.console, self.epoch, self.epochs, self.steps, self.every, self.world = (
            console, epoch, epochs, steps, every, world)
        self.started = self.last_line = time.perf_counter()
        self.progress: Progress | None = None
        if console.is_terminal:
            self.progress = Progress(
                TextColumn("epoch {task.fields[epoch]:>2}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.4f}  lr {task.fields[lr]:.4f}"),
                TimeRemainingColumn(), console=console, transient=True,
            )
            self.task = self.progress.add_task("train", total=steps, epoch=epoch, loss=0.0, acc=0.0, lr=0.0)

    def __enter__(self) -> EpochProgress:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, step: int, loss: float, acc: float, lr: float, seen: int) -> None:
        """``seen``: this rank's images so far this epoch (the line shows every rank's rate)."""
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=loss, acc=acc, lr=lr)
            return
        now = time.perf_counter()
        if step < self.steps and now - self.last_line < self.every:
            return
        self.last_line = now
        rate = seen * self.world / max(now - self.started, 1e-9)
        self.console.print(f"epoch {self.epoch}/{self.epochs}  step {step}/{self.steps}  loss {loss:.4f}  "
                           f"acc {acc:.4f}  lr {lr:.5f}  {rate:,.0f} images/s", markup=False, highlight=False)


@contextmanager
def status(console: Console, text: str) -> Iterator[None]:
    """``text`` while the block runs: a spinner on a terminal, one plain line otherwise."""
    if console.is_terminal:
        with console.status(text):
            yield
        return
    console.print(f"{text} ...", markup=False, highlight=False)
    yield


# -- TensorBoard ------------------------------------------------------------------------------------


def png_size(png: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's header, None for bytes that are not a PNG."""
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


class Board:
    """TensorBoard's event files of one run (or nothing: ``Board()`` writes none)."""

    def __init__(self, writer: Any = None) -> None:
        self.writer = writer

    @classmethod
    def open(cls, out: Path, console: Console, purge_step: int | None = None) -> Board:
        """A writer in ``out/tensorboard``; ``purge_step`` (a resumed run: the steps done) hides the
        events an interrupted run wrote from there on. Without tensorboard: one line, no board."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            console.print(NO_TENSORBOARD, markup=False, highlight=False)
            return cls()
        return cls(SummaryWriter(str(tensorboard_folder(out)), purge_step=purge_step or None))

    @property
    def active(self) -> bool:
        return self.writer is not None

    def steps(self, first: int, losses: Sequence[float], lrs: Sequence[float]) -> None:
        """Optimizer steps ``first``, ``first + 1``, ...: their batch's mean loss and learning rate."""
        if self.writer is None:
            return
        for i, (loss, lr) in enumerate(zip(losses, lrs)):
            self.writer.add_scalar("step/loss", loss, first + i)
            self.writer.add_scalar("step/lr", lr, first + i)

    def epoch(self, row: EpochMetrics) -> None:
        if self.writer is None:
            return
        for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_errors",
                     "val_calibration_error", "flipped_to_wrong", "lr", "epoch_seconds"):
            self.writer.add_scalar(f"epoch/{name}", getattr(row, name), row.epoch)
        self.writer.flush()  # TensorBoard shows each epoch as it ends

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, png: bytes, step: int) -> None:
        """A PNG as it is (no decoding, no re-encoding); bytes that are not a PNG are skipped."""
        size = png_size(png)
        if self.writer is None or size is None:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary  # type: ignore[import-untyped, import-not-found, unused-ignore]

        width, height = size
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def pictures(self, out: Path, names: Mapping[str, str], step: int) -> None:
        """The run folder's PNGs ``names`` (tag -> file name) as images at ``step``."""
        if self.writer is None:
            return
        for tag, name in names.items():
            path = out / name
            if path.is_file():
                self.image(tag, path.read_bytes(), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
