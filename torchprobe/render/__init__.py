"""Rendering: rich tables for terminals and notebooks, plain text, and (in :mod:`.plots`) pictures.

Formatting only: every number printed here is computed by the result it renders. Results reach
this package through :class:`torchprobe.display.Displayable`.
"""

from __future__ import annotations

from typing import Any

from torchprobe.failures.analyzer import FailureAnalyzer
from torchprobe.render import plots
from torchprobe.render.erf import erf_table
from torchprobe.render.failures import failure_report
from torchprobe.render.rf import rf_table
from torchprobe.render.shapes import trace_table
from torchprobe.render.summary import summary_table
from torchprobe.render.text import RENDER_WIDTH, render_html, render_text
from torchprobe.rf.effective import ERFResult
from torchprobe.rf.result import RFResult
from torchprobe.shapes.result import ShapeTrace
from torchprobe.stats.result import ModelSummary


def renderable(result: Any) -> Any:
    """The rich renderable of any torchprobe result, with default options."""
    if isinstance(result, RFResult):
        return rf_table(result)
    if isinstance(result, ShapeTrace):
        return trace_table(result)
    if isinstance(result, ModelSummary):
        return summary_table(result)
    if isinstance(result, FailureAnalyzer):
        return failure_report(result)
    if isinstance(result, ERFResult):
        return erf_table(result)
    raise TypeError(f"torchprobe cannot render a {type(result).__name__}")


__all__ = [
    "RENDER_WIDTH", "erf_table", "failure_report", "plots", "render_html", "render_text", "renderable", "rf_table",
    "summary_table", "trace_table",
]
