"""The demo's own pictures: the seed's 2x2 training curves and a grid of augmented samples."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

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


def curves(history: Sequence[EpochMetrics], path: Path) -> None:
    """Train/validation loss and accuracy per epoch, the seed's 2x2 grid."""
    plt = _pyplot()
    epochs = [h.epoch for h in history]
    panels = [
        ([h.train_loss for h in history], "Training loss"),
        ([h.train_accuracy for h in history], "Training accuracy"),
        ([h.val_loss for h in history], "Validation loss"),
        ([h.val_accuracy for h in history], "Validation accuracy"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (values, title) in zip(axes.flat, panels):
        ax.plot(epochs, values, marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


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
