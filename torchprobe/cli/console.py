"""Running a typer app as a console script: usage errors as one ``error:`` line, exit codes kept."""

from __future__ import annotations

import sys

import typer

EXIT_OK = 0


def run_console_script(command: typer.Typer) -> None:
    """Run a typer app as a script: typer's own usage errors become one ``error:`` line, exit 2."""
    try:
        code = command(standalone_mode=False)
    except typer.Abort:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        if not (hasattr(error, "format_message") and hasattr(error, "exit_code")):
            raise
        message = error.format_message()
        if message:  # a usage error found by typer (no arguments at all: it printed the help)
            print(f"error: {message}", file=sys.stderr)
        sys.exit(error.exit_code)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
