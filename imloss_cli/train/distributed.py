"""torch.distributed plumbing: who am I, the process group, and the few collectives training needs.

Launched by torchrun (``imloss train --nproc N`` runs it for you), every process reads RANK,
WORLD_SIZE and LOCAL_RANK from its environment. NCCL on CUDA, gloo on CPU. ``data.batch_size`` is
the global batch: each process trains ``batch_size / world_size`` samples a step.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from imloss_cli.train.errors import TrainingError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environ(cls) -> DistEnv | None:
        """The torchrun environment, or None for a plain single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def process_group(env: DistEnv | None, device: torch.device) -> Iterator[None]:
    """Join the process group for the duration of a run (no-op without one)."""
    if env is None or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    # A peer that dies makes collectives fail instead of waiting forever.
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank_batch_size(batch_size: int, world_size: int) -> int:
    """Each process's share of the global batch ``data.batch_size``, so a recipe trains the same
    batches at any number of processes.

    Raises:
        TrainingError: the global batch does not divide among the processes.
    """
    if batch_size % world_size:
        raise TrainingError(
            f"data.batch_size = {batch_size} is the global batch and must divide among the {world_size} "
            f"processes; use a multiple of {world_size} (e.g. --set data.batch_size={batch_size - batch_size % world_size or world_size})"
        )
    return batch_size // world_size


def all_reduce_sum(tensors: list[Tensor]) -> None:
    """Sum tensors over all ranks, in place (one flat collective)."""
    if not dist.is_initialized() or not tensors:
        return
    flat = torch.cat([t.reshape(-1).double() for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t).to(t.dtype))
        offset += n


def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics (each rank updated its own on its own batches)."""
    if not dist.is_initialized():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
