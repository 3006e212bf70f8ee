"""Training throughput of the reference workload in 1 and 2 processes (torchrun, gloo, CPU).

Each configuration trains the default recipe for ``--epochs`` epochs on the first ``--limit``
training images and reports images per second of training (the median epoch, validation
excluded) and the wall time of the whole run, as a table and as JSON lines. Run by hand, on an
otherwise idle machine:

    .venv/bin/python bench/ddp_throughput.py --epochs 3 --limit 20000

Results and the machine they were measured on: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# (processes, torch threads per process)
CONFIGURATIONS = [(1, 1), (1, 2), (2, 1)]


def run(processes: int, threads: int, args: argparse.Namespace) -> dict[str, float]:
    out = Path(args.out) / f"p{processes}-t{threads}"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launcher, "-m", "mnist_demo", "train", "--epochs", str(args.epochs), "--limit", str(args.limit),
               "--device", "cpu", "--out", str(out)]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    epoch = statistics.median(h["epoch_seconds"] for h in metrics["history"])
    return {"processes": processes, "threads_per_process": threads,
            "images_per_second": metrics["train_images"] / epoch, "median_epoch_seconds": epoch,
            "wall_seconds": wall, "val_accuracy": metrics["history"][-1]["val_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=20000)
    parser.add_argument("--out", default="runs/ddp-bench")
    args = parser.parse_args()
    rows = [run(p, t, args) for p, t in CONFIGURATIONS]
    print("| processes | threads each | images/s (training) | median epoch s | "
          f"wall s ({args.epochs} epochs, {args.limit} images) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['processes']} | {r['threads_per_process']} | {r['images_per_second']:,.0f} | "
              f"{r['median_epoch_seconds']:.2f} | {r['wall_seconds']:.1f} |")
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
