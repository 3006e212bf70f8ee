"""Watching a demo run (issue 14, deliverables 3-5): the run folder's new pictures, TensorBoard
event files (read back), progress and status lines without a terminal, the curves figure.

Fast on purpose: one real one-epoch run on 128 synthetic images with every picture drawn and
TensorBoard on (the module's fixture); the CLI runs stub the pictures as tests/test_run_folder.py
does."""

from __future__ import annotations

import builtins
import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from mnist_demo import files, run_folder
from mnist_demo.files import ERF, EVENT_FILE_PREFIX, PICTURES, REPORT, RF, TENSORBOARD, new_run_folder
from mnist_demo.history import EpochMetrics
from mnist_demo.pictures import save_figure
from mnist_demo.recipe import DEFAULT
from mnist_demo.train import TrainConfig, run_training
from mnist_demo.watch import NO_TENSORBOARD, png_size
from tests.test_run_folder import CLI, run_demo, stub_pictures, synthetic

pytest.importorskip("matplotlib")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

STEPS = 32  # 128 images in batches of 4: a sync (and a progress line) at step 25, mid-epoch, and at 32


def blank() -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(1.5, 1.5))


@pytest.fixture(scope="module")
def piped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One epoch with every new picture drawn and TensorBoard on, its console not a terminal (a
    pipe). The pictures that were there before (32-image grids: seconds to draw) are blank PNGs."""
    folder = tmp_path_factory.mktemp("watched")
    output = io.StringIO()
    config = TrainConfig(DEFAULT.replace(epochs=1, batch_size=4), folder, seed=3, device="cpu", limit=128,
                         eval_limit=100, tensorboard=True, progress_seconds=0.0)
    mp = pytest.MonkeyPatch()
    mp.setattr(run_folder, "samples", lambda images, labels, path: save_figure(blank(), path))
    mp.setattr(run_folder.plots, "gallery", lambda *a, **k: blank())
    mp.setattr(run_folder.plots, "confusion", lambda *a, **k: blank())
    try:
        metrics = run_training(config, synthetic(), Console(file=output, width=160))
    finally:
        mp.undo()
    return {"folder": folder, "output": output.getvalue(), "metrics": metrics}


def events(folder: Path) -> Any:
    runs = [p for p in (folder / TENSORBOARD).iterdir() if p.name.startswith(EVENT_FILE_PREFIX)]
    assert len(runs) == 1, runs
    accumulator = event_accumulator.EventAccumulator(str(runs[0]), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_the_run_folder_has_every_picture_as_a_valid_png(piped: dict[str, Any]) -> None:
    folder = piped["folder"]
    for name in PICTURES:
        data = (folder / name).read_bytes()
        size = png_size(data)
        assert size is not None and min(size) > 100, name
    report = (folder / REPORT).read_text()
    assert all(f"]({name})" in report for name in PICTURES), report
    assert "| stage 3 (3x3) | `dropout5` | 32x32 | 784 |" in report  # the ERF table


def test_metrics_hold_the_erf_per_stage_initial_and_trained(piped: dict[str, Any]) -> None:
    erf = piped["metrics"]["erf"]
    assert erf["layers"] == ["dropout1", "dropout3", "dropout5", "gap"] and erf["images"] == 100
    for when in ("initial", "trained"):
        rows = erf[when]
        assert [r["rf"] for r in rows] == [[5, 5], [14, 14], [32, 32], [44, 44]]
        assert all(abs(r["inside"] - 1) < 1e-9 and 0 < r["area50"] < r["area95"] <= 1 for r in rows)


def test_event_file_has_per_step_per_epoch_and_image_tags(piped: dict[str, Any]) -> None:
    board = events(piped["folder"])
    tags = board.Tags()
    assert {"step/loss", "step/lr"} <= set(tags["scalars"])
    assert [e.step for e in board.Scalars("step/loss")] == list(range(1, STEPS + 1))
    lrs = [e.value for e in board.Scalars("step/lr")]
    assert max(lrs) > 10 * lrs[0]  # the one-cycle warm-up, step by step
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_errors", "lr"):
        assert [e.step for e in board.Scalars(f"epoch/{name}")] == [1], name
    history = piped["metrics"]["history"][0]
    assert board.Scalars("epoch/val_accuracy")[0].value == pytest.approx(history["val_accuracy"])
    assert {"test/loss", "test/accuracy"} <= set(tags["scalars"])
    assert {"pictures/curves", "pictures/erf", "pictures/rf", "failures/gallery", "failures/reliability",
            "failures/confusion_errors", "failures/per_class", "failures/most_confused"} <= set(tags["images"])
    image = board.Images("pictures/erf")[0]
    assert image.encoded_image_string == (piped["folder"] / ERF).read_bytes()
    assert (image.width, image.height) == png_size(image.encoded_image_string)


def test_piped_output_has_progress_lines_during_the_epoch_and_status_lines(piped: dict[str, Any]) -> None:
    lines = piped["output"].splitlines()
    progress = [line for line in lines if line.startswith("epoch 1/1  step ")]
    assert [line.split()[3] for line in progress] == [f"25/{STEPS}", f"{STEPS}/{STEPS}"], progress
    assert all("loss " in line and line.endswith("images/s") for line in progress)
    status = [line for line in lines if line.endswith(" ...")]
    assert status == ["epoch 1: re-estimating BatchNorm statistics on clean training images ...",
                      "epoch 1: validating (100 images) ...",
                      "final evaluation: validation failures (100 images) and the official test set (100 images) ..."]
    assert lines.index(progress[-1]) < lines.index(status[0])


def test_curves_overlay_train_and_validation_with_integer_epoch_ticks() -> None:
    from mnist_demo.pictures import curves_figure

    history = [EpochMetrics(epoch=e, train_loss=1 / e, train_accuracy=0.9 + 0.02 * e, val_loss=0.8 / e,
                            val_accuracy=0.95 + 0.01 * e, val_errors=50 // e, val_calibration_error=0.01,
                            flipped_to_wrong=e, lr=0.01, optimizer_steps=10 * e, epoch_seconds=1.0)
               for e in (1, 2, 3)]
    lrs = [0.004 + 0.001 * i for i in range(30)]
    fig = curves_figure(history, lrs)
    loss, accuracy, rate, errors = fig.axes
    for ax in (loss, accuracy):
        assert [line.get_label() for line in ax.get_lines()] == ["train (augmented)", "validation"]
        assert all(list(line.get_xdata()) == [1, 2, 3] for line in ax.get_lines())
    assert list(accuracy.get_lines()[1].get_ydata()) == pytest.approx([0.96, 0.97, 0.98])
    low, high = accuracy.get_ylim()
    assert high == 1.0 and 0.85 < low < 0.92  # not running to 1.04, not from 0
    assert accuracy.get_ylabel() and loss.get_ylabel() and rate.get_ylabel()
    assert len(rate.get_lines()[0].get_ydata()) == len(lrs)  # per step
    assert rate.get_lines()[0].get_xdata()[-1] == pytest.approx(3)
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)


def test_tensorboard_is_on_by_default_and_no_tensorboard_writes_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stub_pictures(monkeypatch)
    code, out, _ = run_demo([*CLI, "--out", str(tmp_path / "on")], monkeypatch, capsys)
    assert code == 0, out
    assert len([p for p in (tmp_path / "on" / TENSORBOARD).iterdir() if p.name.startswith(EVENT_FILE_PREFIX)]) == 1
    code, out, _ = run_demo([*CLI, "--out", str(tmp_path / "off"), "--no-tensorboard"], monkeypatch, capsys)
    assert code == 0, out
    assert not (tmp_path / "off" / TENSORBOARD).exists()


def test_without_tensorboard_the_run_says_so_once_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub_pictures(monkeypatch)
    real_import = builtins.__import__

    def no_tensorboard(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith(("tensorboard", "torch.utils.tensorboard")):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    output = io.StringIO()
    config = TrainConfig(DEFAULT.replace(epochs=2, batch_size=64), tmp_path, seed=3, device="cpu", limit=128,
                         eval_limit=100, tensorboard=True)
    metrics = run_training(config, synthetic(), Console(file=output, width=400))
    assert metrics["finished"] and output.getvalue().count(NO_TENSORBOARD) == 1
    assert not (tmp_path / TENSORBOARD).exists()


def test_overwrite_removes_the_event_files_and_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    run, outside = tmp_path / "run", tmp_path / "outside"
    (run / TENSORBOARD).mkdir(parents=True)
    outside.mkdir()
    (run / TENSORBOARD / f"{EVENT_FILE_PREFIX}1.host.1.0").write_bytes(b"old events")
    (run / TENSORBOARD / "notes.txt").write_text("mine")
    (run / files.METRICS).write_text("{}")
    new_run_folder(run, overwrite=True)
    assert [p.name for p in (run / TENSORBOARD).iterdir()] == ["notes.txt"]
    (run / TENSORBOARD / "notes.txt").unlink()
    (run / TENSORBOARD).rmdir()
    (run / TENSORBOARD).symlink_to(outside)
    assert files.tensorboard_folder(run).is_dir() and not (run / TENSORBOARD).is_symlink()
    assert list(outside.iterdir()) == []
    assert RF in files.RUN_FILES and ERF in files.RUN_FILES
