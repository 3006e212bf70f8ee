"""Shared fixtures and the ``--update-golden`` flag for expected-output files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Each xdist worker gets one core's worth of threads: two workers with two OpenMP threads each on
# a 2-core machine spin against each other and run several times slower.
torch.set_num_threads(1)

GOLDEN = Path(__file__).parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite the expected-output files")


@pytest.fixture
def golden(request: pytest.FixtureRequest):
    """``golden("name.txt", text)`` compares with the stored file (or rewrites it when asked)."""

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if request.config.getoption("--update-golden"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert path.exists(), f"missing golden file {path}; run `make golden` to create it"
        assert text == path.read_text(), f"rendering changed; if intended, run `make golden` ({path})"

    return check
