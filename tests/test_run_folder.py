"""The run folder under fault injection: never overwritten, written atomically (crash, symlinks,
permissions, full disk), resumed only with the same settings, damaged files as one ``error:`` line.

Fast on purpose: synthetic 28x28 data instead of MNIST (no 5-second load), one-epoch runs on 128
images, and the pictures stubbed where only the IO matters (the stubs still write through
``pictures.save_figure`` and ``files.write_file``, the code under test). One real subprocess, for SIGKILL."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from rich.console import Console

from mnist_demo import console as console_script
from mnist_demo import files, run_folder
from mnist_demo.data import MnistData, Split
from mnist_demo.files import (
    CHECKPOINT,
    METRICS,
    MODEL,
    RUN_FILES,
    RunFolderError,
    load_state_dict,
    new_run_folder,
    write_file,
)
from mnist_demo.pictures import save_figure
from mnist_demo.recipe import DEFAULT
from mnist_demo.train import Interrupted, TrainConfig, Trainer, run_training

CLI = ["train", "--epochs", "1", "--batch-size", "64", "--limit", "128", "--eval-limit", "100", "--device", "cpu",
       "--seed", "3"]


def synthetic(seed: int = 0, train: int = 128) -> MnistData:
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        return Split(torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g),
                     torch.randint(0, 10, (n,), generator=g))

    return MnistData(split(train), split(100), split(100), f"synthetic {seed}", None)


@pytest.fixture(scope="module")
def data() -> MnistData:
    return synthetic()


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"), width=160)  # noqa: SIM115 - closed with the process


def tiny(out: Path, epochs: int = 1, **overrides: Any) -> TrainConfig:
    """What ``CLI`` trains (epochs aside), on the synthetic data."""
    return TrainConfig(DEFAULT.replace(epochs=epochs, batch_size=64), out, seed=3, device="cpu", limit=128,
                       eval_limit=100, **overrides)


class StubFigure:
    def savefig(self, file: Any, **_: Any) -> None:
        if isinstance(file, (str, Path)):
            Path(file).write_bytes(b"\x89PNG stub")
        else:
            file.write(b"\x89PNG stub")


@pytest.fixture
def fast_pictures(monkeypatch: pytest.MonkeyPatch) -> None:
    stub_pictures(monkeypatch)


def stub_pictures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pictures written as the real ones are (save_figure, write_file), without matplotlib's 5 seconds."""
    monkeypatch.setattr(run_folder, "curves", lambda history, path, lrs=None: save_figure(StubFigure(), path))
    monkeypatch.setattr(run_folder, "samples", lambda images, labels, path: save_figure(StubFigure(), path))
    monkeypatch.setattr(run_folder, "rf_picture", lambda model, digit, path: save_figure(StubFigure(), path))
    monkeypatch.setattr(run_folder, "erf_picture", lambda initial, trained, path: save_figure(StubFigure(), path))
    for name in ("confusion_errors_figure", "per_class_figure"):
        monkeypatch.setattr(run_folder, name, lambda *a, **k: StubFigure())
    monkeypatch.setattr(run_folder, "plots", SimpleNamespace(**{
        name: lambda *a, **k: StubFigure() for name in ("gallery", "confusion", "reliability", "most_confused")}))


def run_demo(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
             data: MnistData | None = None) -> tuple[int, str, str]:
    """``python -m mnist_demo ARGS`` in this process (on ``data`` instead of MNIST): code, stdout, stderr."""
    import mnist_demo.__main__ as main

    monkeypatch.setattr(main, "load_mnist", lambda *a, **k: data if data is not None else synthetic())
    monkeypatch.setattr(sys, "argv", ["mnist_demo", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        console_script.run(main.app)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def one_error(stderr: str, *mentions: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for text in mentions:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, data: MnistData) -> dict[str, Any]:
    """One finished run (fast pictures) under umask 027, with a symlink planted under every file
    name, stale temporary files from an earlier crash, and every file write recorded in order."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("finished")
    folder, outside = root / "run", root / "outside"
    folder.mkdir()
    outside.mkdir()
    for name in RUN_FILES:
        (outside / name).write_text("precious")
        (folder / name).symlink_to(outside / name)
    stale = [folder / ".checkpoint.pt.k2j3h4", folder / f".{METRICS}.abc.tmp"]  # the old and the new kind
    for path in stale:
        path.write_bytes(b"half")
    written: list[str] = []
    create = files._create_temp
    mp.setattr(files, "_create_temp", lambda where, name: (written.append(name), create(where, name))[1])
    stub_pictures(mp)
    mask = os.umask(0o027)
    try:
        metrics = run_training(tiny(folder), data, quiet())
    finally:
        os.umask(mask)
        mp.undo()
    return {"folder": folder, "outside": outside, "written": written, "metrics": metrics, "stale": stale}


# -- 1. never overwritten ---------------------------------------------------------------------------


@pytest.mark.parametrize("marker", [CHECKPOINT, METRICS, MODEL])
def test_a_folder_holding_a_run_needs_resume_or_overwrite(
    marker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / marker).write_bytes(b"a run")
    code, _, err = run_demo([*CLI, "--out", str(tmp_path)], monkeypatch, capsys)
    assert code == 2
    one_error(err, str(tmp_path), "already holds a run", marker, "--resume", "--overwrite")
    assert (tmp_path / marker).read_bytes() == b"a run"


def test_overwrite_removes_the_run_files_only(tmp_path: Path) -> None:
    for name in (CHECKPOINT, METRICS, "notes.txt"):
        (tmp_path / name).write_text("old")
    assert new_run_folder(tmp_path, overwrite=True) == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(RunFolderError, match="exclude each other"):
        new_run_folder(tmp_path, overwrite=True, resume=True)


def test_default_folders_are_unique_within_one_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(files, "_timestamp", lambda: "20250101-120000")
    folders = [new_run_folder(None) for _ in range(3)]
    assert [f.as_posix() for f in folders] == ["runs/20250101-120000", "runs/20250101-120000-2",
                                               "runs/20250101-120000-3"]
    assert all(f.is_dir() for f in folders)


# -- 2. atomic, durable, symlink-proof, one mode; finished last -------------------------------------


def test_planted_symlinks_are_replaced_and_their_targets_untouched(finished: dict[str, Any]) -> None:
    folder, outside = finished["folder"], finished["outside"]
    assert all((outside / name).read_text() == "precious" for name in RUN_FILES)
    for name in RUN_FILES:
        assert not (folder / name).is_symlink() and (folder / name).is_file(), name


def test_every_file_has_the_same_mode_from_the_umask(finished: dict[str, Any]) -> None:
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in finished["folder"].iterdir()}
    assert set(modes) == set(RUN_FILES)
    assert set(modes.values()) == {0o640}, modes  # 0666 less umask 027


def test_temp_files_of_an_earlier_crash_are_removed(finished: dict[str, Any]) -> None:
    assert not any(p.exists() for p in finished["stale"])
    assert not [p for p in finished["folder"].iterdir() if p.name.startswith(".")]


def test_metrics_is_marked_finished_after_every_other_file(finished: dict[str, Any]) -> None:
    written, folder = finished["written"], finished["folder"]
    assert written[-1] == METRICS
    final = written[len(written) - 1 - written[::-1].index(CHECKPOINT):]  # after the last checkpoint
    assert {MODEL, "val_failures.csv", "curves.png", "failures.png", "confusion.png", "report.md"} <= set(final)
    assert json.loads((folder / METRICS).read_text())["finished"] is True
    assert finished["metrics"]["finished"] is True


def test_metrics_of_an_unfinished_run_says_so(tmp_path: Path, data: MnistData, fast_pictures: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def no_report(*args: Any) -> None:
        raise RuntimeError("crash before the report")

    monkeypatch.setattr(run_folder, "write_report", no_report)
    with pytest.raises(RuntimeError):
        run_training(tiny(tmp_path), data, quiet())
    assert (tmp_path / MODEL).exists() and json.loads((tmp_path / METRICS).read_text())["finished"] is False


def test_write_replaces_a_symlink_itself(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    (tmp_path / CHECKPOINT).symlink_to(target)
    write_file(tmp_path / CHECKPOINT, b"new")
    assert target.read_text() == "precious" and not (tmp_path / CHECKPOINT).is_symlink()
    assert (tmp_path / CHECKPOINT).read_bytes() == b"new"


def test_sigkill_during_a_write_keeps_the_old_file_and_the_next_start_cleans_up(tmp_path: Path) -> None:
    """A real process killed in the middle of ``write_file``: the old checkpoint is intact, the
    temporary file it left is removed when the run is resumed."""
    (tmp_path / CHECKPOINT).write_bytes(b"old checkpoint")
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from mnist_demo import files
        real = files._write_all
        def slow(fd, data):
            real(fd, data[:100])
            print("writing", flush=True)
            time.sleep(60)
        files._write_all = slow
        files.write_file(Path(sys.argv[1]) / files.CHECKPOINT, b"new" * 100_000)
    """)
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "writing\n"
    finally:
        process.kill()
        process.wait(timeout=30)
    assert (tmp_path / CHECKPOINT).read_bytes() == b"old checkpoint"
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(f".{CHECKPOINT}.")]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 100
    new_run_folder(tmp_path, resume=True)
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]


@pytest.mark.parametrize(
    ("message", "saved", "resume"),
    [("the checkpoint of epoch 2 is saved", 2, False), ("no checkpoint saved yet", None, False),
     ("is unchanged; continue with --resume", None, True)],
)
def test_ctrl_c_says_what_is_saved(message: str, saved: int | None, resume: bool, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import mnist_demo.train

    def interrupted(*args: Any) -> None:
        raise Interrupted(saved)

    monkeypatch.setattr(mnist_demo.train, "run_training", interrupted)
    monkeypatch.setattr(mnist_demo.train, "read_checkpoint", lambda path: {})
    if resume:
        (tmp_path / CHECKPOINT).write_bytes(b"x")
    code, out, _ = run_demo([*CLI, "--out", str(tmp_path), *(["--resume"] if resume else [])], monkeypatch, capsys)
    assert code == 130 and message in out, out


# -- 3. damaged, foreign, malicious checkpoints and models ------------------------------------------


PWNED = Path(tempfile.gettempdir()) / "pwned-by-a-checkpoint"


class Exploit:
    """Unpickled without ``weights_only``, this would run a shell command."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {PWNED}",))


def damaged(kind: str, valid: bytes, path: Path) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(valid[: len(valid) // 2])
    elif kind == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "bit-flipped":  # a flipped bit in the pickle: a key no longer utf-8
        at = valid.index(b"optimizer")
        path.write_bytes(valid[:at] + b"\xff" + valid[at + 1:])
    elif kind == "a list":
        torch.save([1, 2, 3], path)
    elif kind == "wrong types":
        state = torch.load(io.BytesIO(valid), weights_only=True)
        torch.save({**state, "epoch": "one", "history": "none"}, path)
    elif kind == "older version":
        state = torch.load(io.BytesIO(valid), weights_only=True)
        del state["settings"]
        torch.save(state, path)
    elif kind == "malicious":
        torch.save({"epoch": Exploit()}, path)
    else:
        raise AssertionError(kind)


WHAT_IS_WRONG = {  # each kind of damage, and what the error line says about it
    "empty": "the file is empty", "truncated": "not a readable PyTorch file (truncated or corrupt",
    "random": "not a readable PyTorch file (corrupt", "bit-flipped": "UnicodeDecodeError",
    "a list": "not a checkpoint of this demo (it holds a list", "wrong types": "(epoch 'one')",
    "older version": "older version of the demo", "malicious": "refused: it holds more than tensors",
}
KINDS = list(WHAT_IS_WRONG)


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_checkpoint_is_one_error_line(
    kind: str, finished: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / CHECKPOINT
    damaged(kind, (finished["folder"] / CHECKPOINT).read_bytes(), path)
    PWNED.unlink(missing_ok=True)
    code, _, err = run_demo([*CLI, "--out", str(tmp_path), "--resume"], monkeypatch, capsys)
    assert code == 2
    one_error(err, f"error: {path}: ", WHAT_IS_WRONG[kind])
    assert not PWNED.exists()


def test_a_checkpoint_of_another_model_is_one_error_line(finished: dict[str, Any], tmp_path: Path,
                                                         data: MnistData) -> None:
    """Right structure and settings, state that does not fit: refused when loaded into the model."""
    state = torch.load(finished["folder"] / CHECKPOINT, weights_only=True)
    torch.save({**state, "model": {"conv.weight": torch.zeros(3)}}, tmp_path / CHECKPOINT)
    with pytest.raises(RunFolderError, match=f"^{tmp_path / CHECKPOINT}: not a checkpoint of this demo"):
        run_training(tiny(tmp_path, resume=True), data, quiet())


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "a list", "malicious"])
def test_a_damaged_model_file_names_it(kind: str, finished: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / MODEL
    damaged(kind, (finished["folder"] / MODEL).read_bytes(), path)
    with pytest.raises(RunFolderError) as error:
        load_state_dict(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)
    assert load_state_dict(finished["folder"] / MODEL).keys() == run_folder_model_keys()


def run_folder_model_keys() -> set[str]:
    from mnist_demo.model import Net

    return set(Net().state_dict())


# -- 1b. resume compares every setting --------------------------------------------------------------


def test_resume_names_every_setting_that_differs(finished: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT).write_bytes((finished["folder"] / CHECKPOINT).read_bytes())
    other = TrainConfig(DEFAULT.replace(epochs=1, batch_size=32), tmp_path, seed=4, device="cpu", limit=64,
                        eval_limit=100, augment="torchvision", dtype=torch.float64, resume=True)
    with pytest.raises(RunFolderError) as error:
        run_training(other, synthetic(seed=1), quiet())
    message = str(error.value)
    for difference in ["batch_size 64 (now 32)", "seed 3 (now 4)", "limit 128 (now 64)",
                       "augment batched (now torchvision)", "dtype float32 (now float64)", "data tensors:"]:
        assert difference in message, (difference, message)
    assert message.startswith(f"cannot resume {tmp_path}: {CHECKPOINT} was written with other settings")


def test_a_finished_run_cannot_be_extended(finished: dict[str, Any], tmp_path: Path, data: MnistData,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / CHECKPOINT).write_bytes((finished["folder"] / CHECKPOINT).read_bytes())
    code, _, err = run_demo([*CLI, "--epochs", "2", "--out", str(tmp_path), "--resume"], monkeypatch, capsys, data)
    assert code == 2
    one_error(err, "epochs 1 (now 2)", "cannot be extended")


# -- 4. the CLI's failures: one line, an exit code ---------------------------------------------------


def test_out_naming_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "f").write_text("")
    code, _, err = run_demo([*CLI, "--out", str(tmp_path / "f")], monkeypatch, capsys)
    assert code == 2
    one_error(err, f"--out {tmp_path / 'f'} is a file, not a folder")


def test_read_only_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """(Root ignores a folder's mode, so a read-only file system is simulated at file creation.)"""
    def read_only(folder: Path, name: str) -> tuple[int, str]:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files, "_create_temp", read_only)
    code, _, err = run_demo([*CLI, "--out", str(tmp_path)], monkeypatch, capsys)
    assert code == 2
    one_error(err, f"--out {tmp_path}: cannot write there: Read-only file system")


def test_bogus_device(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_demo([*CLI, "--device", "bogus"], monkeypatch, capsys)
    assert code == 2
    one_error(err, "unknown --device 'bogus'")


def full_disk(monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """``OSError(ENOSPC)`` from the write of the file named ``when``."""
    create, real = files._create_temp, files._write_all
    current: list[str] = []

    def note(folder: Path, name: str) -> tuple[int, str]:
        current[:] = [name]
        return create(folder, name)

    def write(fd: int, data: bytes) -> None:
        if current == [when]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(files, "_create_temp", note)
    monkeypatch.setattr(files, "_write_all", write)


def test_a_full_disk_is_one_error_line(tmp_path: Path, fast_pictures: None, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    full_disk(monkeypatch, CHECKPOINT)
    code, _, err = run_demo([*CLI, "--out", str(tmp_path)], monkeypatch, capsys)
    assert code == 1
    one_error(err, f"cannot write {tmp_path / CHECKPOINT}: No space left on device")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    full_disk(monkeypatch, "summary.txt")
    code, _, err = run_demo([*CLI, "--out", str(tmp_path), "--debug"], monkeypatch, capsys)
    assert code == 1 and "Traceback" in err and "OSError" in err
    assert err.splitlines()[-1] == f"error: cannot write {tmp_path / 'summary.txt'}: No space left on device"


def test_a_collective_timeout_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """What gloo raises on every rank when a collective times out: a long C++ message. (In one
    process: the rank prefix is that of ``RANK``; a real torchrun timeout takes minutes.)"""
    import mnist_demo.train

    def timeout(*args: Any) -> None:
        lines = ["[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1000ms for recv operation"]
        raise torch.distributed.DistBackendError("\n".join(lines + [f"frame #{i}: ..." for i in range(100)]))

    monkeypatch.setattr(mnist_demo.train, "run_training", timeout)
    code, _, err = run_demo([*CLI, "--out", str(tmp_path)], monkeypatch, capsys)
    assert code == 1
    one_error(err, "error: rank 0: DistBackendError: [gloo", "Timed out", "--dist-timeout 300s")


# -- 5. the torchvision pipeline resumes bit-identically --------------------------------------------


def test_torchvision_pipeline_resumes_bit_identically(tmp_path: Path, data: MnistData, fast_pictures: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torchvision")
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run_training(tiny(straight, epochs=2, augment="torchvision", workers=1), data, quiet())
    original = Trainer.train_epoch
    calls = {"n": 0}

    def stop_in_epoch_two(self: Trainer, *args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(Trainer, "train_epoch", stop_in_epoch_two)
    with pytest.raises(Interrupted) as stop:
        run_training(tiny(interrupted, epochs=2, augment="torchvision", workers=1), data, quiet())
    assert stop.value.saved_epoch == 1
    monkeypatch.setattr(Trainer, "train_epoch", original)
    run_training(tiny(interrupted, epochs=2, augment="torchvision", workers=1, resume=True), data, quiet())
    a, b = load_state_dict(straight / MODEL), load_state_dict(interrupted / MODEL)
    assert all(torch.equal(a[k], b[k]) for k in a)
