"""Samples per second of one training step fed three ways, over the same images.

``forward+backward`` alone is the floor; ``batched`` adds the on-device augmentation; ``torchvision``
feeds the seed's per-sample transforms through DataLoader workers.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from mnist_demo.augment import AugmentConfig, BatchedAugment, normalize, to_unit
from mnist_demo.data import Split
from mnist_demo.loader import torchvision_loader
from mnist_demo.model import Net


def _step(model: Net, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.nll_loss(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _rate(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], steps: int, device: torch.device) -> float:
    """Images per second over ``steps`` training steps, after two warm-up steps."""
    model = Net().to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for x, y in itertools.islice(batches, 2):
        _step(model, optimizer, x, y)
    _sync(device)
    started, seen = time.perf_counter(), 0
    for x, y in itertools.islice(batches, steps):
        _step(model, optimizer, x, y)
        seen += len(y)
    _sync(device)
    return seen / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    split: Split, cfg: AugmentConfig, batch_size: int, steps: int, device: torch.device, workers: int
) -> dict[str, float]:
    """Images/s for each pipeline, over the first ``(steps + 2) * batch_size`` training images."""
    n = (steps + 2) * batch_size
    images = split.images[:n].unsqueeze(1).to(device)
    labels = split.labels[:n].to(device)

    def on_device(transform: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, n, batch_size):
            yield transform(images[start : start + batch_size]), labels[start : start + batch_size]

    clean = [(normalize(to_unit(x)), y) for x, y in on_device(lambda x: x)]
    augment = BatchedAugment(cfg, generator=torch.Generator().manual_seed(0))
    subset = Split(split.images[:n], split.labels[:n])
    loader = torchvision_loader(subset, cfg, batch_size, torch.Generator().manual_seed(0), workers)
    moved = ((x.to(device), y.to(device)) for x, y in loader)
    return {
        "forward+backward": _rate(iter(clean), steps, device),
        "batched": _rate(on_device(augment), steps, device),
        "torchvision": _rate(moved, steps, device),
    }
