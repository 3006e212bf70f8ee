"""Merging a piece of analyzer state across the processes of the default ``torch.distributed`` group."""

from __future__ import annotations

import torch
import torch.distributed as dist

from torchprobe.failures.state import S


def synced(state: S, comm: torch.device, home: torch.device) -> S:
    """``state`` merged over all processes as it declares: summed, or gathered and combined.
    ``comm`` is where collectives run (CPU for gloo, the GPU for nccl), ``home`` where the result goes."""
    parts = state.parts()
    if state.reduce == "sum":
        return state.from_parts([p.to(home) for p in all_reduce(parts, comm)])
    gathered = [[p.to(home) for p in gather_rows(part, comm)] for part in parts]
    pieces = [state.from_parts(list(rank)) for rank in zip(*gathered)]
    return type(state).combine(pieces)  # type: ignore[attr-defined]


def all_reduce(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Sum tensors across processes, one collective per dtype; the parts, split back."""
    out: list[torch.Tensor | None] = [None] * len(tensors)
    for dtype in dict.fromkeys(t.dtype for t in tensors):
        group = [i for i, t in enumerate(tensors) if t.dtype == dtype]
        flat = torch.cat([tensors[i].reshape(-1) for i in group]).to(device)
        dist.all_reduce(flat)
        for i, piece in zip(group, flat.split([tensors[i].numel() for i in group])):
            out[i] = piece.view(tensors[i].shape)
    return [t for t in out if t is not None]


def gather_rows(rows: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Every process's ``rows`` (their first dimensions may differ), in rank order."""
    world = dist.get_world_size()
    rows = rows.to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(rows)], device=device))
    counts = [int(s) for s in sizes]
    padded = torch.cat([rows, rows.new_zeros((max(counts) - len(rows), *rows.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return [part[:size] for part, size in zip(parts, counts)]


def gather_fixed(row: list[int], device: torch.device) -> list[list[int]]:
    """Every process's ``row`` of integers, all of one length (one small all_gather: safe to run
    before anything whose size may differ between processes)."""
    mine = torch.tensor(row, dtype=torch.int64, device=device)
    rows = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, mine)
    return [r.tolist() for r in rows]
