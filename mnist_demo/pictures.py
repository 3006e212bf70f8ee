"""The demo's own pictures: the 2x2 training curves, augmented samples, receptive fields per stage
(theoretical and effective), per-class accuracy and the errors-only confusion matrix."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import torchprobe
from mnist_demo.augment import MEAN, STD
from mnist_demo.files import write_file
from mnist_demo.history import EpochMetrics


def _pyplot() -> Any:
    """pyplot with the file-only backend, imported on first use: the CLI starts without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path, dpi: float | None = 100) -> None:
    """``figure`` as a PNG under ``path``: rendered in memory, written atomically (``files.write_file``)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **({} if dpi is None else {"dpi": dpi}))
    write_file(path, buffer.getvalue())


def _figure(width: float, height: float) -> Any:
    """A figure without pyplot (no global state, nothing to close), laid out when drawn."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _percent_axis(ax: Any, values: Sequence[float]) -> None:
    """Accuracy on a y axis that ends at 100% and starts just below the lowest value shown."""
    from matplotlib.ticker import PercentFormatter

    low = min(values, default=0.0)
    ax.set_ylim(max(0.0, low - max(0.1 * (1 - low), 0.002)), 1.0)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))


def _epoch_axis(ax: Any, epochs: int) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlim(0.5 if epochs <= 1 else 0.8, epochs + 0.2 if epochs > 1 else 1.5)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def curves_figure(history: Sequence[EpochMetrics], lrs: Sequence[float] | None = None) -> Any:
    """The 2x2 grid: loss and accuracy (train and validation overlaid, per epoch), the learning
    rate per optimizer step (``lrs``: one per step of the whole schedule; by default the rate at
    each epoch's start) and the validation errors per epoch (with those newly wrong)."""
    epochs = [h.epoch for h in history]
    last = max(epochs, default=1)
    fig = _figure(11, 7.5)
    (loss, accuracy), (rate, errors) = fig.subplots(2, 2)
    loss.plot(epochs, [h.train_loss for h in history], marker="o", markersize=3, label="train (augmented)")
    loss.plot(epochs, [h.val_loss for h in history], marker="o", markersize=3, label="validation")
    loss.set_title("Loss (mean NLL)")
    loss.set_ylabel("loss")
    loss.set_ylim(bottom=0)
    train_acc, val_acc = [h.train_accuracy for h in history], [h.val_accuracy for h in history]
    accuracy.plot(epochs, train_acc, marker="o", markersize=3, label="train (augmented)")
    accuracy.plot(epochs, val_acc, marker="o", markersize=3, label="validation")
    accuracy.set_title("Accuracy")
    accuracy.set_ylabel("accuracy")
    _percent_axis(accuracy, train_acc + val_acc)
    if lrs:
        steps_per_epoch = len(lrs) / last
        rate.plot([(i + 1) / steps_per_epoch for i in range(len(lrs))], lrs, linewidth=1.2, label="per step")
        rate.set_xlim(0, last)
    else:
        rate.step(epochs, [h.lr for h in history], where="post", label="at each epoch's start")
    rate.set_title("Learning rate (one-cycle)")
    rate.set_ylabel("learning rate")
    rate.set_ylim(bottom=0)
    errors.bar(epochs, [h.val_errors for h in history], color="tab:red", alpha=0.7, label="validation errors")
    errors.plot(epochs, [h.flipped_to_wrong for h in history], color="black", marker="o", markersize=3,
                linewidth=1, label="newly wrong")
    errors.set_title("Validation errors")
    errors.set_ylabel("images")
    if max((h.val_errors for h in history), default=0) > 20 * max(min(h.val_errors for h in history), 1):
        errors.set_yscale("log")
    for ax in (loss, accuracy, rate, errors):
        _epoch_axis(ax, last)
        ax.legend(fontsize=8)
    if lrs:
        rate.set_xlim(0, last)
    return fig


def curves(history: Sequence[EpochMetrics], path: Path, lrs: Sequence[float] | None = None) -> None:
    """:func:`curves_figure` as a PNG under ``path``."""
    save_figure(curves_figure(history, lrs), path)


def _digit(image: torch.Tensor) -> Any:
    return (image.detach().cpu().float().reshape(28, 28) * STD + MEAN).clamp(0, 1).numpy()


def _box(ax: Any, span: Sequence[tuple[int, int] | None], color: str) -> None:
    from matplotlib.patches import Rectangle

    (y0, y1), (x0, x1) = span  # type: ignore[misc]
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, edgecolor=color,
                           linewidth=1.6))


UNIT_COLOURS = ("cyan", "yellow", "magenta")


def rf_figure(theory: torchprobe.RFResult, image: torch.Tensor, stages: Sequence[tuple[str, str]]) -> Any:
    """One panel per stage over a validation digit (normalised ``image``): the exact theoretical
    span of three of its units (the first, the centre and the last), clipped at the borders."""
    fig = _figure(3.0 * len(stages), 3.9)
    fig.suptitle("Theoretical receptive fields, clipped at the image: the first (cyan), centre (yellow) and "
                 "last (magenta) unit of each stage", fontsize=10)
    axes = fig.subplots(1, len(stages))
    for ax, (name, label) in zip(axes, stages):
        layer = theory.layer(name)
        sizes = tuple(layer.units[-2:]) if len(layer.units) >= 2 else (1, 1)
        picks = [(0, 0), tuple((n - 1) // 2 for n in sizes), tuple(n - 1 for n in sizes)]
        ax.imshow(_digit(image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        for unit, color in zip(picks, UNIT_COLOURS):
            span = layer.span(unit)
            if all(s is not None for s in span):
                _box(ax, span, color)
        ax.set_xlim(-0.5, 27.5)
        ax.set_ylim(27.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        rf = "x".join(str(r) for r in layer.rf)
        jump = "x".join(str(j) for j in layer.jump)
        grid = "x".join(str(n) for n in sizes)
        ax.set_title(f"{label}: {name}", fontsize=9)
        ax.set_xlabel(f"RF {rf}, jump {jump}, {grid} units", fontsize=8)
    return fig


def erf_figure(initial: torchprobe.ERFResult, trained: torchprobe.ERFResult) -> Any:
    """The ERF of each stage's centre unit, initial weights (top) and trained (bottom), each map
    scaled to its own maximum over the whole 28x28 input, with the theoretical span as a box."""
    columns = len(trained.layers)
    fig = _figure(3.0 * columns + 0.8, 7.4)
    fig.suptitle(f"Effective receptive field per stage ({trained.batch} validation images; "
                 f"cyan: the theoretical RF, clipped)")
    axes = fig.subplots(2, columns, squeeze=False)
    shown = None
    for row, (result, when) in enumerate(((initial, "initial"), (trained, "trained"))):
        for ax, layer in zip(axes[row], result.layers):
            heat = layer.map.double().numpy()
            heat = heat / heat.max() if heat.max() > 0 else heat
            shown = ax.imshow(heat, cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
            if layer.span is not None and all(s is not None for s in layer.span):
                _box(ax, layer.span, "cyan")
            ax.set_xticks([])
            ax.set_yticks([])
            from mnist_demo.fields import stage_label

            rf = "x".join(str(r) for r in layer.theory.rf)
            ax.set_title(f"{stage_label(layer.name)}, {when}\nRF {rf}", fontsize=9)
            if layer.area50 is None or layer.area95 is None or layer.size95 is None:
                ax.set_xlabel("no gradient", fontsize=8)
            else:
                ax.set_xlabel(f"50% of mass on {100 * layer.area50:.0f}% of box\n95% on {100 * layer.area95:.0f}%; "
                              f"95% extent {'x'.join(map(str, layer.size95))} px", fontsize=8)
    if shown is not None:
        fig.colorbar(shown, ax=axes, shrink=0.6, label="share of the map's maximum")
    return fig


def rf_picture(model: torch.nn.Module, digit: torch.Tensor, path: Path) -> None:
    """:func:`rf_figure` of ``model``'s stages (``fields.STAGES``) over ``digit``, as a PNG."""
    from mnist_demo.fields import STAGES

    theory = torchprobe.receptive_field(model, (1, 28, 28))
    save_figure(rf_figure(theory, digit, STAGES), path, dpi=None)


def erf_picture(initial: torchprobe.ERFResult, trained: torchprobe.ERFResult, path: Path) -> None:
    """:func:`erf_figure` as a PNG under ``path``."""
    save_figure(erf_figure(initial, trained), path, dpi=None)


def per_class_figure(analyzer: torchprobe.FailureAnalyzer) -> Any:
    """Validation accuracy (recall) per class, with each class's error count, and the overall accuracy."""
    rows = analyzer.per_class()
    counts = analyzer.confusion_matrix()
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    recall = [r["recall"] for r in rows]
    bars = ax.bar([str(r["class"]) for r in rows], recall, color="tab:blue")
    wrong = [int(counts[i].sum() - counts[i, i]) for i in range(len(rows))]
    ax.bar_label(bars, [f"{n} wrong" for n in wrong], padding=2, fontsize=7)
    overall = 1 - analyzer.errors / max(analyzer.samples, 1)
    ax.axhline(overall, color="black", linestyle="--", linewidth=1, label=f"all classes {100 * overall:.2f}%")
    _percent_axis(ax, recall)
    ax.set_ylim(top=1.0 + (1.0 - ax.get_ylim()[0]) * 0.08)  # room for the labels above 100% bars
    ax.set_xlabel("true class")
    ax.set_ylabel("accuracy (recall)")
    ax.set_title(f"Validation accuracy per class ({analyzer.errors:,} errors of {analyzer.samples:,})")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def confusion_errors_figure(analyzer: torchprobe.FailureAnalyzer) -> Any:
    """The confusion matrix with its diagonal masked: only the mistakes, on their own colour scale,
    each count written in its cell (rows: true class, with its error count)."""
    import numpy as np

    counts = analyzer.confusion_matrix().numpy()
    c = len(counts)
    errors = np.ma.masked_where(np.eye(c, dtype=bool), counts)
    fig = _figure(7, 6)
    ax = fig.add_subplot()
    peak = max(int(errors.max()) if errors.count() else 0, 1)
    image = ax.imshow(errors, cmap="Reds", vmin=0, vmax=peak, interpolation="nearest")
    ax.set_facecolor("#f2f2f2")  # the masked diagonal
    fig.colorbar(image, ax=ax, shrink=0.8, label="images")
    for (t, p), value in np.ndenumerate(counts):
        if t != p and value:
            ax.text(p, t, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > peak / 2 else "black")
    wrong = counts.sum(1) - np.diag(counts)
    ax.set_xticks(range(c), [str(analyzer.label(i)) for i in range(c)])
    ax.set_yticks(range(c), [f"{analyzer.label(i)} ({wrong[i]})" for i in range(c)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (errors)")
    ax.set_title(f"Validation errors only: {analyzer.errors:,} of {analyzer.samples:,} (diagonal masked)")
    return fig


def samples(images: torch.Tensor, labels: torch.Tensor, path: Path, columns: int = 8) -> None:
    """Augmented training images (normalised tensors, de-normalised for display) with labels."""
    plt = _pyplot()
    n = len(images)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * 1.35))
    pixels = (images.detach().cpu().float() * STD + MEAN).clamp(0, 1)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(pixels[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(str(int(labels[i])), fontsize=8)
    fig.suptitle("Augmented training samples")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
