"""The demo's thread count (``--threads``, ``mnist_demo.threads``) and its ``--channels-last`` option."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mnist_demo import console as console_script
from mnist_demo.threads import AUTO_MAX, available_cores, choose_threads
from mnist_demo.train import TrainConfig

IDLE = 0.0


@pytest.mark.parametrize(
    ("option", "env", "cores", "load", "expected", "reason"),
    [("3", {"OMP_NUM_THREADS": "1"}, 2, IDLE, 3, "--threads"),  # an explicit option wins over everything
     ("auto", {"OMP_NUM_THREADS": "4"}, 2, 9.0, 4, "OMP_NUM_THREADS"),  # then the environment, busy or not
     ("auto", {"OMP_NUM_THREADS": "0"}, 2, IDLE, 2, "auto"),  # an unusable value is not a choice
     ("auto", {"OMP_NUM_THREADS": "x"}, 2, IDLE, 2, "auto"),
     ("auto", {}, 2, IDLE, 2, "auto"),  # idle cores: up to two threads
     ("auto", {}, 16, IDLE, AUTO_MAX, "auto"),
     ("auto", {}, 2, 0.3, 2, "auto"),  # an idle machine's background noise
     ("auto", {}, 2, 0.9, 1, "load average"),  # another job on one of the two cores: one thread
     ("auto", {}, 2, 7.0, 1, "load average"),  # the busy machine of the issue
     ("auto", {}, 1, IDLE, 1, "auto"),
     ("auto", {"LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "4"}, 2, IDLE, 1, "2 process"),  # DDP: cores // ranks
     ("auto", {"LOCAL_WORLD_SIZE": "2"}, 4, IDLE, 2, "auto"),
     ("auto", {"LOCAL_WORLD_SIZE": "2"}, 4, 1.0, 1, "load average"),  # 1.0 + 2 x 2 threads > 4 cores
     ("auto", {"WORLD_SIZE": "3"}, 2, IDLE, 1, "auto")],  # no LOCAL_WORLD_SIZE: the world size
)
def test_the_thread_choice(option: str, env: dict[str, str], cores: int, load: float, expected: int,
                           reason: str) -> None:
    threads, why = choose_threads(option, env=env, cores=cores, load=load)
    assert threads == expected and reason in why, why


@given(cores=st.integers(0, 256), load=st.floats(0, 500), ranks=st.integers(1, 64))
def test_auto_is_at_least_one_and_never_more_than_each_rank_s_share(cores: int, load: float, ranks: int) -> None:
    threads, _ = choose_threads("auto", env={"LOCAL_WORLD_SIZE": str(ranks)}, cores=cores, load=load)
    assert 1 <= threads <= max(1, min(AUTO_MAX, cores // ranks))


@pytest.mark.parametrize("option", ["0", "-1", "two", ""])
def test_a_bad_option_is_a_one_line_error(option: str) -> None:
    with pytest.raises(ValueError, match="--threads"):
        choose_threads(option, env={}, cores=2, load=IDLE)


def test_available_cores_is_the_affinity() -> None:
    import os

    assert available_cores() == len(os.sched_getaffinity(0))


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``python -m mnist_demo train`` in this process up to ``run_training``, which records its config
    (no data is read, nothing trains); ``set_num_threads`` records instead of changing this process."""
    import mnist_demo.__main__
    import mnist_demo.train

    seen: dict[str, Any] = {}
    monkeypatch.setattr(mnist_demo.__main__, "load_mnist", lambda data, download=False: object())
    monkeypatch.setattr(mnist_demo.train, "run_training", lambda config, data, console: seen.update(config=config))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.update(threads=n))
    return seen


def run_train(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from mnist_demo.__main__ import app

    monkeypatch.setattr(sys, "argv", ["mnist_demo", "train", "--device", "cpu", "--out", str(tmp_path / "run"),
                                      *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        console_script.run(app)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


@pytest.mark.parametrize(
    ("args", "env", "threads", "layout"),
    [([], {"OMP_NUM_THREADS": "1"}, 1, torch.channels_last),  # the CPU's default: channels_last
     (["--threads", "2", "--no-channels-last"], {"OMP_NUM_THREADS": "1"}, 2, torch.contiguous_format),
     (["--channels-last"], {"OMP_NUM_THREADS": "3"}, 3, torch.channels_last)],
)
def test_the_options_reach_the_training(args: list[str], env: dict[str, str], threads: int,
                                        layout: torch.memory_format, captured: dict[str, Any], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, out, err = run_train(args, tmp_path, monkeypatch, capsys)
    assert code == 0, out + err
    config: TrainConfig = captured["config"]
    assert captured["threads"] == threads and config.memory_format == layout
    assert f"threads: {threads} (" in out and f"memory format: {str(layout).removeprefix('torch.')}" in out


def test_a_bad_threads_option_is_one_error_line(captured: dict[str, Any], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_train(["--threads", "many"], tmp_path, monkeypatch, capsys)
    assert code == 2 and err.startswith("error: --threads") and len(err.splitlines()) == 1, err
    assert "config" not in captured


def test_a_channels_last_model_trains_like_the_contiguous_one() -> None:
    """The layout changes the rounding only: the same weights give the same loss."""
    from mnist_demo.data import MnistData, Split
    from mnist_demo.recipe import DEFAULT
    from mnist_demo.train import Trainer

    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    split = Split(images, torch.arange(64) % 10)
    data = MnistData(split, split, split, source="random", sha256="0")
    losses = []
    for layout in (torch.contiguous_format, torch.channels_last):
        config = TrainConfig(DEFAULT.replace(epochs=1, batch_size=32), Path("unused"), device="cpu",
                             memory_format=layout)
        trainer = Trainer(config, data, console=None)  # type: ignore[arg-type]
        assert trainer.model.conv1.weight.is_contiguous(memory_format=layout)
        x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        out = trainer.net.eval()(x)  # eval: dropout's masks could follow the memory order
        losses.append(torch.nn.functional.nll_loss(out, split.labels[:32]).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
