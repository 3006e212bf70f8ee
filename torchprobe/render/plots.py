"""Pictures of a FailureAnalyzer: failure galleries, confusion heatmaps, most-confused pairs and
the reliability diagram; and of effective receptive fields: their windows over an input, and one
layer's ERF in two results side by side.

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
    from torchprobe.rf.effective import ERFResult, LayerERF

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


# -- effective receptive fields ---------------------------------------------------------------------


def erf_windows(result: ERFResult, image: torch.Tensor | None = None, *, layers: Sequence[str] | None = None,
                mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None,
                columns: int = 4, alpha: float = 0.7) -> Figure:
    """One panel per layer of a 2-D :class:`~torchprobe.ERFResult`: the input ``image`` (by default
    the batch's first sample; (C, H, W), ``mean``/``std`` as in :func:`gallery`) in grey, the
    chosen unit's theoretical span as a box (clipped at the image's borders, pixel edges exact),
    and its ERF map as a heatmap inside it (scaled to its own maximum; zero pixels transparent)."""
    chosen = [result.layer(name) for name in layers] if layers is not None else list(result.layers)
    if len(result.spatial_size) != 2:
        raise ValueError(f"ERF windows are drawn for 2-D inputs; this one has axes {''.join(result.axis_names)}")
    background = _background(image if image is not None else result.example, result.spatial_size, mean, std)
    columns = max(1, min(columns, len(chosen)))
    rows = max(1, math.ceil(len(chosen) / columns))
    fig = _figure(3.0 * columns + 0.4, 3.2 * rows + 0.5)
    fig.suptitle(f"Effective receptive fields ({_inputs_text(result)})")
    from matplotlib.patches import Rectangle

    for i, layer in enumerate(chosen):
        ax = fig.add_subplot(rows, columns, i + 1)
        if background is not None:
            ax.imshow(background, cmap="gray" if background.ndim == 2 else None, vmin=0, vmax=1,
                      interpolation="nearest")
        heat = _heat(layer.map)
        ax.imshow(np.ma.masked_where(heat <= 0, heat), cmap="inferno", vmin=0, vmax=1, alpha=alpha,
                  interpolation="nearest")
        if layer.span is not None and all(s is not None for s in layer.span):
            (y0, y1), (x0, x1) = layer.span  # type: ignore[misc]
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, edgecolor="cyan",
                                   linewidth=1.5))
        height, width = result.spatial_size
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{layer.name or '(model)'} unit {','.join(map(str, layer.unit))}", fontsize=9)
        ax.set_xlabel(_erf_caption(layer), fontsize=8)
    return fig


def erf_compare(before: ERFResult, after: ERFResult, layer: str | None = None,
                labels: tuple[str, str] = ("at initialisation", "after training")) -> Figure:
    """The ERF of one layer in two results side by side (by default the first result's last
    layer), e.g. at initialisation and after training: each map over its theoretical span box,
    cropped to the span, and under them the marginal mass profile per axis of both."""
    name = before.layers[-1].name if layer is None else layer
    pair = (before.layer(name), after.layer(name))
    if any(r.map.dim() != 2 for r in pair):
        raise ValueError("ERF comparisons are drawn for 2-D inputs")
    from matplotlib.patches import Rectangle

    fig = _figure(9.0, 7.5)
    fig.suptitle(f"Effective receptive field of {name or '(model)'}")
    grid = fig.subplots(2, 2, height_ratios=[3, 2])
    box = _crop(pair)
    for ax, result, erf, label in zip(grid[0], (before, after), pair, labels):
        heat = _heat(erf.map)
        shown = ax.imshow(heat, cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
        if erf.span is not None and all(s is not None for s in erf.span):
            (y0, y1), (x0, x1) = erf.span  # type: ignore[misc]
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, edgecolor="cyan",
                                   linewidth=1.5))
        (top, bottom), (left, right) = box
        ax.set_xlim(left - 0.5, right + 0.5)
        ax.set_ylim(bottom + 0.5, top - 0.5)
        ax.set_title(f"{label}\n{_inputs_text(result)}", fontsize=9)
        ax.set_xlabel(_erf_caption(erf), fontsize=8)
        fig.colorbar(shown, ax=ax, shrink=0.8, label="share of the maximum")
    for axis, ax in enumerate(grid[1]):
        for erf, label in zip(pair, labels):
            marginal = erf.map.sum(1 - axis).numpy()
            total = marginal.sum()
            ax.plot(np.arange(marginal.size), marginal / total if total > 0 else marginal, label=label)
            if erf.span is not None and erf.span[axis] is not None:
                first, last = erf.span[axis]  # type: ignore[misc]
                ax.axvspan(first - 0.5, last + 0.5, color="tab:gray", alpha=0.1)
        lo, hi = box[axis]
        ax.set_xlim(lo - 0.5, hi + 0.5)
        ax.set_xlabel(f"input pixel along {before.axis_names[axis] if before.axis_names else axis}")
        ax.set_ylabel("share of the gradient mass")
        ax.legend(fontsize=8)
    return fig


def _heat(values: torch.Tensor) -> np.ndarray:
    heat = values.detach().double().cpu().numpy()
    peak = heat.max(initial=0.0)
    return heat / peak if peak > 0 else heat


def _crop(pair: Sequence[LayerERF]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Rows and columns to show: the hull of both windows (span and non-zero map), one pixel more."""
    shape = pair[0].map.shape
    out = []
    for axis in range(2):
        lo, hi = shape[axis] - 1, 0
        for erf in pair:
            origin, values = erf.window()
            if values.numel():
                lo, hi = min(lo, origin[axis]), max(hi, origin[axis] + values.shape[axis] - 1)
        if lo > hi:
            lo, hi = 0, shape[axis] - 1
        out.append((max(lo - 1, 0), min(hi + 1, shape[axis] - 1)))
    return out[0], out[1]


def _background(x: torch.Tensor | None, size: tuple[int, ...], mean: Sequence[float] | float | None,
                std: Sequence[float] | float | None) -> np.ndarray | None:
    """The image to draw under the windows, or None when ``x`` is not one of the input's size."""
    if x is None:
        return None
    x = x.detach().float().cpu()
    if x.dim() == 3 and x.shape[0] not in (1, 3):
        x = x.mean(0, keepdim=True)  # other channel counts: their mean, in grey
    if tuple(x.shape[-2:]) != tuple(size):
        return None
    return _image(x, mean, std)


def _inputs_text(result: ERFResult) -> str:
    return f"{result.batch} inputs: {result.inputs}" if result.random_inputs else f"{result.batch} data inputs"


def _erf_caption(erf: LayerERF) -> str:
    rf = "×".join("?" if r is None else str(r) for r in erf.theory.rf)
    if erf.area50 is None or erf.area95 is None or erf.std is None:
        return f"RF {rf}: no gradient"
    return (f"RF {rf}: 50% of the mass on {100 * erf.area50:.0f}%,\n95% on {100 * erf.area95:.0f}% of its area; "
            f"std {'×'.join(f'{s:.1f}' for s in erf.std)} px")
