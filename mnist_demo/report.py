"""``report.md``: one page that ties the run folder together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchprobe.failures import FailureAnalyzer


def _percent(x: float) -> str:
    return f"{100 * x:.2f}%"


def write_report(out: Path, metrics: dict[str, Any], analyzer: FailureAnalyzer, summary: str) -> None:
    history = metrics["history"]
    last = history[-1]
    recipe = metrics["recipe"]
    lines = [
        f"# MNIST run: recipe `{recipe['name']}`, seed {metrics['seed']}",
        "",
        f"- Data: {metrics['data']} (sha256 `{metrics['data_sha256']}`), {metrics['train_images']:,} training images",
        f"- Device: {metrics['device']}; augmentation pipeline: {metrics['augment']}",
        f"- Validation after epoch {last['epoch']}: accuracy {_percent(last['val_accuracy'])}, loss {last['val_loss']:.4f}",
        f"- Official test set: accuracy {_percent(metrics['test']['accuracy'])}, loss {metrics['test']['loss']:.4f}",
        f"- Validation failures: {analyzer.errors} of {analyzer.samples:,}; expected calibration error "
        f"{analyzer.calibration_error():.4f}",
        "",
        "## Curves",
        "",
        "![training curves](curves.png)",
        "",
        "| epoch | train loss | train acc | val loss | val acc | val errors | newly wrong | lr at start | seconds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {h['epoch']} | {h['train_loss']:.4f} | {_percent(h['train_accuracy'])} | {h['val_loss']:.4f} | "
            f"{_percent(h['val_accuracy'])} | {h['val_errors']} | {h['flipped_to_wrong']} | {h['lr']:.4f} | {h['epoch_seconds']:.1f} |"
            for h in history
        ),
        "",
        "## Failures on the validation set",
        "",
        "![worst failures by loss](failures.png)",
        "",
        "![confusion matrix](confusion.png)",
        "",
        "Most confused (true -> predicted, count): "
        + ", ".join(f"{t} -> {p} ({n})" for t, p, n in analyzer.most_confused(5)),
        "",
        "| class | precision | recall | F1 | support |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *(f"| {c['class']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |" for c in analyzer.per_class()),
        "",
        "Label-issue candidates (lowest probability given to the stated label): "
        + ", ".join(f"#{f.index} ({f.true} -> {f.predicted})" for f in analyzer.label_issues(10)),
        "Every failure is listed in `val_failures.csv`.",
        "",
        "## What the network sees",
        "",
        "![augmented training samples](samples.png)",
        "",
        "```",
        summary.rstrip(),
        "```",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
