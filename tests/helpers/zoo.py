"""Small models for the shape and summary tests: each one exercises one behaviour."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LeNet(nn.Module):
    """The classic MNIST LeNet; ``fc1`` expects 320 features (28x28 input), 32x32 gives 500."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


class SharedAndTied(nn.Module):
    """One block called twice, and an output layer whose weight is tied to the input layer's."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(8, 8)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.decode = nn.Linear(8, 8)
        self.decode.weight = self.encode.weight  # tied: one tensor, two modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.block(self.block(self.encode(x))))


class DictOutput(nn.Module):
    """Returns a dict of tensors, as detection and multi-task models do."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.logits = nn.Linear(8, 5)
        self.boxes = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x).mean((2, 3))
        return {"logits": self.logits(f), "boxes": self.boxes(f)}


class KeywordInputs(nn.Module):
    """Takes an image and a keyword mask, as ``model(x, mask=m)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.conv(x)
        return y if mask is None else y * mask


class TokenClassifier(nn.Module):
    """Token ids in, a class per sequence out: an input that must be integers below 100."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(1))
