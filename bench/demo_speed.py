"""Time the reference workload's training end to end: eager, channels_last, torch.compile, thread counts.

Each run is a fresh subprocess (``--worker``) that builds mnist_demo's own :class:`Trainer` (the
default recipe, its model, optimizer, one-cycle schedule and batched augmentation on the real
MNIST training images), trains ``--steps`` steps through ``Trainer.train_epoch`` and then runs
``evaluate`` over the first ``--eval-images`` test images. torch.compile runs get a fresh
``TORCHINDUCTOR_CACHE_DIR`` each, so their compile time is paid in full; it shows as the first
step's time (and, for evaluation, as part of the evaluation time: eval mode recompiles).

    OMP_NUM_THREADS=1 .venv/bin/python bench/demo_speed.py --repeat 3
    .venv/bin/python bench/demo_speed.py --variants eager --threads 1 2 --steps 150 --repeat 3
    .venv/bin/python bench/demo_speed.py --variants eager --threads 1 2 --burners 2 --max-seconds 60

``--threads N`` calls ``torch.set_num_threads(N)`` in the worker (``OMP_NUM_THREADS`` is removed
from its environment unless ``--omp-env`` is given); ``--burners K`` keeps K busy-looping Python
processes running during the measurements (always stopped at the end). The 1-minute load average
is read before each run. Numbers: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

VARIANTS = ("eager", "channels_last", "compile", "compile+channels_last")
DEFAULT_RUN_STEPS = 20 * 391  # the default recipe: 20 epochs of ceil(50,000 / 128) steps


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One timed run in this process; returns its numbers."""
    import torch
    from rich.console import Console

    if args.threads:
        torch.set_num_threads(args.threads[0])
    if args.interop:
        torch.set_num_interop_threads(args.interop)
    from mnist_demo.augment import BatchedAugment
    from mnist_demo.data import Split, load_mnist
    from mnist_demo.evaluate import evaluate
    from mnist_demo.recipe import DEFAULT
    from mnist_demo.train import TrainConfig, Trainer
    from mnist_demo.watch import EpochProgress

    data = load_mnist()
    recipe = DEFAULT
    console = Console(file=open(os.devnull, "w"), width=160)  # noqa: SIM115 - closed with the process
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(recipe, Path(out), device="cpu", limit=args.steps * recipe.batch_size, tensorboard=False)
        trainer = Trainer(config, data, console)
    if "channels_last" in args.worker:
        # the 1-channel input is already channels_last-contiguous: the weights decide the layout
        trainer.model.to(memory_format=torch.channels_last)
    if "compile" in args.worker:
        trainer.net = torch.compile(trainer.model)
    augment = BatchedAugment(recipe.augment, generator=trainer.generator)
    stamps: list[float] = []

    def timed(batches: Iterator[Any]) -> Iterator[Any]:
        """Each request for a batch is the end of the previous step; stops after ``--max-seconds``."""
        for batch in batches:
            stamps.append(time.perf_counter())
            if args.max_seconds and stamps[-1] - stamps[0] > args.max_seconds:
                return
            yield batch
        stamps.append(time.perf_counter())

    started = time.perf_counter()
    with EpochProgress(console, 1, 1, trainer.steps_per_epoch, every=1e9) as progress:
        trainer.train_epoch(timed(trainer.batched_epoch(augment)), progress)
    train_s = time.perf_counter() - started
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    test = Split(data.test.images[: args.eval_images], data.test.labels[: args.eval_images])
    started = time.perf_counter()
    scores = evaluate(trainer.net, test, trainer.device)
    eval_s = time.perf_counter() - started
    steady = steps[10:] if len(steps) > 20 else steps[1:]
    return {"steps": len(steps), "first_step_s": steps[0], "step_ms": 1000 * statistics.median(steady),
            "train_s": train_s, "eval_s": eval_s, "eval_accuracy": scores["accuracy"],
            "threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads()}


def run_one(args: argparse.Namespace, variant: str, threads: int, passive: bool) -> dict[str, Any]:
    """``variant`` in a fresh process with a fresh inductor cache; the load average before it."""
    env = dict(os.environ)
    if args.omp_env:
        env["OMP_NUM_THREADS"] = str(threads)
    else:
        env.pop("OMP_NUM_THREADS", None)
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    command = [sys.executable, __file__, "--worker", variant, "--threads", str(threads), "--steps", str(args.steps),
               "--eval-images", str(args.eval_images), "--max-seconds", str(args.max_seconds),
               "--interop", str(args.interop)]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
        started = time.perf_counter()
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout,
                                  cwd=Path(__file__).resolve().parents[1])
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {args.timeout:g}s", "load1": load}
        wall = time.perf_counter() - started
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {done.returncode}", "load1": load}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(load1=load, process_s=wall)
    return result


def burners(count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` busy-looping processes (each ends by itself after 30 minutes at the latest)."""
    loop = "import time\nend = time.monotonic() + 1800\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1])
    parser.add_argument("--passive", nargs="+", choices=["no", "yes"], default=["no"],
                        help="OMP_WAIT_POLICY=PASSIVE in the worker (yes), or unset (no)")
    parser.add_argument("--interop", type=int, default=0, help="torch.set_num_interop_threads (0: leave it)")
    parser.add_argument("--omp-env", action="store_true", help="set OMP_NUM_THREADS=N instead of set_num_threads")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=0.0, help="stop training after this long (0: never)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per run")
    parser.add_argument("--burners", type=int, default=0, help="busy-looping processes during the runs")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to wait after starting burners")
    parser.add_argument("--json", action="store_true", help="also print every run as a JSON line")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    combos = list(itertools.product(args.variants, args.threads, [p == "yes" for p in args.passive]))
    results: dict[tuple[str, int, bool], list[dict[str, Any]]] = {c: [] for c in combos}
    procs = burners(args.burners)
    try:
        if procs:
            time.sleep(args.settle)
        for _ in range(args.repeat):  # interleaved: a drift in the machine's load hits every variant alike
            for combo in combos:
                result = run_one(args, *combo)
                results[combo].append(result)
                if args.json:
                    print(json.dumps({"variant": combo[0], "threads": combo[1], "passive": combo[2], **result}),
                          flush=True)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    print(f"\n`{' '.join(['python', *sys.argv])}` (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
          f"in the parent; {args.burners} burner(s); medians of {args.repeat})\n")
    print("| variant | threads | OMP_WAIT_POLICY | load1 | first step s | steady ms/step | steps/s | "
          f"train s ({args.steps} steps) | eval s ({args.eval_images} images) | train+eval s | "
          f"default run (20 epochs) est. min |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (variant, threads, passive), runs in results.items():
        ok = [r for r in runs if "error" not in r]
        load = statistics.median(r["load1"] for r in runs)
        policy = "PASSIVE" if passive else "unset"
        if not ok:
            print(f"| {variant} | {threads} | {policy} | {load:.2f} | {runs[0]['error']} |||||||")
            continue

        def med(key: str, ok: list[dict[str, Any]] = ok) -> float:
            return statistics.median(r[key] for r in ok)

        rate = statistics.median(r["steps"] / r["train_s"] for r in ok)
        estimate = (med("first_step_s") + med("step_ms") / 1000 * (DEFAULT_RUN_STEPS - 1)) / 60
        partial = "" if all(r["steps"] == args.steps for r in ok) else f" ({min(r['steps'] for r in ok)}+ steps)"
        print(f"| {variant} | {threads} | {policy} | {load:.2f} | {med('first_step_s'):.2f} | {med('step_ms'):.1f} | "
              f"{rate:.2f} | {med('train_s'):.1f}{partial} | {med('eval_s'):.2f} | "
              f"{med('train_s') + med('eval_s'):.1f} | {estimate:.1f} |")


if __name__ == "__main__":
    main()
