"""Memory of a summary's pass, checked against what the CPU allocator did in a plain forward
(the profiler's allocation events: an independent account), and adding up per row."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn
from torch.profiler import ProfilerActivity, profile

import torchprobe
from mnist_demo.model import Net


def allocator_account(model: nn.Module, x: torch.Tensor, train: bool) -> tuple[int, int]:
    """Peak bytes the CPU allocator held during a plain forward beyond what existed before, and the
    bytes still held when it returned (the output and, training, what autograd saved)."""
    model.train(train)
    with torch.set_grad_enabled(train), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        output = model(x)
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    del output
    return peak, live


MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 10)),
            (8, 1, 28, 28)),
    "seed_net": (Net, (8, 1, 28, 28)),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (2, 3, 48, 48)),
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_memory_matches_the_allocator_of_a_real_run(name: str, mode: str, device: str) -> None:
    """On the meta device as on the CPU: the activations' peak equals the allocator's, and in
    train mode what autograd saved (with the output) is what the allocator still held at the end.
    (Tolerance: none needed on these models; attention kernels differ by device, see the docs.)"""
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    x = torch.randn(shape)
    peak, held = allocator_account(model, x, train=mode == "train")
    result = torchprobe.summary(model, input_data=x, mode=mode, device=device)
    output = result.calls[0].output
    output_bytes = math.prod(output.shape) * output.dtype.itemsize
    assert result.memory.peak_activations == peak
    if mode == "train":  # the output is among the saved tensors when its op saves it (log_softmax does)
        assert result.saved_bytes in (held, held - output_bytes)
    else:
        assert result.saved_bytes == 0 and held == output_bytes


@pytest.mark.parametrize("depth", [None, 0, 1, 2])
def test_memory_columns_add_up_at_every_depth(depth: int | None) -> None:
    result = torchprobe.summary(torchvision.models.resnet18(), (3, 64, 64), mode="train", depth=depth)
    lines = result.visible()
    assert sum(line.allocated for line in lines) == result.allocated_bytes > 0
    assert sum(line.saved for line in lines) == result.saved_bytes > 0
    assert result.peak_bytes == result.size_bytes + result.memory.input_bytes + result.memory.peak_activations


def test_memory_is_in_the_json_and_the_table() -> None:
    result = torchprobe.summary(Net(), (1, 28, 28), mode="train", columns=["params", "activations", "saved"])
    memory = result.to_dict()["memory"]
    assert memory["input_bytes"] == 28 * 28 * 4 and memory["saved_bytes"] == result.saved_bytes > 0
    assert sum(row["saved_bytes"] for row in result.to_dict()["layers"]) == memory["saved_bytes"]
