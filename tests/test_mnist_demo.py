"""The reference workload on a subset: it learns, writes its run folder, and resumes exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from mnist_demo.data import load_mnist
from mnist_demo.model import Net
from mnist_demo.recipe import DEFAULT, SEED
from mnist_demo.run import load_tensors
from mnist_demo.train import Trainer, TrainConfig, run_training
from tests.processes import wait_for

RUN_FILES = {"metrics.json", "curves.png", "samples.png", "failures.png", "confusion.png", "summary.txt", "model.pt",
             "report.md", "val_failures.csv", "checkpoint.pt"}


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


def quiet() -> Console:
    return Console(file=open("/dev/null", "w"), width=160)  # noqa: SIM115 - closed with the process


def short(out: Path, epochs: int = 3, **overrides) -> TrainConfig:
    return TrainConfig(DEFAULT.replace(epochs=epochs, batch_size=64), out, seed=3, device="cpu", limit=2048, **overrides)


def test_a_short_run_learns_and_writes_the_run_folder(mnist, tmp_path: Path) -> None:
    metrics = run_training(short(tmp_path), mnist, quiet())
    history = metrics["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.8  # chance is 0.1
    assert metrics["test"]["accuracy"] > 0.8
    assert RUN_FILES <= {p.name for p in tmp_path.iterdir()}
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["history"] == json.loads(json.dumps(history)) and saved["train_images"] == 2048
    assert {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds"} <= set(history[0])


def test_model_checkpoint_round_trip(mnist, tmp_path: Path) -> None:
    run_training(short(tmp_path, epochs=1), mnist, quiet())
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    model = Net(dropout_scale=DEFAULT.dropout_scale)
    model.load_state_dict(state)
    assert sum(p.numel() for p in model.parameters()) == 19_344
    assert not list(tmp_path.glob(".*"))  # no temporary file left by the atomic writes


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
    assert load_tensors(interrupted / "checkpoint.pt")["epoch"] == 1
    monkeypatch.setattr(Trainer, "train_epoch", original)
    run_training(short(interrupted, epochs=2, resume=True), mnist, quiet())

    a, b = load_tensors(straight / "model.pt"), load_tensors(interrupted / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((interrupted / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    straight_history = json.loads((straight / "metrics.json").read_text())["history"]
    timeless = [[{k: v for k, v in h.items() if k != "epoch_seconds"} for h in run] for run in (straight_history, history)]
    assert timeless[0] == timeless[1]  # "newly wrong" included: the failure history was checkpointed too


def test_ctrl_c_in_a_terminal_stops_with_a_checkpoint_and_resumes(tmp_path: Path) -> None:
    """A real SIGINT to ``python -m mnist_demo train``: exit 130, a message naming --resume, the
    last finished epoch saved; ``--resume`` then finishes the run."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mnist_demo", "train", "--epochs", "3", "--batch-size", "64", "--limit", "2048",
               "--device", "cpu", "--seed", "3", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(out / "checkpoint.pt", process)
    assert process.poll() is None, "training ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "--resume --out" in output and "Traceback" not in output
    assert load_tensors(out / "checkpoint.pt")["epoch"] >= 1
    assert not list(out.glob(".*"))  # no half-written file
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [h["epoch"] for h in json.loads((out / "metrics.json").read_text())["history"]] == [1, 2, 3]


def test_resume_refuses_another_recipe(mnist, tmp_path: Path) -> None:
    run_training(short(tmp_path, epochs=1), mnist, quiet())
    other = TrainConfig(SEED.replace(epochs=1, batch_size=64), tmp_path, seed=3, device="cpu", limit=2048, resume=True)
    with pytest.raises(ValueError, match="another recipe"):
        run_training(other, mnist, quiet())
