"""torch.distributed glue for `torchrun ... -m skdcache`: who am I, and wait for the others.

Ranks split precompute work by whole blocks (one writer per shard, never two); rank 0 alone creates the
group, holds the writer lock and publishes the manifest.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank_and_size() -> tuple[int, int]:
    """(rank, world size), initialising the process group from torchrun's environment on first use."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
