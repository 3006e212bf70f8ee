"""The demo's console runner: typer's usage errors as one ``error:`` line, as the torchprobe script does.

Kept here rather than imported from ``torchprobe.cli`` so the demo needs only torchprobe's public API."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

EXIT_OK, EXIT_INTERRUPTED = 0, 130


def run(app: typer.Typer) -> NoReturn:
    """Run ``app`` on ``sys.argv`` and exit: a usage error prints ``error: <message>`` on stderr and
    exits with its code (2) instead of typer's boxed panel; Ctrl-C outside a command's own handling
    prints ``error: interrupted`` and exits 130."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        print("error: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except typer.TyperException as error:  # typer's usage errors (its bundled click's exceptions)
        message = error.format_message()
        if message:  # a usage error found by typer (no arguments at all: it printed the help)
            print(f"error: {message}", file=sys.stderr)
        sys.exit(error.exit_code)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
