"""The failure report: headline, per-class table, most-confused pairs, worst failures, history."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from torchprobe.failures.analyzer import FailureAnalyzer


def failure_report(analyzer: FailureAnalyzer, rows: int = 10) -> Any:
    """Headline, per-class table, most-confused pairs, worst failures, label issues, history."""
    parts: list[Any] = [_current_report(analyzer, rows)] if analyzer.samples else [
        Text(f"Failures: no samples since the last reset ({analyzer.num_classes} classes)", style="bold")]
    if analyzer.history:
        table = Table(title="History", title_justify="left")
        for column in ("Epoch", "Samples", "Errors", "Error rate", "ECE", "Right->wrong", "Wrong->right"):
            table.add_column(column, justify="right")
        for record in analyzer.history:
            flips = [str(len(analyzer.flips(record.epoch, to))) if record.epoch > 1 else "-"
                     for to in ("wrong", "right")]
            table.add_row(str(record.epoch), f"{record.samples:,}", f"{record.errors:,}", f"{record.error_rate:.2%}",
                          f"{record.calibration_error:.4f}", flips[0], flips[1])
        parts.append(table)
    return Group(*parts)


def _current_report(analyzer: FailureAnalyzer, rows: int) -> Group:
    n, errors = analyzer.samples, analyzer.errors
    parts: list[Any] = [Text(f"Failures: {errors:,} of {n:,} samples ({errors / n:.2%} error), "
                             f"calibration error {analyzer.calibration_error():.4f} (15 bins)", style="bold")]
    per_class = analyzer.per_class()
    if len(per_class) > 2 * rows:
        per_class = sorted(per_class, key=lambda r: r["f1"])[: 2 * rows]
    listed = len(per_class)
    title = "Per class" if listed == analyzer.num_classes else f"The {listed} classes with the lowest F1"
    table = Table(title=title, title_justify="left")
    for column in ("Class", "Support", "Precision", "Recall", "F1"):
        table.add_column(column, justify="left" if column == "Class" else "right")
    for row in per_class:
        scores = (f"{row[m]:.4f}" for m in ("precision", "recall", "f1"))
        table.add_row(str(row["class"]), f"{row['support']:,}", *scores)
    parts.append(table)
    pairs = analyzer.most_confused(rows)
    if pairs:
        table = Table(title="Most confused", title_justify="left")
        for column in ("True", "Predicted", "Count"):
            table.add_column(column, justify="right" if column == "Count" else "left")
        for true, predicted, count in pairs:
            table.add_row(str(true), str(predicted), f"{count:,}")
        parts.append(table)
        table = Table(title="Worst failures by loss", title_justify="left")
        for column in ("Index", "True", "Predicted", "Confidence", "Loss"):
            table.add_column(column, justify="right")
        for f in analyzer.worst("loss", rows):
            table.add_row(str(f.index), str(analyzer.label(f.true)), str(analyzer.label(f.predicted)),
                          f"{f.confidence:.3f}", f"{f.loss:.3f}")
        parts.append(table)
        issues = analyzer.label_issues()
        shown = ", ".join(str(f.index) for f in issues[:rows]) + (", …" if len(issues) > rows else "")
        parts.append(Text(f"Label-issue candidates: {len(issues):,}" + (f" (indices {shown})" if issues else "")))
    return Group(*parts)
