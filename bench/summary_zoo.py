"""The summary over torchvision's model zoo (the cases of ``bench/rf_zoo.py``): per model, whether
the parameter column adds up to the total at depth 1, 2 and all, whether FLOPs are the same on
the meta device and the CPU, and the activation peak on meta against the CPU allocator's peak of
a plain forward (``torch.profiler``'s memory events), one line each.

    OMP_NUM_THREADS=1 python bench/summary_zoo.py [NAME ...]
"""

from __future__ import annotations

import sys
import time
import warnings

import torch
from rf_zoo import zoo
from torch import nn
from torch.profiler import ProfilerActivity, profile

import torchprobe
from torchprobe.engine.inputs import batch_sizes


def allocator_peak(model: nn.Module, inputs: list[torch.Tensor]) -> int:
    """Peak bytes the CPU allocator held during a plain eval forward, beyond what existed before."""
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model.eval()(*inputs)
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def check(name: str) -> str:
    factory, size = zoo()[name]
    torch.manual_seed(0)
    model = factory().eval()
    start = time.perf_counter()
    meta = torchprobe.summary(model, size, device="meta")
    took = time.perf_counter() - start
    cpu = torchprobe.summary(model, size, device="cpu")
    adds_up = all(sum(line.params for line in meta.lines(d)) == meta.total_params - meta.uncalled_params
                  for d in (None, 1, 2))
    same_flops = [c.flops for c in meta.calls] == [c.flops for c in cpu.calls]
    inputs = [torch.randn(s) for s in batch_sizes(size)]
    peak = allocator_peak(model, inputs)
    ratio = meta.memory.peak_activations / peak if meta.memory and peak else float("nan")
    return (f"{name:38s} params add up {'yes' if adds_up else 'NO '}  uncalled {meta.uncalled_params:>9,}  "
            f"FLOPs meta==cpu {'yes' if same_flops else 'NO '} ({meta.total_flops:>15,})  "
            f"peak meta/allocator {ratio:5.3f}  {took:5.2f} s")


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in names or list(zoo()):
        try:
            print(check(name), flush=True)
        except Exception as error:  # noqa: BLE001 - report and go on to the next model
            print(f"{name:38s} FAILED: {type(error).__name__}: {error}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
