"""The ``torchprobe`` command under bad input and faults: one ``error:`` line and the right exit
code, never a traceback (issue 13's cases for this CLI)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import torchprobe
from tests.helpers.cli import assert_error, run_cli
from torchprobe.errors import UsageError
from torchprobe.rf.rules import core


def model_file(directory: Path, body: str) -> str:
    path = directory / "faulty_models.py"
    path.write_text("import sys\nimport torch\nfrom torch import nn\n\n" + textwrap.dedent(body))
    return str(path)


@pytest.mark.parametrize("size, needle", [
    ("1,1180591620717411303424,28", "too large"),  # 2^70
    ("1,²8,28", "bad --input"),
    ("1,٣,28", "bad --input"),  # an Arabic-Indic digit: isdigit() says yes, int() would accept it
])
def test_sizes_that_are_not_plain_small_integers(size: str, needle: str) -> None:
    assert_error(run_cli("rf", "mnist_demo.model:Net", "--input", size), 2, needle)


def test_kwargs_nested_too_deep() -> None:
    deep = '{"a": ' * 20_000 + "1" + "}" * 20_000
    assert_error(run_cli("summary", "mnist_demo.model:Net", "--input", "1,28,28", "--kwargs", deep), 2, "--kwargs")


def test_sys_exit_in_a_model_file_is_an_error_of_the_model(tmp_path: Path) -> None:
    spec = model_file(tmp_path, "sys.exit(0)\n")
    assert_error(run_cli("rf", f"{spec}:Net", "--input", "1,28,28"), 1, "sys.exit(0)", "faulty_models.py")


def test_sys_exit_in_a_forward_is_an_error_of_the_model(tmp_path: Path) -> None:
    spec = model_file(tmp_path, """
        class Quits(nn.Module):
            def forward(self, x):
                sys.exit(0)
        """)
    assert_error(run_cli("summary", f"{spec}:Quits", "--input", "3"), 1, "sys.exit(0)")


def test_numpy_integers_are_sizes() -> None:
    result = torchprobe.summary(nn.Linear(4, 2), (np.int64(4),))
    assert result.calls[0].output.shape == (1, 2)
    with pytest.raises(UsageError, match="must be integers"):
        torchprobe.summary(nn.Linear(4, 2), (4.0,))


def test_a_broken_rule_plugin_is_named_not_blamed_on_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise ImportError("No module named 'missing_dependency'")

    plugin = SimpleNamespace(name="fancy_rules", value="fancy_rules.rules", load=broken)
    monkeypatch.setattr(core, "entry_points", lambda group: [plugin])
    monkeypatch.setattr(core.RULES, "_loaded_entry_points", False)
    proc = run_cli("rf", "mnist_demo.model:Net", "--input", "1,28,28")
    assert_error(proc, 2, "fancy_rules", "plugin", "missing_dependency")


def test_a_real_fallback_that_would_not_fit_in_memory_is_refused() -> None:
    """A model that reads values cannot run on meta; at 1x100000x100000 its input alone is 40 GB:
    refused with the figure before anything is allocated."""

    class NeedsValues(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[x > 0]

    with pytest.raises(UsageError, match=r"needs at least 37\.25 GiB"):
        torchprobe.summary(NeedsValues(), (1, 100_000, 100_000))


def json_report_when_stdout_fails(monkeypatch: pytest.MonkeyPatch, error: OSError) -> Any:
    """``summary --json`` with every print to stdout raising ``error`` (stderr still works)."""
    import builtins

    real_print = builtins.print

    def failing(*args: object, **kwargs: object) -> None:
        if kwargs.get("file") is None:
            raise error
        real_print(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "print", failing)
    return run_cli("summary", "mnist_demo.model:Net", "--input", "1,28,28", "--json")


def test_output_to_a_full_device(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = json_report_when_stdout_fails(monkeypatch, OSError(28, "No space left on device"))
    assert proc.returncode == 1 and "No space left on device" in proc.stderr and "Traceback" not in proc.stderr


def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torchprobe ... --json | head -c 300``: not an error of ours, so no error line (a shell's
    exit status for SIGPIPE, 141)."""
    proc = json_report_when_stdout_fails(monkeypatch, BrokenPipeError(32, "Broken pipe"))
    assert proc.returncode == 141 and proc.stderr == ""
