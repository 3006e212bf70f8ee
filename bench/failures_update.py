"""Cost of ``FailureAnalyzer.update`` per batch, as a fraction of the seed Net's forward on that batch.

CPU, eval mode, no gradients, ``--threads`` threads (default 1). Times are the process's CPU time
(``time.process_time``), so other jobs on a shared machine do not count; forward and update run
alternately on the same batch, so cache effects weigh on both alike; each number is the mean of
``--repeat`` calls after a warm-up (a mean, since on the CPU the kept inputs are merged every few
batches). The last column is what one read costs after an epoch of
10,000 samples (filtering the records to failures: the only wait on the device).
Run: ``.venv/bin/python bench/failures_update.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from mnist_demo.model import Net
from torchprobe.failures import FailureAnalyzer

# name -> (keyword arguments of update() at step s for a batch x, whether the kept set is first
# filled with extreme failures). On the CPU only the rows of a batch that may enter the kept sets
# of worst failures are set aside, and merged once they are as many as the sets hold. After the fill
# no row can enter (the common case once a model's worst failures are kept); with decreasing
# indices every repeat of the batch ties with the kept rows and wins, so all its failures enter.
VARIANTS = {
    "update(outputs, targets)": (lambda x, s: {}, False),
    "+ inputs, kept set unchanged": (lambda x, s: {"inputs": x}, True),
    "+ inputs, every batch enters": (lambda x, s: {"inputs": x, "indices": torch.arange(len(x)) - s * len(x)}, False),
}
WARM_UP = 10
EPOCH = 10_000


def measure(
    model: torch.nn.Module, batch: int, repeat: int, keep: int, extra, fill: bool
) -> tuple[float, float, float]:
    """Mean forward and update CPU seconds; CPU seconds of the first read after 10,000 samples."""
    torch.manual_seed(batch)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    analyzer = FailureAnalyzer(10, keep=keep)
    if fill:  # confidently wrong by a margin of 100: loss ~100, confidence ~1
        extreme = 100 * torch.nn.functional.one_hot((y + 1) % 10, 10).float()
        analyzer.update(extreme, y, **extra(x, 0))
    forward, update = [], []
    with torch.no_grad():
        for step in range(WARM_UP + repeat):
            start = time.process_time()
            outputs = model(x)
            middle = time.process_time()
            analyzer.update(outputs, y, **extra(x, step))
            if step >= WARM_UP:
                update.append(time.process_time() - middle)
                forward.append(middle - start)
        analyzer.reset()
        for step in range(-(-EPOCH // batch)):
            analyzer.update(outputs, y, **extra(x, step))
    start = time.process_time()
    _ = analyzer.failures  # the read being timed: the property filters the records to failures
    return statistics.mean(forward), statistics.mean(update), time.process_time() - start


def measure_epoch(model: torch.nn.Module, batch: int, keep: int) -> tuple[float, float, float]:
    """An epoch of 10,000 new samples with inputs: the kept set changes often at first, then less.
    Mean forward and update CPU seconds per batch; CPU seconds of the read that follows."""
    torch.manual_seed(batch)
    x, y = torch.randn(EPOCH, 1, 28, 28), torch.randint(0, 10, (EPOCH,))
    analyzer = FailureAnalyzer(10, keep=keep)
    forward = update = 0.0
    with torch.no_grad():
        for xb, yb in zip(x.split(batch), y.split(batch)):
            start = time.process_time()
            outputs = model(xb)
            middle = time.process_time()
            analyzer.update(outputs, yb, inputs=xb)
            update += time.process_time() - middle
            forward += middle - start
    start = time.process_time()
    _ = analyzer.failures  # the read being timed: the property filters the records to failures
    batches = -(-EPOCH // batch)
    return forward / batches, update / batches, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 1000])
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", type=int, default=64, help="FailureAnalyzer(keep=): inputs kept per ranking")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = Net().eval()
    rows = []
    for batch in args.batch:
        results = {
            name: measure(model, batch, args.repeat, args.keep, extra, fill) for name, (extra, fill) in VARIANTS.items()
        }
        results["+ inputs, epoch of 10k (mean)"] = measure_epoch(model, batch, args.keep)
        for name, (forward, update, read) in results.items():
            rows.append({"batch": batch, "variant": name, "forward_ms": forward * 1e3, "update_us": update * 1e6,
                         "fraction": update / forward, "read_ms": read * 1e3})
    if args.json:
        print(json.dumps(rows))
        return
    print(f"mnist_demo.model.Net, CPU, {args.threads} thread(s), keep={args.keep}, mean of {args.repeat}, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"{'batch':>5}  {'variant':<28} {'forward':>10} {'update':>10} {'update/forward':>15} {'read after 10k':>15}")
    for r in rows:
        print(f"{r['batch']:>5}  {r['variant']:<28} {r['forward_ms']:>7.2f} ms {r['update_us']:>7.0f} us "
              f"{r['fraction']:>14.2%} {r['read_ms']:>12.1f} ms")


if __name__ == "__main__":
    main()
