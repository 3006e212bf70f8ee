"""Analysis time against the bare meta forward (issue 15): how much ``torchprobe`` adds to the
one meta forward it runs, next to ``torchinfo.summary(device="meta")``.

One process, one thread. The methods: ``bare`` (the floor: the model built under
``torch.device("meta")``, eval, ``torch.no_grad()``, one forward of a meta input), ``torchinfo``
(``torchinfo.summary(copy, device="meta")`` on a deep copy: torchinfo moves the model it is given),
``receptive_field``, ``summary`` and ``trace`` (torchprobe, on the model built on the CPU). Every
repeat runs each method once, in rotation, so drift on a shared machine weighs on all alike; the
numbers are medians of ``--repeat`` after one warm-up.

Three parts, each printed as a markdown table:

- ``--models``: torchvision models at 3x224x224 (``weights=None``) and ``net`` (the reference
  network ``mnist_demo.model:Net``, 1x28x28), with the ratios to ``bare`` and to torchinfo;
- ``--depth``: stacks of N conv+relu blocks (8 channels, 8x16x16) and N linear+relu blocks
  (16 tokens x 64, layout LC), time per method and the least-squares slope in ms per block;
- ``--sizes``: the reference network at 1xSxS (meta shapes only: the size should not matter).

Without any of the three all parts run with their defaults. ``--profile`` runs cProfile on
``receptive_field`` and ``summary`` instead (top 25 by cumulative and by own time, and own time
per source file); ``--ablate`` times them with one part switched off at a time (FLOP counting,
the memory finalizers, the parameter lookup, the garbage collector; the tracer alone).
Run from a checkout with the environment's torchvision and torchinfo:

    OMP_NUM_THREADS=1 .venv/bin/python bench/analysis_speed.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/analysis_speed.py --models resnet50,vgg16 --repeat 7
    OMP_NUM_THREADS=1 .venv/bin/python bench/analysis_speed.py --profile resnet50,vgg16,swin_t,conv1000 --repeat 3
    OMP_NUM_THREADS=1 .venv/bin/python bench/analysis_speed.py --ablate resnet50,vgg16,swin_t,conv1000
    OMP_NUM_THREADS=1 .venv/bin/python bench/analysis_speed.py --floor vgg16,resnet50,net

Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torchinfo
import torchvision
from torch import nn
from torch.overrides import TorchFunctionMode

import torchprobe
from torchprobe.engine.inputs import model_inputs
from torchprobe.engine.torch_utils import tensors_in
from torchprobe.engine.tracer import Tracer
from torchprobe.rf.probe import RFProbe
from torchprobe.stats import memory as memory_module
from torchprobe.stats.flops import FlopCounter
from torchprobe.stats.probe import SummaryProbe

MODELS = ["resnet50", "vgg16", "densenet121", "vit_b_16", "swin_t", "convnext_tiny", "mobilenet_v3_large", "net"]
DEPTHS = [10, 30, 100, 300, 1000]
SIZES = [28, 224, 1000, 5000, 20000]
METHODS = ["bare", "torchinfo", "receptive_field", "summary", "trace"]
PROFILED = ["receptive_field", "summary"]
# (label, file part, function): inclusive time of that function (function None: own time of
# every function whose file holds the part); they overlap, each is a share of the whole call.
HOT_SPOTS = [
    ("the tracer's function mode, op included", "engine/tracer.py", "__torch_function__"),
    ("Tracer.emit_op: the probes' per-op work", "engine/tracer.py", "emit_op"),
    ("module pre/post hooks", "engine/tracer.py", "_pre_hook|_post_hook"),
    ("hook registration and removal", "torch/utils/hooks.py|contextlib.py", None),
    ("stand-in parameters and buffers", "engine/tracer.py", "stand_in_state"),
    ("RFProbe.function (rules on every op)", "rf/probe.py", "function"),
    ("RFProbe._assign (fused supports)", "rf/probe.py", "_assign"),
    ("RFProbe.module_exit", "rf/probe.py", "module_exit"),
    ("RF rows to LayerRF (after the pass)", "rf/result.py", "from_record"),
    ("Fractions", "fractions.py", None),
    ("numpy (own time; ufunc reductions)", "numpy/|numpy.ufunc", None),
    ("FlopCounter.__torch_dispatch__, op included", "stats/flops.py", "__torch_dispatch__"),
    ("FlopCounter.count (FLOPs on shapes)", "stats/flops.py", "count"),
    ("rf.memo.call_key (keys of reusable rule calls)", "rf/memo.py", "call_key"),
    ("SummaryProbe.function", "stats/probe.py", "function"),
    ("SummaryProbe.module_enter/exit", "stats/probe.py", "module_enter|module_exit"),
    ("MemoryCounter.see (finalizers)", "stats/memory.py", "see"),
    ("tensors_in", "engine/torch_utils.py", "tensors_in"),
    ("describe", "shapes/tensors.py", "describe"),
    ("dataclasses.replace", "dataclasses.py", "replace"),
    ("torch's Python meta kernels and refs (own time)",
     "torch/_refs|torch/_prims|torch/_meta_registrations|symbolic_shapes|torch/_decomp", None),
]


@dataclass
class Case:
    """One model and its input, with a builder so that a meta copy can be made for the floor."""

    name: str
    build: Callable[[], nn.Module]
    size: tuple[int, ...]  # without the batch dim
    layout: str | None = None  # torchprobe's layout for inputs without a C,H,W shape


def conv_stack(n: int) -> nn.Module:
    return nn.Sequential(*[m for _ in range(n) for m in (nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())])


def linear_stack(n: int) -> nn.Module:
    return nn.Sequential(*[m for _ in range(n) for m in (nn.Linear(64, 64), nn.ReLU())])


def reference_net() -> nn.Module:
    from mnist_demo.model import Net

    return Net()


def model_case(name: str) -> Case:
    if name == "net":
        return Case("net (mnist_demo.model:Net)", reference_net, (1, 28, 28))
    if name.startswith("conv") and name[4:].isdigit():
        n = int(name[4:])
        return Case(f"conv+relu x {n}", lambda: conv_stack(n), (8, 16, 16))
    if name.startswith("linear") and name[6:].isdigit():
        n = int(name[6:])
        return Case(f"linear+relu x {n}", lambda: linear_stack(n), (16, 64), "LC")
    return Case(name, lambda: getattr(torchvision.models, name)(weights=None), (3, 224, 224))


def methods(case: Case) -> dict[str, Callable[[], object]]:
    """The five analyses of one case, ready to call; every model is built here, outside the timing."""
    torch.manual_seed(0)
    model = case.build().eval()
    theirs = copy.deepcopy(model)  # torchinfo moves the model it is given to meta
    with torch.device("meta"):
        floor = case.build().eval()
    x = torch.empty((1, *case.size), device="meta")
    size, layout = case.size, case.layout

    def bare() -> object:
        with torch.no_grad():
            return floor(x)

    return {
        "bare": bare,
        "torchinfo": lambda: torchinfo.summary(theirs, (1, *size), device="meta", verbose=0),
        "receptive_field": lambda: torchprobe.receptive_field(model, size, layout=layout),
        "summary": lambda: torchprobe.summary(model, size, layout=layout),
        "trace": lambda: torchprobe.trace(model, size, layout=layout),
    }


def medians(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median ms of each run after one warm-up; each repeat runs every method once, in turn."""
    for run in runs.values():
        run()  # warm-up: imports, caches, first-call costs
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        gc.collect()  # between rounds, never inside a timing
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def ops_of(case: Case) -> int:
    """Module calls plus functional ops the tracer reports (``trace(ops=True)`` rows)."""
    model = case.build().eval()
    return len(torchprobe.trace(model, case.size, layout=case.layout, ops=True).rows)


def models_part(names: list[str], repeat: int, out: list[dict[str, Any]]) -> None:
    print(f"\n### Models (ms, median of {repeat})\n")
    print("| model, input | bare | torchinfo | receptive_field | summary | trace | rf/bare | summary/bare | "
          "rf/torchinfo | summary/torchinfo |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        case = model_case(name)
        ms = medians(methods(case), repeat)
        out.append({"part": "models", "model": case.name, "input": case.size, "ms": ms})
        b, ti, rf, su = ms["bare"], ms["torchinfo"], ms["receptive_field"], ms["summary"]
        print(f"| {case.name}, {'x'.join(map(str, case.size))} | {b:.1f} | {ti:.1f} | {rf:.1f} | {su:.1f} | "
              f"{ms['trace']:.1f} | {rf / b:.1f}x | {su / b:.1f}x | {rf / ti:.2f}x | {su / ti:.2f}x |", flush=True)


def depth_part(depths: list[int], repeat: int, out: list[dict[str, Any]]) -> None:
    for kind in ("conv", "linear"):
        rows = []
        print(f"\n### Depth: {kind}+relu blocks (ms, median of {repeat})\n")
        print("| blocks | module calls + ops | " + " | ".join(METHODS) + " |")
        print("| ---: | ---: | " + " | ".join("---:" for _ in METHODS) + " |")
        for n in depths:
            case = model_case(f"{kind}{n}")
            ms = medians(methods(case), repeat)
            calls = ops_of(case)
            rows.append((n, ms))
            out.append({"part": "depth", "kind": kind, "blocks": n, "rows": calls, "ms": ms})
            print(f"| {n} | {calls} | " + " | ".join(f"{ms[m]:.1f}" for m in METHODS) + " |", flush=True)
        if len(rows) >= 2:
            slopes = {m: statistics.linear_regression([n for n, _ in rows], [ms[m] for _, ms in rows]) for m in METHODS}
            print("| slope, ms per block | | " + " | ".join(f"{slopes[m].slope:.3f}" for m in METHODS) + " |")
            print("| intercept, ms | | " + " | ".join(f"{slopes[m].intercept:.1f}" for m in METHODS) + " |")
            out.append({"part": "slope", "kind": kind, "ms_per_block": {m: slopes[m].slope for m in METHODS},
                        "intercept_ms": {m: slopes[m].intercept for m in METHODS}})


def sizes_part(sizes: list[int], repeat: int, out: list[dict[str, Any]]) -> None:
    print(f"\n### Input size: the reference network at 1xSxS (ms, median of {repeat})\n")
    print("| input | " + " | ".join(METHODS) + " |")
    print("| --- | " + " | ".join("---:" for _ in METHODS) + " |")
    for s in sizes:
        case = Case(f"net 1x{s}x{s}", reference_net, (1, s, s))
        ms = medians(methods(case), repeat)
        out.append({"part": "sizes", "input": case.size, "ms": ms})
        print(f"| 1x{s}x{s} | " + " | ".join(f"{ms[m]:.1f}" for m in METHODS) + " |", flush=True)


def profile_part(names: list[str], repeat: int, top: int = 25) -> None:
    """cProfile of ``receptive_field`` and ``summary``: ``repeat`` calls after a warm-up. The
    profiler's own cost per Python call inflates Python-heavy code; compare shares, not ms."""
    for name in names:
        case = model_case(name)
        runs = methods(case)
        for method in PROFILED:
            run = runs[method]
            run()
            profiler = cProfile.Profile()
            start = time.perf_counter()
            profiler.enable()
            for _ in range(repeat):
                run()
            profiler.disable()
            wall = (time.perf_counter() - start) * 1000 / repeat
            stream = io.StringIO()
            stats = pstats.Stats(profiler, stream=stream)
            total = stats.total_tt  # type: ignore[attr-defined]
            print(f"\n#### {method} on {case.name}: {wall:.1f} ms per call under cProfile, {repeat} calls\n")
            for key in ("cumulative", "tottime"):
                stream.seek(0)
                stream.truncate()
                stats.sort_stats(key).print_stats(top)
                print(f"top {top} by {key}:")
                print("\n".join(line for line in stream.getvalue().splitlines()[6:] if line.strip()))
            print("hot spots (inclusive share of the profiled time; they overlap):")
            for label, files, func in HOT_SPOTS:
                share = 0.0
                for (file, _, fname), (_, _, own, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
                    if any(f in file or f in fname for f in files.split("|")):
                        if func is None:
                            share += own
                        elif fname in func.split("|"):
                            share += cum
                print(f"  {100 * share / total:5.1f}%  {label}")
            per_file: dict[str, float] = {}
            for (file, _, _), (_, _, own, _, _) in stats.stats.items():  # type: ignore[attr-defined]
                short = file.split("site-packages/")[-1].split("/tmp/wt15/")[-1]
                per_file[short] = per_file.get(short, 0.0) + own
            print("own time per file (share of the profiled time):")
            for file, own in sorted(per_file.items(), key=lambda kv: -kv[1])[:20]:
                print(f"  {100 * own / total:5.1f}%  {file}")


@contextmanager
def patched(target: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, old)


@contextmanager
def gc_off() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _function_without_reads(self: SummaryProbe, op: Any) -> None:
    """``SummaryProbe.function`` without the per-op parameter lookup."""
    if not self._open:
        return
    self.memory.see(tensors_in(op.output))


def ablations(case: Case) -> dict[str, Callable[[], object]]:
    """What each part costs: the same pass with one piece switched off (monkeypatched; the
    results are then wrong, only the times matter)."""
    model = case.build().eval()
    size, layout = case.size, case.layout
    inputs, _ = model_inputs(size, None, None, None, model)
    no_finalize = SimpleNamespace(finalize=lambda *a, **k: None)

    def run(analysis: Callable[[], object], *contexts: Callable[[], Any]) -> Callable[[], object]:
        def go() -> object:
            with ExitStack() as stack:
                for c in contexts:
                    stack.enter_context(c())
                return analysis()
        return go

    rf = lambda: torchprobe.receptive_field(model, size, layout=layout)  # noqa: E731
    su = lambda: torchprobe.summary(model, size, layout=layout)  # noqa: E731
    return {
        "tracer, no probe": lambda: Tracer(model, []).run(inputs),
        "tracer + RFProbe (no result)": lambda: Tracer(model, [RFProbe(layout=layout)]).run(inputs),
        "receptive_field": rf,
        "receptive_field, gc off": run(rf, gc_off),
        "tracer + SummaryProbe (no RF, no result)": lambda: Tracer(model, [SummaryProbe()]).run(inputs),
        "summary": su,
        "summary, no FLOP counting": run(su, lambda: patched(FlopCounter, "count", lambda self, op: None),
                                         lambda: patched(SummaryProbe, "enters", lambda self, name: None)),
        "summary, no finalizers": run(su, lambda: patched(memory_module, "weakref", no_finalize)),
        "summary, no parameter lookup": run(su, lambda: patched(SummaryProbe, "function", _function_without_reads)),
        "summary, gc off": run(su, gc_off),
    }


def ablate_part(names: list[str], repeat: int) -> None:
    for name in names:
        case = model_case(name)
        ms = medians(ablations(case), repeat)
        print(f"\n### What the parts cost: {case.name} (ms, median of {repeat})\n")
        print("| variant | ms | against the full analysis |")
        print("| --- | ---: | ---: |")
        for variant, t in ms.items():
            full = ms["summary" if variant.startswith(("summary", "tracer + Summary")) else "receptive_field"]
            print(f"| {variant} | {t:.1f} | {t - full:+.1f} ms ({100 * (t - full) / full:+.0f}%) |", flush=True)


class _PassThrough(TorchFunctionMode):
    """A function mode that only calls the function: what seeing every op costs by itself."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        return func(*args, **(kwargs or {}))


def _ignore(*_: object) -> None:
    return None


def observed_floors(case: Case) -> dict[str, Callable[[], object]]:
    """The bare meta forward, and the same forward seen the way any hook-based tool must see it:
    an empty pre/post hook on every module, a pass-through function mode, both."""
    with torch.device("meta"):
        floor = case.build().eval()
    x = torch.empty((1, *case.size), device="meta")

    def run(hooks: bool, mode: bool) -> Callable[[], object]:
        def go() -> object:
            modules = list(floor.modules()) if hooks else []
            handles = [h for m in modules for h in (m.register_forward_pre_hook(_ignore, with_kwargs=True),
                                                    m.register_forward_hook(_ignore, with_kwargs=True))]
            try:
                with torch.no_grad(), _PassThrough() if mode else nullcontext():
                    return floor(x)
            finally:
                for handle in handles:
                    handle.remove()
        return go

    return {"bare": run(False, False), "function mode": run(False, True), "hooks": run(True, False),
            "hooks + function mode": run(True, True)}


def floor_part(names: list[str], repeat: int) -> None:
    print(f"\n### The cost of observing at all (ms, median of {repeat}; ratio to bare)\n")
    print("| model, input | bare | function mode | hooks | hooks + function mode |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in names:
        case = model_case(name)
        ms = medians(observed_floors(case), repeat)
        b = ms["bare"]
        seen = ("function mode", "hooks", "hooks + function mode")
        cells = " | ".join(f"{ms[k]:.1f} ({ms[k] / b:.2f}x)" for k in seen)
        print(f"| {case.name}, {'x'.join(map(str, case.size))} | {b:.1f} | {cells} |", flush=True)


def parse_list(text: str | None) -> list[str] | None:
    return None if text is None else [t for t in text.split(",") if t]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help=f"comma-separated torchvision models or net (default {','.join(MODELS)})")
    parser.add_argument("--depth", help=f"comma-separated block counts (default {','.join(map(str, DEPTHS))})")
    parser.add_argument("--sizes", help=f"comma-separated input sides S of 1xSxS (default {','.join(map(str, SIZES))})")
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds (median); with --profile, profiled calls")
    parser.add_argument("--profile", help="comma-separated models (or convN, linearN) to profile instead of timing")
    parser.add_argument("--ablate", help="comma-separated models to time with one part switched off at a time")
    parser.add_argument("--floor", help="comma-separated models: the bare forward with empty hooks and a "
                        "pass-through function mode (what observing costs by itself)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, torchinfo "
          f"{getattr(torchinfo, '__version__', '?')}, torchprobe {torchprobe.__version__}, "
          f"{torch.get_num_threads()} thread (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), "
          f"{platform.machine()}, load average {os.getloadavg()[0]:.2f}")
    if args.profile:
        profile_part(parse_list(args.profile) or [], args.repeat)
        return
    if args.ablate:
        ablate_part(parse_list(args.ablate) or [], args.repeat)
        return
    if args.floor:
        floor_part(parse_list(args.floor) or [], args.repeat)
        return
    chosen = {"models": parse_list(args.models), "depth": parse_list(args.depth), "sizes": parse_list(args.sizes)}
    everything = all(v is None for v in chosen.values())
    out: list[dict[str, Any]] = []
    if everything or chosen["models"]:
        models_part(chosen["models"] or MODELS, args.repeat, out)
    if everything or chosen["depth"]:
        depth_part([int(n) for n in chosen["depth"] or DEPTHS], args.repeat, out)
    if everything or chosen["sizes"]:
        sizes_part([int(s) for s in chosen["sizes"] or SIZES], args.repeat, out)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
