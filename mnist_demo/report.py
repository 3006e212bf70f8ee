"""``report.md``: one page that ties the run folder together."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_demo.files import (
    CONFUSION,
    CONFUSION_ERRORS,
    CURVES,
    ERF,
    FAILURES,
    MOST_CONFUSED,
    PER_CLASS,
    RELIABILITY,
    REPORT,
    RF,
    SAMPLES,
    VAL_FAILURES,
    save_text,
)
from mnist_demo.history import EpochMetrics

if TYPE_CHECKING:
    import torchprobe


def _percent(x: float) -> str:
    return f"{100 * x:.2f}%"


def _history_row(h: EpochMetrics) -> str:
    return (
        f"| {h.epoch} | {h.train_loss:.4f} | {_percent(h.train_accuracy)} | {h.val_loss:.4f} | "
        f"{_percent(h.val_accuracy)} | {h.val_errors} | {h.flipped_to_wrong} | {h.lr:.4f} | {h.epoch_seconds:.1f} |"
    )


def _erf_rows(erf: dict[str, Any]) -> list[str]:
    """The ERF table: per stage, initial -> trained."""
    def pair(key: str, fmt: Any) -> Any:
        return lambda a, b: f"{fmt(a[key])} -> {fmt(b[key])}"

    def share(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f}%"

    def size(x: list[int] | None) -> str:
        return "-" if x is None else "x".join(map(str, x))

    rows = [
        f"Centre unit of each stage, mean |gradient| over {erf['images']} validation images; initial weights "
        "-> trained. inside: share of the mass within the theoretical RF; area50/area95: fewest pixels holding "
        "50%/95% of the mass, as a share of the RF's box (clipped to the image); size95: central 95% extent per axis.",
        "",
        "| stage | layer | RF | box (px) | inside | area50 | area95 | size95 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for a, b in zip(erf["initial"], erf["trained"]):
        rows.append(f"| {b['stage']} | `{b['layer']}` | {size(b['rf'])} | {b['box']} | "
                    f"{pair('inside', share)(a, b)} | {pair('area50', share)(a, b)} | "
                    f"{pair('area95', share)(a, b)} | {pair('size95', size)(a, b)} |")
    return rows


def write_report(
    out: Path, metrics: dict[str, Any], history: Sequence[EpochMetrics], analyzer: torchprobe.FailureAnalyzer,
    summary: str,
) -> None:
    """``metrics`` as in ``metrics.json`` (with the test scores), ``history`` its epochs as rows,
    ``analyzer`` the final validation pass and ``summary`` the model summary as text."""
    last = history[-1]
    recipe, test = metrics["recipe"], metrics["test"]
    lines = [
        f"# MNIST run: recipe `{recipe['name']}`, seed {metrics['seed']}",
        "",
        f"- Data: {metrics['data']} (sha256 `{metrics['data_sha256']}`), "
        f"{metrics['train_images']:,} training images",
        f"- Device: {metrics['device']}; augmentation pipeline: {metrics['augment']}",
        f"- Validation after epoch {last.epoch}: accuracy {_percent(last.val_accuracy)}, loss {last.val_loss:.4f}",
        f"- Official test set: accuracy {_percent(test['accuracy'])}, loss {test['loss']:.4f}",
        f"- Validation failures: {analyzer.errors} of {analyzer.samples:,}; expected calibration error "
        f"{analyzer.calibration_error():.4f}",
        "",
        "## Curves",
        "",
        f"![training curves]({CURVES})",
        "",
        "| epoch | train loss | train acc | val loss | val acc | val errors | newly wrong | lr at start | seconds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(_history_row(h) for h in history),
        "",
        "## Failures on the validation set",
        "",
        f"![worst failures by loss]({FAILURES})",
        "",
        f"![confusion matrix]({CONFUSION})",
        "",
        f"![errors only: the confusion matrix with its diagonal masked]({CONFUSION_ERRORS})",
        "",
        f"![most confused pairs]({MOST_CONFUSED})",
        "",
        f"![validation accuracy per class]({PER_CLASS})",
        "",
        f"![reliability diagram]({RELIABILITY})",
        "",
        "Most confused (true -> predicted, count): "
        + ", ".join(f"{t} -> {p} ({n})" for t, p, n in analyzer.most_confused(5)),
        "",
        "| class | precision | recall | F1 | support |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {c['class']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
            for c in analyzer.per_class()
        ),
        "",
        "Label-issue candidates (lowest probability given to the stated label): "
        + ", ".join(f"#{f.index} ({f.true} -> {f.predicted})" for f in analyzer.label_issues(10)),
        f"Every failure is listed in `{VAL_FAILURES}`.",
        "",
        "## What the network sees",
        "",
        f"![augmented training samples]({SAMPLES})",
        "",
        "### Receptive fields",
        "",
        f"![theoretical receptive fields of three units per stage]({RF})",
        "",
        f"![effective receptive field per stage, initial and trained]({ERF})",
        "",
        *(_erf_rows(metrics["erf"]) + [""] if metrics.get("erf") else []),
        "```",
        summary.rstrip(),
        "```",
        "",
    ]
    save_text("\n".join(lines), out / REPORT)
