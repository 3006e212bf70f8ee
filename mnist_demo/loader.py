"""The reference pipeline: the seed's per-sample torchvision transforms in DataLoader workers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mnist_demo.augment import AugmentConfig, torchvision_transform
from mnist_demo.data import Split


class PilImages(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """MNIST digits as PIL images through a torchvision transform, as the seed's notebook fed them."""

    def __init__(self, split: Split, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.images, self.labels, self.transform = split.images, split.labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = Image.fromarray(self.images[index].numpy(), mode="L")
        return self.transform(image), self.labels[index]


def torchvision_loader(
    split: Split, cfg: AugmentConfig, batch_size: int, generator: torch.Generator, workers: int
) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """Each epoch (each ``iter``) starts fresh workers, seeded from ``generator`` (the run's
    checkpointed stream) along with the epoch's order: an epoch's augmentations depend only on the
    generator's state at its start, so a resumed run draws what the uninterrupted one drew.
    (Persistent workers would carry their random state across epochs, which no checkpoint holds.)"""
    return DataLoader(
        PilImages(split, torchvision_transform(cfg)), batch_size=batch_size, shuffle=True, generator=generator,
        num_workers=workers, persistent_workers=False, drop_last=False,
    )
