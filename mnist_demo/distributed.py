"""Data parallelism under ``torchrun``: one process per rank, gloo on the CPU, nccl on CUDA.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them everything here is a
no-op and training runs in one process. What is synchronised and why: docs/distributed.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as collectives
from torch import nn


@dataclass(frozen=True)
class Ranks:
    """Where this process sits in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Ranks:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0 prints, and writes the run folder and checkpoints."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (shares differ in size by at most one)."""
        return slice(n * self.rank // self.world, n * (self.rank + 1) // self.world)


ONE_PROCESS = Ranks()  # no torchrun: the default of every function that takes a place in the job


@contextmanager
def process_group(ranks: Ranks, device: torch.device, timeout: timedelta) -> Iterator[None]:
    """The default process group for the job, destroyed in ``finally`` (also when a rank fails).

    ``timeout`` bounds every collective: a rank that died makes the others fail, not hang."""
    if not ranks.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextmanager
def local_rank_zero_first(ranks: Ranks) -> Iterator[None]:
    """Local rank 0 of each machine runs the block first (a download), the others after it."""
    if ranks.distributed and ranks.local_rank != 0:
        dist.barrier()
    yield
    if ranks.distributed and ranks.local_rank == 0:
        dist.barrier()


def all_sum(values: list[float] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Element-wise sum over the ranks (the values themselves in one process)."""
    tensor = torch.as_tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (any picklable object)."""
    if not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch (every rank's samples).

    What ``nn.SyncBatchNorm`` does, which PyTorch supports on GPUs only: here the sums go through
    the differentiable functional ``all_reduce`` (what PyTorch's deprecation of
    ``torch.distributed.nn.functional`` points to), so it works on gloo too. Two
    passes (mean, then squared deviations) keep the numbers those of ``F.batch_norm`` on the whole
    batch up to the order of additions. Evaluation, and any use without a process group of two
    or more, is plain BatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, 2, 3]
        count = _summed(x.new_tensor([x.numel() / x.shape[1]]))
        mean = _summed(x.sum(dims)) / count
        centred = x - mean[None, :, None, None]
        var = _summed(centred.pow(2).sum(dims)) / count
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * count / (count - 1).clamp(min=1))
        scale = torch.rsqrt(var + self.eps)
        y = centred * scale[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """As ``nn.BatchNorm2d``: exponential average, or cumulative when ``momentum`` is None."""
        tracked, running_mean, running_var = self.num_batches_tracked, self.running_mean, self.running_var
        assert tracked is not None and running_mean is not None and running_var is not None  # track_running_stats
        tracked.add_(1)
        factor = 1.0 / float(tracked) if self.momentum is None else self.momentum
        running_mean.lerp_(mean, factor)
        running_var.lerp_(unbiased_var, factor)


def _summed(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks, differentiable (its gradient is the sum of the ranks' gradients)."""
    world = dist.group.WORLD
    assert world is not None  # only called while a process group is initialised
    return collectives.all_reduce(tensor, "sum", world)


def with_global_batchnorm(model: nn.Module) -> nn.Module:
    """Turn every ``nn.BatchNorm2d`` of ``model`` into a :class:`GlobalBatchNorm2d`, in place;
    parameters, buffers and state-dict keys stay the same."""
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d
    return model
