"""Memory and time of ``FailureAnalyzer``'s reads at scale: 10,000 classes, and 5 M samples with
4.5 M failures (an untrained 10-class model: 90% wrong).

Each read runs after the state is built and collected, so only the read itself is measured:
``time``: process CPU seconds of the read; ``peak``: the most the process's resident memory rose
above what it held before the read (freed heap given back with ``malloc_trim``, ``VmHWM`` reset
through ``/proc/self/clear_refs``; Linux, glibc); then, in a second call, ``traced``: the peak of
Python and numpy allocations during the read (``tracemalloc``); both in MB and both including
the read's result (a JSON report is its result).
``state``: what docs/failures.md says the state takes (``8*C^2`` bytes of counts; 32 bytes per
failure record). Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/failures_reads.py``
(``--classes`` / ``--samples`` to change the two scales, ``--only classes|samples``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import platform
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from torchprobe.failures import FailureAnalyzer

MB = 1 << 20
LIBC = ctypes.CDLL("libc.so.6")


def rss() -> tuple[int, int]:
    """(current, peak) resident bytes of this process."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def settle() -> int:
    """Free what earlier reads left, give the freed heap back to the system, restart the peak."""
    gc.collect()
    LIBC.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from the current size
    return rss()[0]


def measure(read: Callable[[], Any], trace: bool = True) -> dict[str, float]:
    """Twice: timed, with the resident peak; then under tracemalloc (which slows allocations and
    takes memory of its own for every live allocation)."""
    before = settle()
    start = time.process_time()
    result = read()
    seconds = time.process_time() - start
    _, peak = rss()
    del result
    if not trace:
        return {"time_s": seconds, "peak_mb": (peak - before) / MB, "traced_mb": math.nan}
    settle()
    tracemalloc.start()
    result = read()
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del result
    return {"time_s": seconds, "peak_mb": (peak - before) / MB, "traced_mb": traced / MB}


def many_classes(classes: int) -> tuple[FailureAnalyzer, float]:
    analyzer = FailureAnalyzer(classes)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        analyzer.update(torch.randn(1000, classes, generator=g), torch.randint(0, classes, (1000,), generator=g))
    _ = analyzer.samples, analyzer.calibration_error()  # collect the records before measuring
    return analyzer, 8 * classes**2 / MB


def many_failures(samples: int) -> tuple[FailureAnalyzer, float]:
    analyzer = FailureAnalyzer(10)
    g = torch.Generator().manual_seed(0)
    for start in range(0, samples, 100_000):
        n = min(100_000, samples - start)
        analyzer.update(torch.randn(n, 10, generator=g), torch.randint(0, 10, (n,), generator=g))
    _ = analyzer.calibration_error()  # collect the records before measuring
    return analyzer, 32 * analyzer.errors / MB


READS: dict[str, Callable[[FailureAnalyzer], Any]] = {
    "errors": lambda a: a.errors,
    "error_rate": lambda a: a.error_rate,
    "confusion_matrix()": lambda a: a.confusion_matrix(),
    "per_class()": lambda a: a.per_class(),
    "most_confused(10)": lambda a: a.most_confused(10),
    "worst('loss', 10)": lambda a: a.worst("loss", 10),
    "label_issues(10)": lambda a: a.label_issues(10),
    "len(label_issues())": lambda a: len(a.label_issues()),
    "to_dict(failures=False)": lambda a: a.to_dict(failures=False),
    "to_dict()": lambda a: a.to_dict(),
    "str()": lambda a: str(a),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=5_000_000)
    parser.add_argument("--only", choices=["classes", "samples"])
    parser.add_argument("--reads", nargs="+", choices=list(READS), default=list(READS))
    parser.add_argument("--no-trace", action="store_true", help="skip the tracemalloc call (half the time)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    scales = {"classes": lambda: many_classes(args.classes), "samples": lambda: many_failures(args.samples)}
    for scale, build in scales.items():
        if args.only and args.only != scale:
            continue
        analyzer, state = build()
        label = f"{analyzer.num_classes:,} classes, {analyzer.samples:,} samples, {analyzer.errors:,} failures"
        for name in args.reads:
            figures = measure(partial(READS[name], analyzer), not args.no_trace)
            rows.append({"scale": label, "read": name, "state_mb": state, **figures})
        del analyzer
    if args.json:
        print(json.dumps(rows))
        return
    print(f"torch {torch.__version__}, {platform.machine()}, 1 thread; peak/traced: MB above the state; "
          "state: the documented size")
    for scale in dict.fromkeys(r["scale"] for r in rows):
        print(f"\n{scale} (documented state {next(r['state_mb'] for r in rows if r['scale'] == scale):,.0f} MB)")
        print(f"  {'read':<24} {'time':>9} {'peak':>10} {'traced':>10} {'peak/state':>11}")
        for r in (r for r in rows if r["scale"] == scale):
            print(f"  {r['read']:<24} {r['time_s']:>7.3f} s {r['peak_mb']:>7.0f} MB {r['traced_mb']:>7.0f} MB "
                  f"{r['peak_mb'] / r['state_mb']:>10.2f}x")


if __name__ == "__main__":
    main()
