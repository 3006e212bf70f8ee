"""Results in notebooks: IPython's display formatter shows every result type as the same table,
as HTML (``_repr_html_``) and as plain text (``_repr_pretty_``), instead of a dataclass dump."""

from __future__ import annotations

import html
import re

import pytest
import torch
from IPython.core.formatters import DisplayFormatter

import torchprobe
from mnist_demo.model import Net


def results() -> dict[str, object]:
    analyzer = torchprobe.FailureAnalyzer(3)
    analyzer.update(torch.tensor([[2.0, 0.1, 0.3], [0.2, 0.1, 3.0], [0.1, 2.5, 0.3]]), torch.tensor([0, 1, 1]))
    return {
        "rf": torchprobe.receptive_field(Net(), (1, 28, 28)),
        "summary": torchprobe.summary(Net(), (1, 28, 28)),
        "trace": torchprobe.trace(Net(), (1, 28, 28)),
        "failures": analyzer,
    }


RESULTS = results()


@pytest.mark.parametrize("name", RESULTS)
def test_a_notebook_shows_the_table(name: str) -> None:
    result = RESULTS[name]
    data, _ = DisplayFormatter().format(result)
    assert data["text/plain"] == str(result)  # the table, not the dataclass
    shown = html.unescape(re.sub(r"<[^>]+>", "", data["text/html"]))
    assert data["text/html"].startswith("<pre") and "<span style=" in data["text/html"]  # rich's styles, inline
    first_line = str(result).strip().splitlines()[0].strip()
    assert first_line in shown, f"{first_line!r} not in the HTML"


@pytest.mark.parametrize("width", [60, 80, 100])
def test_no_number_is_cut_in_a_narrow_terminal(width: int) -> None:
    """Words wrap, numbers stay whole; optional columns go when the numbers alone do not fit
    (a line says which), never a digit cut with an ellipsis."""
    from torchvision.models import resnet18

    from torchprobe.render import render_text, rf_table, summary_table, trace_table
    from torchprobe.stats.result import COLUMNS

    summary = torchprobe.summary(resnet18(), (3, 224, 224))
    text = render_text(summary_table(summary, depth=1), width=width)
    assert "…" not in text
    for number in ("11,689,512", "3.63 G", "236.03 M", "8,393,728"):
        assert number in text, f"{number} is cut at {width} columns:\n{text}"
    assert max(len(line) for line in text.splitlines()) <= width
    every_column = torchprobe.summary(resnet18(), (3, 224, 224), mode="train", columns=COLUMNS)
    text = render_text(summary_table(every_column, depth=1), width=width)
    assert "…" not in text and "11,689,512" in text and max(len(line) for line in text.splitlines()) <= width
    rf = render_text(rf_table(RESULTS["rf"]), width=width)
    trace = render_text(trace_table(RESULTS["trace"]), width=width)
    assert "…" not in rf and "…" not in trace
    assert "44×44 global" in rf
