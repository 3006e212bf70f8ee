"""Train the reference workload under named variants and print validation/test accuracy.

Each variant changes one thing between the seed's settings and the default recipe, so the table
shows what each change contributes. Run (about 5 minutes per 20-epoch run on 2 idle CPU cores):

    .venv/bin/python bench/mnist_ablation.py --variants default seed --seeds 1 2 3
    .venv/bin/python bench/mnist_ablation.py --variants seed+light-augment seed+half-dropout seed+recalibrate-bn

Results go to runs/ablation/<variant>-s<seed>/ (the usual run folders) and a JSON line per run on
stdout; docs/mnist.md holds the numbers measured with these commands.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from mnist_demo.data import load_mnist
from mnist_demo.recipe import DEFAULT, SEED, Recipe
from mnist_demo.train import TrainConfig, run_training

VARIANTS: dict[str, Recipe] = {
    "default": DEFAULT,
    "seed": SEED,
    "seed+light-augment": SEED.replace(name="seed+light-augment", augment=DEFAULT.augment),
    "seed+half-dropout": SEED.replace(name="seed+half-dropout", dropout_scale=DEFAULT.dropout_scale),
    "seed+recalibrate-bn": SEED.replace(name="seed+recalibrate-bn", recalibrate_bn=True),
    "default-recalibrate-bn": DEFAULT.replace(name="default-recalibrate-bn", recalibrate_bn=False),
    "default+seed-dropout": DEFAULT.replace(name="default+seed-dropout", dropout_scale=SEED.dropout_scale),
    "default+logit-relu": DEFAULT.replace(name="default+logit-relu", logit_relu=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["default", "seed"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's 20 epochs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/ablation")
    args = parser.parse_args()
    data = load_mnist()
    console = Console(quiet=True)
    for name in args.variants:
        recipe = VARIANTS[name] if args.epochs is None else VARIANTS[name].replace(epochs=args.epochs)
        for seed in args.seeds:
            out = Path(args.out) / f"{name}-s{seed}"
            out.mkdir(parents=True, exist_ok=True)
            metrics = run_training(TrainConfig(recipe, out, seed=seed, device=args.device), data, console)
            last = metrics["history"][-1]
            epoch_seconds = sum(h["epoch_seconds"] for h in metrics["history"]) / len(metrics["history"])
            row = {"variant": name, "seed": seed, "epochs": last["epoch"], "val_accuracy": last["val_accuracy"],
                   "test_accuracy": metrics["test"]["accuracy"], "epoch_seconds": epoch_seconds}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
