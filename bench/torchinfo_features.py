"""Re-measures the numbers of README.md's "Against torchinfo" table, torchinfo 1.8 against torchprobe.

Each row is one function that runs both tools on the same fresh model and returns what they report,
next to a reference where one exists (the true parameter count, a hand count of multiply-adds,
``FlopCounterMode`` on a real forward, the CPU allocator's peak from ``torch.profiler``).
torchinfo's ``input_size`` includes the batch dim, torchprobe's does not. ``torch.compile`` uses a
backend that counts dynamo compilations and runs the graph eagerly, so inductor never runs.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/torchinfo_features.py``
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
import torchinfo
import torchvision
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import torchprobe
from torchprobe.shapes.tensors import desc_text

Row = tuple[str, str, str, str]  # what is measured, reference, torchinfo, torchprobe


def failure(run: Callable[[], object]) -> str:
    """``ok``, or the exception's type and the first line of its cause (or of its own message)."""
    try:
        run()
    except Exception as error:  # any failure is a measurement here
        cause = error.__cause__
        detail = f" from {type(cause).__name__}: {cause}" if cause else f": {error}"
        return (type(error).__name__ + detail).splitlines()[0][:110]
    return "ok"


class Tied(nn.Module):
    """A head that reuses the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(1000, 64)
        self.body = nn.Linear(64, 64)
        self.head = nn.Linear(64, 1000, bias=False)
        self.head.weight = self.embedding.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embedding(x)))


class MatMul(nn.Module):
    """A forward with a functional ``x @ self.w`` and no submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(64, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


class DictOut(nn.Module):
    """A forward returning a dict of two tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 4)
        self.b = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.a(x), "aux": self.b(x)}


def tied_weights() -> Row:
    model = Tied()
    ti = torchinfo.summary(model, input_data=[torch.zeros(1, 8, dtype=torch.long)], verbose=0)
    tp = torchprobe.summary(model, (8,), dtypes=[torch.long])
    head = next(line for line in tp.lines() if line.stats.name == "head")
    true = sum(p.numel() for p in model.parameters())
    return ("tied weight, params", f"{true:,} unique", f"{ti.total_params:,}",
            f"{sum(line.params for line in tp.lines()):,}, head shared={head.shared}")


def lstm_macs() -> Row:
    lstm = nn.LSTM(16, 32)
    ti = {dev: torchinfo.summary(nn.LSTM(16, 32), (10, 16), device=dev, verbose=0).total_mult_adds
          for dev in ("cpu", "meta")}
    tp = {dev: torchprobe.summary(lstm, (10, 16), device=dev).total_macs for dev in ("cpu", "meta")}
    return ("LSTM(16,32) on (10,16), MACs cpu/meta", f"{10 * 4 * 32 * (16 + 32):,} by hand",
            f"{ti['cpu']:,} / {ti['meta']:,}", f"{tp['cpu']:,} / {tp['meta']:,}")


def matmul_macs() -> Row:
    ti = torchinfo.summary(MatMul(), (1, 8, 64), verbose=0)
    tp = torchprobe.summary(MatMul(), (8, 64))
    return ("functional x @ w on (8,64), MACs", f"{8 * 64 * 32:,} by hand", f"{ti.total_mult_adds:,}",
            f"{tp.total_macs:,}")


def resnet18_macs() -> Row:
    ti = torchinfo.summary(torchvision.models.resnet18(), (1, 3, 224, 224), verbose=0)
    tp = torchprobe.summary(torchvision.models.resnet18(), (3, 224, 224))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        torchvision.models.resnet18()(torch.randn(1, 3, 224, 224))
    return ("resnet18 3x224x224, MACs", f"{counter.get_total_flops() // 2:,} FlopCounterMode/2",
            f"{ti.total_mult_adds:,}", f"{tp.total_macs:,} ({tp.total_flops:,} FLOPs)")


def profiler_peak(train: bool) -> int:
    """The CPU allocator's peak during one forward: the running sum of each event's own allocations."""
    model = torchvision.models.resnet18().train(train)
    x = torch.randn(1, 3, 64, 64)
    with torch.set_grad_enabled(train), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(x)
    held = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        held += event.self_cpu_memory_usage
        peak = max(peak, held)
    return peak


def activation_memory(mode: Literal["eval", "train"]) -> Row:
    ti = torchinfo.summary(torchvision.models.resnet18(), (1, 3, 64, 64), mode=mode, verbose=0)
    tp = torchprobe.summary(torchvision.models.resnet18(), (3, 64, 64), mode=mode)
    assert tp.memory is not None
    saved = f", saved {tp.saved_bytes:,} B" if mode == "train" else ""
    return (f"resnet18 3x64x64 activations, {mode}", f"{profiler_peak(mode == 'train'):,} B profiler peak",
            f"{ti.total_output_bytes:,} B fwd/bwd pass", f"{tp.memory.peak_activations:,} B peak{saved}")


def meta_device() -> Row:
    def after(run: Callable[[nn.Module], object]) -> str:
        model = torchvision.models.resnet18()
        weight = model.conv1.weight.detach().clone()
        run(model)
        param = model.conv1.weight
        same = param.device.type == "cpu" and torch.equal(weight, param)
        return f"model on {param.device.type}, weights {'kept' if same else 'lost'}"

    return ('device="meta", resnet18', "model on cpu before",
            after(lambda m: torchinfo.summary(m, (1, 3, 224, 224), device="meta", verbose=0)),
            after(lambda m: torchprobe.summary(m, (3, 224, 224), device="meta")))


def dict_output() -> Row:
    real = ", ".join(f"{key}: {list(value.shape)}" for key, value in DictOut()(torch.zeros(1, 8)).items())
    ti = torchinfo.summary(DictOut(), (1, 8), verbose=0)
    tp = torchprobe.summary(DictOut(), (8,))
    return ("dict output, model row", f"{{{real}}} real", str(ti.summary_list[0].output_size),
            desc_text(tp.lines()[0].stats.output))


def bfloat16_model() -> Row:
    model = nn.Sequential(nn.Linear(8, 4)).to(torch.bfloat16)
    trace: list[Any] = []
    tp = failure(lambda: trace.append(torchprobe.trace(model, (8,))))
    tp_text = f"{tp}, input {trace[0].rows[0].inputs_text()}" if trace else tp
    ti = failure(lambda: torchinfo.summary(model, (1, 8), verbose=0))
    return ("bfloat16 Linear, no dtype", "weights bfloat16", ti, tp_text)


def vit_at_200() -> Row:
    def torchprobe_fix() -> str:
        try:
            torchprobe.trace(torchvision.models.vit_b_16(), (3, 200, 200))
        except torchprobe.ShapeError as error:
            return f"ShapeError, fix: {error.diagnosis.fix}"
        return "ok"

    ti = failure(lambda: torchinfo.summary(torchvision.models.vit_b_16(), (1, 3, 200, 200), verbose=0))
    return ("vit_b_16 at 3x200x200", "", ti, torchprobe_fix())


def compiled() -> Row:
    compilations = 0

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., Any]:
        nonlocal compilations
        compilations += 1
        return graph.forward

    def count(run: Callable[[Any], object]) -> str:
        nonlocal compilations
        compilations = 0
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
        run(torch.compile(model, backend=counting_backend))
        return f"{compilations} dynamo compilations"

    return ("torch.compile(model)", "", count(lambda m: torchinfo.summary(m, (1, 3, 32, 32), verbose=0)),
            count(lambda m: torchprobe.summary(m, (3, 32, 32))))


ROWS: list[Callable[[], Row]] = [
    tied_weights, lstm_macs, matmul_macs, resnet18_macs, lambda: activation_memory("eval"),
    lambda: activation_memory("train"), meta_device, dict_output, bfloat16_model, vit_at_200, compiled,
]


def main() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    rows = [("", "reference", f"torchinfo {torchinfo.__version__}", f"torchprobe {torchprobe.__version__}")]
    rows += [row() for row in ROWS]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} thread")
    for index, row in enumerate(rows):
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("-+-".join("-" * width for width in widths))


if __name__ == "__main__":
    main()
