"""The demo's own pictures: the seed's 2x2 training curves and a grid of augmented samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mnist_demo.augment import MEAN, STD


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(history: list[dict[str, Any]], path: Path) -> None:
    """Train/validation loss and accuracy per epoch, the seed's 2x2 grid."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = [("train_loss", "Training loss"), ("train_accuracy", "Training accuracy"),
              ("val_loss", "Validation loss"), ("val_accuracy", "Validation accuracy")]
    for ax, (key, title) in zip(axes.flat, panels):
        ax.plot(epochs, [h[key] for h in history], marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
