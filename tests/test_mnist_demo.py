"""The reference workload on a subset: it learns, writes its run folder, and resumes exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from rich.console import Console

from mnist_demo import console as console_script
from mnist_demo.data import load_mnist
from mnist_demo.files import (
    CHECKPOINT,
    CONFUSION,
    CURVES,
    FAILURES,
    METRICS,
    MODEL,
    REPORT,
    SAMPLES,
    SUMMARY,
    VAL_FAILURES,
    load_tensors,
)
from mnist_demo.history import EpochMetrics
from mnist_demo.model import Net
from mnist_demo.recipe import DEFAULT, SEED
from mnist_demo.train import TrainConfig, Trainer, run_training
from tests.helpers.processes import wait_for

RUN_FILES = {METRICS, CURVES, SAMPLES, FAILURES, CONFUSION, SUMMARY, MODEL, REPORT, VAL_FAILURES, CHECKPOINT}
HISTORY_KEYS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_errors",
                "val_calibration_error", "flipped_to_wrong", "lr", "optimizer_steps", "epoch_seconds"]


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


def quiet() -> Console:
    return Console(file=open("/dev/null", "w"), width=160)  # noqa: SIM115 - closed with the process


def short(out: Path, epochs: int = 3, **overrides) -> TrainConfig:
    recipe = DEFAULT.replace(epochs=epochs, batch_size=64)
    return TrainConfig(recipe, out, seed=3, device="cpu", limit=2048, eval_limit=1000, **overrides)


@pytest.mark.slow
def test_a_short_run_learns_and_writes_the_run_folder(mnist, tmp_path: Path) -> None:
    metrics = run_training(short(tmp_path), mnist, quiet())
    history = metrics["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.8  # chance is 0.1
    assert metrics["test"]["accuracy"] > 0.8
    assert RUN_FILES <= {p.name for p in tmp_path.iterdir()}
    saved = json.loads((tmp_path / METRICS).read_text())
    assert saved["history"] == json.loads(json.dumps(history)) and saved["train_images"] == 2048
    assert {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
            "epoch_seconds"} <= set(history[0])
    assert [list(h) for h in saved["history"]] == [HISTORY_KEYS] * 3  # metrics.json's rows as before EpochMetrics


def test_epoch_metrics_are_the_json_rows_of_the_history() -> None:
    """``metrics.json`` and checkpoints keep the keys (and order) of the dicts the history used to be,
    so rows written before EpochMetrics read back."""
    row = {key: i for i, key in enumerate(HISTORY_KEYS)}
    metrics = EpochMetrics.from_dict(row)
    assert metrics.to_dict() == row and list(metrics.to_dict()) == HISTORY_KEYS
    assert metrics.val_accuracy == row["val_accuracy"] and metrics.epoch_seconds == row["epoch_seconds"]


@pytest.mark.slow
def test_model_checkpoint_round_trip(mnist, tmp_path: Path) -> None:
    run_training(short(tmp_path, epochs=1), mnist, quiet())
    state = torch.load(tmp_path / MODEL, weights_only=True)
    model = Net(dropout_scale=DEFAULT.dropout_scale)
    model.load_state_dict(state)
    assert sum(p.numel() for p in model.parameters()) == 19_344
    assert not list(tmp_path.glob(".*"))  # no temporary file left by the atomic writes


@pytest.mark.slow
def test_resume_continues_exactly_where_the_interrupt_stopped(mnist, tmp_path: Path, monkeypatch) -> None:
    straight = tmp_path / "straight"
    run_training(short(straight, epochs=2), mnist, quiet())

    interrupted = tmp_path / "interrupted"
    original = Trainer.train_epoch
    calls = {"n": 0}

    def stop_in_epoch_two(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", stop_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run_training(short(interrupted, epochs=2), mnist, quiet())
    assert load_tensors(interrupted / CHECKPOINT)["epoch"] == 1
    monkeypatch.setattr(Trainer, "train_epoch", original)
    run_training(short(interrupted, epochs=2, resume=True), mnist, quiet())

    a, b = load_tensors(straight / MODEL), load_tensors(interrupted / MODEL)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((interrupted / METRICS).read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    straight_history = json.loads((straight / METRICS).read_text())["history"]
    timeless = [[{k: v for k, v in h.items() if k != "epoch_seconds"} for h in run]
                for run in (straight_history, history)]
    assert timeless[0] == timeless[1]  # "newly wrong" included: the failure history was checkpointed too


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_stops_with_a_checkpoint_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real SIGINT to ``python -m mnist_demo train``: exit 130, a message naming --resume, the
    last finished epoch saved; ``--resume`` then finishes the run."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mnist_demo", "train", "--epochs", "3", "--batch-size", "64", "--limit", "2048",
               "--eval-limit", "1000", "--device", "cpu", "--seed", "3", "--out", str(out)]
    # as a terminal starts it: SIGINT at its default, even when this suite runs as a background job
    # (a shell without job control starts those with SIGINT ignored, and the child inherits that)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(out / CHECKPOINT, process)
    assert process.poll() is None, "training ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "--resume --out" in output and "Traceback" not in output
    assert load_tensors(out / CHECKPOINT)["epoch"] >= 1
    assert not list(out.glob(".*"))  # no half-written file
    code, _, stderr = run_demo([*command[3:], "--resume"], monkeypatch, capsys)  # the same command, in-process
    assert code == 0, stderr
    assert [h["epoch"] for h in json.loads((out / METRICS).read_text())["history"]] == [1, 2, 3]


@pytest.mark.slow
def test_resume_refuses_another_recipe(mnist, tmp_path: Path) -> None:
    run_training(short(tmp_path, epochs=1), mnist, quiet())
    other = TrainConfig(SEED.replace(epochs=1, batch_size=64), tmp_path, seed=3, device="cpu", limit=2048, resume=True)
    with pytest.raises(ValueError, match=r"other settings: recipe default \(now seed\)"):
        run_training(other, mnist, quiet())


@pytest.mark.parametrize(
    ("args", "mentions"),
    [(["train", "--epochs", "0"], "--epochs"),  # found by typer
     (["train", "--recipe", "nope"], "--recipe"),  # found by the command
     (["train", "--resume"], "--out")],
)
def test_usage_errors_are_one_error_line(
    args: list[str], mentions: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m mnist_demo`` with a bad option: exit 2 and one ``error:`` line on stderr (no
    traceback, no typer panel), before any training. (The Ctrl-C test runs the real process.)"""
    code, stdout, stderr = run_demo(args, monkeypatch, capsys)
    assert code == 2, stdout + stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and mentions in lines[0], stderr


def run_demo(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """``python -m mnist_demo ARGS`` in this process: exit code, stdout, stderr."""
    from mnist_demo.__main__ import app

    monkeypatch.setattr(sys, "argv", ["mnist_demo", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        console_script.run(app)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_an_abort_is_error_interrupted(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C that typer turns into ``Abort`` (at a prompt, say): ``error: interrupted``, exit 130."""
    app = typer.Typer()

    @app.command()
    def stop() -> None:
        raise typer.Abort()

    monkeypatch.setattr(sys, "argv", ["mnist_demo"])
    with pytest.raises(SystemExit) as exit_info:
        console_script.run(app)
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "error: interrupted\n"
