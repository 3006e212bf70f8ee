"""Pictures of a FailureAnalyzer: failure galleries, confusion heatmaps, most-confused pairs and
the reliability diagram.

matplotlib is an optional extra (``pip install 'torchprobe[plots]'``), imported only when a picture
is drawn, so the rest of torchprobe works without it. Each function returns a
``matplotlib.figure.Figure`` built without pyplot: no global state, no backend to choose, and
``fig.savefig(path)`` works headless; notebooks display it as they do any figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from torchprobe.failures import FailureAnalyzer
    from torchprobe.failures.state import Ranking

ANNOTATE_UP_TO = 20  # classes: beyond this, heatmap cells carry no numbers


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("torchprobe.plots needs matplotlib: pip install 'torchprobe[plots]'") from error
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def gallery(analyzer: FailureAnalyzer, by: Ranking = "loss", k: int = 16, *,
            mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None,
            columns: int = 8) -> Figure:
    """The ``k`` worst failures by ``by`` (``"loss"`` or ``"confidence"``) as images, each with
    true -> predicted, confidence and index under it. Inputs are (C, H, W) with 1 or 3 channels,
    or (H, W); ``mean``/``std`` undo the normalisation (per channel) and the result is shown on
    [0, 1]; without them each image is scaled to its own range."""
    failures = analyzer.worst(by, k)
    shown = [f for f in failures if f.input is not None]
    if failures and not shown:
        raise ValueError("no inputs were kept: pass inputs= to update(), inputs=True to attach(), or keep > 0")
    columns = max(1, min(columns, len(shown)))
    rows = max(1, math.ceil(len(shown) / columns))
    fig = _figure(1.5 * columns + 0.2, 1.8 * rows + 0.4)
    fig.suptitle(f"Worst {len(shown)} failures by {by}" if shown else "No failures")
    for i, failure in enumerate(shown):
        ax = fig.add_subplot(rows, columns, i + 1)
        assert failure.input is not None  # shown keeps the failures with inputs
        image = _image(failure.input, mean, std)
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{analyzer.label(failure.true)} -> {analyzer.label(failure.predicted)}\n"
                      f"conf {failure.confidence:.2f}  #{failure.index}", fontsize=8)
    return fig


def _image(x: torch.Tensor, mean: Sequence[float] | float | None, std: Sequence[float] | float | None) -> np.ndarray:
    """(H, W) or (H, W, 3) floats on [0, 1]: de-normalised and clipped, or scaled to its range."""
    x = x.detach().float().cpu()
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"inputs of shape {tuple(x.shape)} are not images of shape (1 or 3, height, width)")
    if std is not None or mean is not None:
        x = x * _per_channel(std, 1.0) + _per_channel(mean, 0.0)
        x = x.clamp(0, 1)
    else:
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    image = x.permute(1, 2, 0).numpy()
    return image[..., 0] if image.shape[2] == 1 else image


def _per_channel(value: Sequence[float] | float | None, default: float) -> torch.Tensor:
    return torch.as_tensor(default if value is None else value, dtype=torch.float32).reshape(-1, 1, 1)


def confusion(analyzer: FailureAnalyzer, normalize: bool | None = None) -> Figure:
    """Heatmap of the confusion matrix (rows = true class): counts and row-normalised side by side
    (``normalize=None``), or only counts (``False``) or only row-normalised (``True``)."""
    counts = analyzer.confusion_matrix().numpy()
    support = counts.sum(1, keepdims=True)
    normalised = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    panels = [("Counts", counts), ("Row-normalised (recall on the diagonal)", normalised)]
    panels = panels if normalize is None else [panels[int(normalize)]]
    c = analyzer.num_classes
    side = min(max(4.0, 0.45 * c + 1.5), 12.0)
    fig = _figure(side * len(panels) + 1.0, side)
    labels = [str(analyzer.label(i)) for i in range(c)]
    for i, (title, matrix) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if matrix is normalised else None)
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if c <= 2 * ANNOTATE_UP_TO:
            ax.set_xticks(range(c), labels, rotation=90 if c > 10 else 0)
            ax.set_yticks(range(c), labels)
        if c <= ANNOTATE_UP_TO:
            threshold = matrix.max() / 2
            for (t, p), value in np.ndenumerate(matrix):
                if not value:
                    continue  # zeros left blank: the mistakes stand out
                text = f"{value:,}" if matrix is counts else f"{value:.2f}"
                color = "white" if value > threshold else "black"
                ax.text(p, t, text, ha="center", va="center", fontsize=7, color=color)
    return fig


def most_confused(analyzer: FailureAnalyzer, k: int = 10) -> Figure:
    """The ``k`` most frequent (true -> predicted) mistakes as horizontal bars, largest on top."""
    pairs = analyzer.most_confused(k)
    fig = _figure(6.0, 0.35 * max(len(pairs), 3) + 1.0)
    ax = fig.add_subplot()
    ax.set_title(f"Most confused pairs (of {analyzer.errors:,} errors)")
    if not pairs:
        ax.text(0.5, 0.5, "no failures", ha="center", va="center", transform=ax.transAxes)
        return fig
    names = [f"{t} -> {p}" for t, p, _ in pairs][::-1]
    counts = [n for _, _, n in pairs][::-1]
    bars = ax.barh(names, counts, color="tab:red")
    ax.bar_label(bars, [f"{n:,}" for n in counts], padding=2, fontsize=8)
    ax.set_xlabel("count")
    ax.set_ylabel("true -> predicted")
    return fig


def reliability(analyzer: FailureAnalyzer, n_bins: int = 15) -> Figure:
    """Reliability diagram: accuracy per equal-width confidence bin, hatched in red up or down to the
    bin's mean confidence (the gap ECE weighs), and below it how many samples each bin holds."""
    bins = analyzer.reliability(n_bins)
    count = bins["count"]
    filled = count > 0
    accuracy = np.divide(bins["correct"], count, out=np.zeros(n_bins), where=filled)
    confidence = np.divide(bins["confidence"], count, out=np.zeros(n_bins), where=filled)
    left, width = bins["edges"][:-1], 1 / n_bins
    fig = _figure(5.5, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(left[filled], accuracy[filled], width=width, align="edge", edgecolor="black", label="accuracy")
    gap = confidence - accuracy
    top.bar(left[filled], gap[filled], bottom=accuracy[filled], width=width, align="edge", fill=False, hatch="///",
            edgecolor="tab:red", label="gap to mean confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability: ECE {analyzer.calibration_error(n_bins):.4f} ({n_bins} bins, {count.sum():,} samples)")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(left, count, width=width, align="edge", edgecolor="black", color="tab:gray")
    bottom.set_yscale("log" if count.max(initial=0) > 0 else "linear")
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("samples")
    return fig


def save_all(analyzer: FailureAnalyzer, folder: str | Path, *, mean: Sequence[float] | float | None = None,
             std: Sequence[float] | float | None = None, k: int = 16) -> dict[str, Path]:
    """Every picture as a PNG in ``folder``: the galleries (when inputs were kept), the confusion
    heatmap, the most-confused pairs and the reliability diagram. Returns name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {}
    if any(f.input is not None for f in analyzer.worst("loss", 1)):
        for by in ("loss", "confidence"):
            figures[f"gallery_{by}"] = gallery(analyzer, by, k, mean=mean, std=std)
    figures["confusion"] = confusion(analyzer)
    figures["most_confused"] = most_confused(analyzer)
    figures["reliability"] = reliability(analyzer)
    paths = {}
    for name, fig in figures.items():
        paths[name] = folder / f"{name}.png"
        fig.savefig(paths[name])
    return paths
