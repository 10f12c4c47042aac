"""torch.distributed glue for `torchrun ... -m skdcache`: who am I, and wait for the others.

Ranks split precompute work by whole blocks (one writer per shard, never two); rank 0 alone creates the
group, holds the writer lock and publishes the manifest.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def rank_and_size() -> tuple[int, int]:
    """(rank, world size), initialising the process group from torchrun's environment on first use."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # rank 0 alone evaluates, checkpoints, mirrors and publishes while the others wait: allow for it
        minutes = float(os.environ.get("SKDCACHE_DIST_TIMEOUT_MIN", "120"))
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=minutes))
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def from_rank0_object(obj):
    """Rank 0's picklable object on every rank (small control data only: chosen cache keys, decisions)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers everywhere, so every replica starts from the same weights."""
    if dist.is_initialized():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Mean of every rank's gradients, in one flat all-reduce per optimizer step (after accumulation).

    Used instead of the DDP wrapper because a per-teacher hidden-state projector only gets a gradient on
    the steps its teacher is drawn; every rank draws the same teacher, so the set of gradients that exist
    is the same on all ranks. The flat buffer costs one extra copy of the gradients.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Mean of small per-rank numbers (losses for the log); identity on one process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def from_rank0(value: float, device: torch.device) -> float:
    """Rank 0's value on every rank (e.g. the learned sampler's reward, so all ranks keep one distribution)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())
