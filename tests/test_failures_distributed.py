"""FailureAnalyzer.sync(): two gloo processes on 127.0.0.1 end with exactly the state one process
has after seeing every batch (counts, failure records, kept inputs, history)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers.processes import free_port
from torchprobe.failures import FailureAnalyzer

CLASSES, SAMPLES, KEEP = 6, 300, 5


def epoch_data(epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits on a quarter grid, so equal losses (ties in the kept ranking) are common."""
    g = torch.Generator().manual_seed(epoch)
    logits = torch.randint(-8, 9, (SAMPLES, CLASSES), generator=g).float() / 4
    return logits, torch.randint(0, CLASSES, (SAMPLES,), generator=g), torch.randn(SAMPLES, 1, 6, 6, generator=g)


def shard(epoch: int, rank: int, world: int) -> torch.Tensor:
    """Epoch 0: interleaved, as DistributedSampler deals; epoch 1: all on rank 0, none on the others."""
    everything = torch.arange(SAMPLES)
    if epoch == 0:
        return everything[rank::world]
    return everything if rank == 0 else everything[:0]


def same_state(merged: FailureAnalyzer, single: FailureAnalyzer) -> None:
    assert merged.to_dict() == single.to_dict()
    assert merged.failures == single.failures
    for by in ("loss", "confidence"):
        ours, theirs = merged.worst(by), single.worst(by)
        assert ours == theirs
        assert all(torch.equal(a.input, b.input) for a, b in zip(ours[:KEEP], theirs[:KEEP]))


def disagreements(rank: int, world: int) -> None:
    """Analyzers that cannot merge: every process raises the same ValueError from one small
    fixed-size all_gather, before any collective whose size depends on the state (gloo would abort
    on mismatched sizes), so the group stays usable (the merges that follow use it)."""
    logits, targets, inputs = epoch_data(0)
    cases = [
        (FailureAnalyzer(CLASSES + rank, keep=KEEP), r"num_classes \(rank 0: 6, rank 1: 7\)"),
        (FailureAnalyzer(CLASSES, keep=KEEP + 2 * rank), r"keep \(rank 0: 5, rank 1: 7\)"),
    ]
    shaped = FailureAnalyzer(CLASSES, keep=KEEP)
    shaped.update(logits[:4], targets[:4], inputs[:4, :, : 6 - rank], indices=torch.arange(4) + 4 * rank)
    cases.append((shaped, r"the inputs they were given \(rank 0: float32 rows of shape \(1, 6, 6\), "
                          r"rank 1: float32 rows of shape \(1, 5, 6\)\)"))
    bare = FailureAnalyzer(CLASSES, keep=KEEP)
    bare.update(logits[:4], targets[:4], inputs[:4] if rank == 0 else None, indices=torch.arange(4) + 4 * rank)
    cases.append((bare, r"the inputs they were given \(rank 0: float32 rows of shape \(1, 6, 6\), rank 1: none\)"))
    once = FailureAnalyzer(CLASSES, keep=KEEP).sync()  # synced on both ranks, then reset on rank 1 only
    if rank == 1:
        once.reset()
    cases.append((once, r"rank 0 holds the merged state from an earlier sync\(\), rank 1 does not"))
    for analyzer, message in cases:
        with pytest.raises(ValueError, match=r"^sync\(\): the processes' analyzers disagree|^sync\(\): ") as raised:
            analyzer.sync()
        assert raised.match(message)
        mine = [str(raised.value)]
        everyone: list = [None] * world
        dist.all_gather_object(everyone, mine)  # the same message on every process
        assert everyone == [mine] * world


def worker(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        disagreements(rank, world)
        merged, single = FailureAnalyzer(CLASSES, keep=KEEP), FailureAnalyzer(CLASSES, keep=KEEP)
        for epoch in range(2):
            logits, targets, inputs = epoch_data(epoch)
            for batch in shard(epoch, rank, world).split(16):
                merged.update(logits[batch], targets[batch], inputs[batch], indices=batch)
            for batch in torch.arange(SAMPLES).split(40):
                single.update(logits[batch], targets[batch], inputs[batch], indices=batch)
            assert merged.sync() is merged.sync()  # a second call is a no-op
            same_state(merged, single)
            with pytest.raises(ValueError, match="merged state of all processes"):
                merged.update(logits[:1], targets[:1])
            merged.end_epoch()
            single.end_epoch()
        assert [r.to_dict() for r in merged.history] == [r.to_dict() for r in single.history]
        for to in ("wrong", "right"):
            assert merged.flips(to=to).tolist() == single.flips(to=to).tolist()
        merged.update(logits[:4], targets[:4])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            merged.sync()
        assert any("pass indices=" in str(w.message) for w in caught)
        assert merged.samples == 4 * world
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_gloo_processes_merge_into_the_single_process_state() -> None:
    mp.spawn(worker, args=(2, free_port()), nprocs=2, join=True)
