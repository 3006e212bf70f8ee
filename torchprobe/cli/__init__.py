"""The ``torchprobe`` command line: ``commands`` (typer), ``model_spec`` (loading ``FILE.py:NAME``),
``console`` (one ``error:`` line and an exit code instead of a traceback)."""

from __future__ import annotations

from torchprobe.cli.commands import app
from torchprobe.cli.console import run_console_script


def main() -> None:
    """The ``torchprobe`` console script."""
    run_console_script(app)


__all__ = ["app", "main"]
