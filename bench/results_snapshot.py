"""Hold a speed change to "results unchanged": the exact rows of ``receptive_field`` (every number,
the span maps, every support term, placements, unit dims, notes) and ``summary(...).to_dict()`` of
a set of models, written to a JSON file at one commit and compared at another.

    OMP_NUM_THREADS=1 .venv/bin/python bench/results_snapshot.py save /tmp/before.json   # at the old commit
    OMP_NUM_THREADS=1 .venv/bin/python bench/results_snapshot.py compare /tmp/before.json  # at the new one

``compare`` prints the models that differ and the first differing row of each, and exits 1 when
any does. Models: 18 torchvision models (weights=None, seed 0), the reference network, a 2-layer
transformer encoder (layout LC) and an LSTM.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn

import torchprobe

TORCHVISION = ["resnet50", "vgg16", "densenet121", "vit_b_16", "swin_t", "convnext_tiny", "mobilenet_v3_large",
               "efficientnet_b0", "regnet_y_400mf", "shufflenet_v2_x1_0", "squeezenet1_0", "googlenet",
               "inception_v3", "maxvit_t", "swin_v2_t", "alexnet", "mnasnet0_5", "wide_resnet50_2"]


def cases() -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str | None]]:
    from mnist_demo.model import Net

    found: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str | None]] = {
        name: (lambda name=name: getattr(torchvision.models, name)(weights=None),
               (3, 299, 299) if name == "inception_v3" else (3, 224, 224), None)
        for name in TORCHVISION
    }
    found["net"] = (Net, (1, 28, 28), None)
    found["encoder"] = (lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2),
                        (16, 64), "LC")
    found["lstm"] = (lambda: nn.LSTM(8, 16, batch_first=True), (20, 8), "LC")
    return found


def results(model: nn.Module, size: tuple[int, ...], layout: str | None) -> dict[str, Any]:
    rf = torchprobe.receptive_field(model, size, layout=layout)
    rows = [[layer.to_dict(), repr(layer.maps), repr(layer.places), list(layer.unit_dims), list(layer.units),
             [[[t.lo.tolist(), t.hi.tolist()] for t in m.terms] for m in layer.maps or ()]] for layer in rf.layers]
    summary = torchprobe.summary(model, size, layout=layout)
    return json.loads(json.dumps({"rf": rows, "notes": [n.to_dict() for n in rf.notes], "summary": summary.to_dict()},
                                 default=str))


def snapshot() -> dict[str, Any]:
    out = {}
    for name, (build, size, layout) in cases().items():
        torch.manual_seed(0)
        out[name] = results(build().eval(), size, layout)
        print(name, file=sys.stderr, flush=True)
    return out


def first_difference(before: Any, after: Any, path: str = "") -> str | None:
    if type(before) is not type(after):
        return f"{path}: {str(before)[:200]} != {str(after)[:200]}"
    if isinstance(before, dict):
        for key in sorted(set(before) | set(after)):
            found = first_difference(before.get(key), after.get(key), f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(before, list):
        if len(before) != len(after):
            return f"{path}: {len(before)} entries != {len(after)}"
        for i, (b, a) in enumerate(zip(before, after)):
            found = first_difference(b, a, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if before == after else f"{path}: {str(before)[:200]} != {str(after)[:200]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["save", "compare"])
    parser.add_argument("path")
    args = parser.parse_args()
    before: dict[str, Any] = {}
    if args.action == "compare":  # read first: a bad file is told before minutes of analysis
        try:
            with open(args.path) as file:
                before = json.load(file)
        except (OSError, ValueError) as error:
            print(f"error: cannot read the snapshot {args.path}: {error}", file=sys.stderr)
            return 2
    now = snapshot()
    if args.action == "save":
        try:
            with open(args.path, "w") as file:
                json.dump(now, file)
        except OSError as error:
            print(f"error: cannot write the snapshot {args.path}: {error}", file=sys.stderr)
            return 2
        print(f"{len(now)} models written to {args.path}")
        return 0
    differ = {name: first_difference(before.get(name), now.get(name), name) for name in sorted(set(before) | set(now))}
    differ = {name: found for name, found in differ.items() if found}
    print(f"{len(now)} models compared, {len(differ)} differ")
    for found in differ.values():
        print(found)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
