"""``torchrun --nproc_per_node=2`` (gloo, this machine) against one process, and failing ranks.

In float64 and without dropout (the one source of randomness that differs per rank) a
two-process run computes what one process computes up to the order of floating-point additions:
the same batches, augmentations, global-batch BatchNorm statistics, gradients and schedule. So
the test demands the same steps and the same validation confusion matrix, and losses equal to
1e-9. The two-process run is also interrupted after its first checkpoint and resumed.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from mnist_demo.distributed import with_global_batchnorm
from mnist_demo.files import CHECKPOINT, FAILURES, METRICS, MODEL, REPORT, VAL_FAILURES
from mnist_demo.model import Net
from tests.helpers.processes import free_port, wait_for

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

ARGS = ["--epochs", "3", "--batch-size", "64", "--limit", "1024", "--eval-limit", "1000", "--device", "cpu",
        "--seed", "5", "--dtype", "float64", "--dropout-scale", "0"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def metrics(folder: Path) -> dict[str, Any]:
    return json.loads((folder / METRICS).read_text())


@pytest.mark.slow
def test_two_processes_compute_what_one_does_and_resume(tmp_path: Path) -> None:
    single = tmp_path / "single"
    done = subprocess.run([sys.executable, "-m", "mnist_demo", "train", *ARGS, "--out", str(single)],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr

    # two processes, no --out: rank 0 names the one run folder; interrupted once it has a checkpoint
    job = tmp_path / "job"
    job.mkdir()
    process = subprocess.Popen([*TORCHRUN, "-m", "mnist_demo", "train", *ARGS], cwd=job, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(job / "runs", process)
    folders = list((job / "runs").iterdir())
    assert len(folders) == 1, folders  # one run folder, not one per rank
    folder = folders[0]
    wait_for(folder / CHECKPOINT, process)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.fail(f"the job finished before it could be interrupted:\n{output}")
    resumed = subprocess.run([*TORCHRUN, "-m", "mnist_demo", "train", *ARGS, "--out", str(folder), "--resume"],
                             cwd=job, capture_output=True, text=True, env=ENV, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert list((job / "runs").iterdir()) == [folder]

    one, two = metrics(single), metrics(folder)
    assert (one["processes"], two["processes"]) == (1, 2)
    assert ([h["optimizer_steps"] for h in one["history"]] == [h["optimizer_steps"] for h in two["history"]]
            == [16, 32, 48])
    for a, b in zip(one["history"], two["history"]):
        for key in ("train_loss", "val_loss", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-9), key
        assert a["val_errors"] == b["val_errors"] and a["flipped_to_wrong"] == b["flipped_to_wrong"]
    confusion = [np.array(m["val_failures"]["confusion_matrix"]) for m in (one, two)]
    assert np.array_equal(*confusion)
    assert two["test"]["loss"] == pytest.approx(one["test"]["loss"], rel=1e-9)
    assert {p.name for p in folder.iterdir()} >= {MODEL, REPORT, FAILURES, VAL_FAILURES}


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["data", "raise"])
def test_a_failing_rank_ends_the_job(fault: str, tmp_path: Path) -> None:
    """A bad data file on one rank, or an exception on one rank mid-training: the whole job exits
    non-zero with the error on stderr, well before the collectives' timeout."""
    bad = tmp_path / "mnist.pkl.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x80\x04 truncated")
    started = time.monotonic()
    done = subprocess.run([*TORCHRUN, str(Path(__file__).parent / "helpers" / "ddp_faulty.py"), fault, *ARGS,
                           "--out", str(tmp_path / "run"), "--dist-timeout", "120"],
                          capture_output=True, text=True, env={**ENV, "BAD_DATA_FILE": str(bad)}, timeout=300)
    assert done.returncode != 0
    assert time.monotonic() - started < 120
    expected = "error: rank 1:" if fault == "data" else "injected failure on rank 1"
    assert expected in done.stderr, done.stderr[-3000:]


def global_batchnorm_worker(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        reference = Net(dropout_scale=0.0).double()
        model = with_global_batchnorm(Net(dropout_scale=0.0).double())
        model.load_state_dict(reference.state_dict())  # the same keys: only the class changed
        assert all(type(m) is not nn.BatchNorm2d for m in model.modules())
        for bn in (m for m in [*model.modules(), *reference.modules()] if isinstance(m, nn.BatchNorm2d)):
            bn.momentum = None if bn.num_features % 2 else 0.3  # cumulative and exponential averages
        g = torch.Generator().manual_seed(1)
        for _ in range(2):
            x = torch.randn(40, 1, 28, 28, generator=g, dtype=torch.float64)
            y = torch.randint(0, 10, (40,), generator=g)
            share = slice(40 * rank // world, 40 * (rank + 1) // world)  # 13 and 27 images: unequal shares
            out_ref = reference(x)
            F.nll_loss(out_ref, y, reduction="sum").backward()
            out = model(x[share])
            F.nll_loss(out, y[share], reduction="sum").backward()
            assert torch.allclose(out, out_ref[share], atol=1e-12)
        for p, q in zip(model.parameters(), reference.parameters()):
            dist.all_reduce(p.grad)  # the ranks' gradients add up to the whole batch's
            assert torch.allclose(p.grad, q.grad, atol=1e-10)
        for a, b in zip(model.buffers(), reference.buffers()):
            assert torch.allclose(a.double(), b.double(), atol=1e-12)
        model.eval()
        x = torch.randn(3, 1, 28, 28, generator=g, dtype=torch.float64)
        assert torch.allclose(model(x), reference.eval()(x), atol=1e-10)  # evaluation: plain BatchNorm, no collective
    finally:
        dist.destroy_process_group()


def test_global_batchnorm_is_batchnorm_of_the_whole_batch() -> None:
    """Two gloo processes with unequal shares of each batch: outputs, summed gradients and running
    statistics (exponential and cumulative) are those of one BatchNorm over the whole batch."""
    mp.spawn(global_batchnorm_worker, args=(2, free_port()), nprocs=2)  # a failed assertion fails the spawn
