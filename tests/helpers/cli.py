"""Running the ``torchprobe`` command in tests, and checking what it printed.

``run_cli`` calls the console-script entry point in this process, the way the script would run
it, and returns a ``CliResult`` with the attributes of a ``subprocess.CompletedProcess``:
``returncode``, ``stdout`` and ``stderr``. ``run_process`` starts a real process, for the few
tests where the process boundary is the point.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from unittest import mock

import torch

from torchprobe.cli import main

REPO = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "torchprobe"
TIMEOUT = 120  # a guard against hangs only, not a timing assertion


class Completed(Protocol):
    """What the assertions read: a ``CliResult`` or a ``subprocess.CompletedProcess``."""

    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class CliResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CliTimeout(BaseException):
    """A run past its time limit (a BaseException, so no ``except Exception`` in the CLI swallows it)."""


# -- running ---------------------------------------------------------------------------------------


def run_cli(*args: str, timeout: int = TIMEOUT) -> CliResult:
    """``torchprobe ARGS`` in this process: ``sys.argv`` patched, stdout and stderr captured.

    As a real process would: the working directory is the repository; a ``SystemExit`` gives the
    exit status; an exception escaping ``main`` prints its traceback on stderr and gives status 1.
    Nothing leaks into the next run (see ``_isolated``). stdout is a StringIO, so not a terminal,
    like a pipe: the CLI prints its fixed-width table.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    with _time_limit(timeout, args), _isolated(args):
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            returncode = _call_main(args)
    return CliResult(tuple(args), returncode, stdout.getvalue(), stderr.getvalue())


def run_process(
    *args: str, console_script: bool = False, timeout: int = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``torchprobe ARGS`` as a separate process: the installed script, or ``python -m torchprobe.cli``."""
    command = [str(CONSOLE_SCRIPT)] if console_script else [sys.executable, "-m", "torchprobe.cli"]
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "PYTHONWARNINGS")}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env, check=False
    )


def _call_main(args: Sequence[str]) -> int:
    sys.argv = ["torchprobe", *args]
    try:
        main()
    except SystemExit as exit_:
        return _exit_status(exit_.code)
    except Exception:  # uncaught in a real process: the interpreter prints the traceback, status 1
        traceback.print_exc()
        return 1
    return 0


def _exit_status(code: object) -> int:
    """The status a parent process sees for ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


@contextlib.contextmanager
def _time_limit(seconds: int, args: Sequence[str]) -> Iterator[None]:
    """Raise ``CliTimeout`` in the run after ``seconds`` (main thread on POSIX; elsewhere no limit)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise CliTimeout(f"torchprobe {' '.join(args)} still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _isolated(args: Sequence[str]) -> Iterator[None]:
    """A run sees what a fresh process would and leaves this process as it found it.

    Restored after the run: ``sys.argv``, ``sys.path``, the working directory, ``os.environ``,
    torch's default dtype, thread count, grad mode and CPU random state. Forgotten after the run:
    modules it imported from the directory of a ``FILE.py:NAME`` spec or from outside the
    ``sys.path`` of before (a model file's siblings), so a later run with another file of the same
    name imports that one. During the run: no ``FORCE_COLOR`` (as the subprocess runs had it),
    Python's default warning filters, with warnings printed on the run's stderr, as a process
    started without ``-W`` would print them, and the program name of the installed script.
    """
    argv, path, modules, importers = sys.argv, list(sys.path), set(sys.modules), set(sys.path_importer_cache)
    cwd, environ = os.getcwd(), dict(os.environ)
    dtype, threads, grad = torch.get_default_dtype(), torch.get_num_threads(), torch.is_grad_enabled()
    os.environ.pop("FORCE_COLOR", None)
    os.chdir(REPO)
    try:
        # click names the program after __main__'s package when there is one ("python -m pytest"):
        # without one it takes sys.argv[0], "torchprobe", as in the installed script's usage lines
        main_module = sys.modules["__main__"]
        with mock.patch.object(main_module, "__package__", None, create=True), warnings.catch_warnings():
            with torch.random.fork_rng(devices=[]):
                _default_warnings()
                yield
    finally:
        sys.argv = argv
        sys.path[:] = path
        _forget_modules(set(sys.modules) - modules, _spec_dirs(args), _roots(path))
        for key in set(sys.path_importer_cache) - importers:
            del sys.path_importer_cache[key]
        os.chdir(cwd)
        if os.environ != environ:
            os.environ.clear()
            os.environ.update(environ)
        torch.set_default_dtype(dtype)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)


def _default_warnings() -> None:
    """The filters of a process started without ``-W`` or ``PYTHONWARNINGS``; shown on ``sys.stderr``."""
    warnings.resetwarnings()
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__", append=True)
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.filterwarnings("ignore", category=category, append=True)

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show


def _spec_dirs(args: Sequence[str]) -> list[Path]:
    """The directories of the ``FILE.py:NAME`` specs among ``args``."""
    dirs = []
    for arg in args:
        source, sep, name = arg.rpartition(":")
        if sep and name and (source.endswith(".py") or "/" in source):
            dirs.append((REPO / source).resolve().parent)
    return dirs


def _roots(path: Sequence[str]) -> list[Path]:
    return [(REPO / entry).resolve() if entry else REPO for entry in path]


def _forget_modules(names: set[str], spec_dirs: list[Path], roots: list[Path]) -> None:
    for name in names:
        file = getattr(sys.modules.get(name), "__file__", None)
        if not file:
            continue
        where = Path(file).resolve()
        if any(where.is_relative_to(d) for d in spec_dirs) or not any(where.is_relative_to(r) for r in roots):
            del sys.modules[name]


# -- checking --------------------------------------------------------------------------------------


def assert_no_traceback(proc: Completed) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr


def assert_error(proc: Completed, code: int, *needles: str) -> str:
    """Exit ``code``, exactly one ``error:`` line naming each needle, nothing on stdout."""
    assert_no_traceback(proc)
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}; stderr: {proc.stderr!r}"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}: {proc.stderr!r}"
    line = lines[0]
    assert line.startswith("error:"), line
    assert line[len("error:"):].strip(), f"the error line says nothing: {line!r}"
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
    assert proc.stdout.strip() == "", f"stdout should be empty on error: {proc.stdout!r}"
    return line


def assert_ok(proc: Completed) -> None:
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr


def table_names(text: str) -> list[str]:
    """The first cell of every body row of a rendered table."""
    return [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")]


# -- models ----------------------------------------------------------------------------------------


def write_models(directory: Path) -> str:
    """Write ``MODELS`` to ``directory/cli_models.py`` and return its path; a spec is ``f"{path}:Name"``."""
    path = directory / "cli_models.py"
    path.write_text(MODELS)
    return str(path)


MODELS = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn


    class OneConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.conv(x)


    class NeedsN(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.conv = nn.Conv2d(1, n, 3)

        def forward(self, x):
            return self.conv(x)


    class CtorRaises(nn.Module):
        def __init__(self):
            super().__init__()
            raise RuntimeError("no weights here")


    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            x = self.conv(x)
            raise ValueError("boom")


    class Exploder(nn.Module):
        def forward(self, x):
            raise ValueError("boom")


    class InnerBoom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.exploder = Exploder()

        def forward(self, x):
            return self.exploder(self.conv(x))


    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.conv(x))


    class Nested(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.head(self.block(x))


    class Cdist(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            x = self.conv(x)
            return torch.cdist(x, x)


    class Topk(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return torch.topk(self.conv(x), 5, dim=2).values


    class SortRows(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return torch.sort(self.conv(x), dim=2).values


    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(1, 4, 5, padding=2)

        def forward(self, x, y):
            return self.a(x) + self.b(y)


    class Plain:
        pass


    def returns_int():
        return 3


    def factory():
        return OneConv()


    plain_object = object()
    a_number = 7
    instance = OneConv()
    """
)
