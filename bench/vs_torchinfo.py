"""Speed of ``torchprobe.receptive_field`` and ``torchprobe.summary`` against ``torchinfo.summary``.

Both analyse the same model in one process, one thread, on the meta device; the median of
``--repeat`` runs after one warm-up each. Run: ``make bench`` or
``.venv/bin/python bench/vs_torchinfo.py --model resnet50 --input 3,224,224``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torchinfo
import torchvision

import torchprobe


def median_seconds(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median wall time of each run; the runs take turns, so a busy machine slows all alike."""
    for run in runs.values():
        run()  # warm-up: imports, caches, first-call costs
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="a torchvision.models factory")
    parser.add_argument("--input", default="3,224,224", help="input size without the batch dimension")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = tuple(int(s) for s in args.input.split(","))
    model = getattr(torchvision.models, args.model)(weights=None)
    # torchinfo moves the model it is given to the meta device: give it its own copy.
    theirs = copy.deepcopy(model)
    results = median_seconds(
        {
            "torchprobe.receptive_field": lambda: torchprobe.receptive_field(model, size),
            "torchprobe.summary": lambda: torchprobe.summary(model, size),
            "torchinfo.summary(device='meta')": lambda: torchinfo.summary(theirs, (1, *size), device="meta", verbose=0),
        },
        args.repeat,
    )
    if args.json:
        print(json.dumps({"model": args.model, "input": size, "seconds": results}))
        return
    print(f"{args.model} {size}, 1 thread, median of {args.repeat}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    for name, seconds in results.items():
        print(f"  {name:<36} {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
