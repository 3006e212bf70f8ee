"""Helpers for tests that start other processes: a free port, and waiting for a file they write."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 300) -> None:
    """Until ``path`` exists, ``process`` ends or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
