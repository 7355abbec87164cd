"""Seeded loaders: the train batches of one (seed, epoch) and the test batches.

Training batches of epoch E are a pure function of (seed, E, rank, world_size): the order comes
from a generator seeded with (seed, E), and each sample's augmentation draws from its own generator
seeded with (seed, E, index), so neither num_workers nor earlier RNG use changes a batch, and a run
resumed at epoch E sees exactly the batches it would have seen.
"""

from __future__ import annotations

import math
import os
import random
import signal
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from imloss_cli.data.bundle import DataBundle, SeededSet, TensorPairs
from imloss_cli.recipe import DataConfig

_MASK64 = (1 << 64) - 1


def _mix(*parts: int) -> int:
    """SplitMix64 over the parts: a well-spread non-negative 63-bit seed from small integers."""
    h = 0
    for part in parts:
        z = ((h ^ (part & _MASK64)) + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h >> 1


def _epoch_order(n: int, seed: int, epoch: int, rank: int, world_size: int) -> Tensor:
    """This rank's sample indices for the epoch; like DistributedSampler, ranks are padded (by
    repeating the start of the permutation) to equal length so that they step together."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, epoch)))
    if world_size == 1 or n == 0:
        return perm
    total = math.ceil(n / world_size) * world_size
    perm = torch.cat([perm] * math.ceil(total / n))[:total]
    return perm[rank::world_size]


class _TensorBatches:
    """Batches of a TensorPairs taken by index tensors: no per-sample collation."""

    def __init__(self, data: TensorPairs, order: Tensor, batch_size: int, pin_memory: bool) -> None:
        self.data, self.order, self.batch_size = data, order, batch_size
        self.pin = pin_memory and torch.cuda.is_available()  # as DataLoader: no-op without CUDA

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self.order), self.batch_size):
            idx = self.order[start:start + self.batch_size]
            x, y = self.data.x[idx], self.data.y[idx]
            yield (x.pin_memory(), y.pin_memory()) if self.pin else (x, y)


class _SeededSampler:
    """Yields (index, sample_seed) for a SeededSet, whose augmentation then draws from sample_seed."""

    def __init__(self, order: Tensor, key: int) -> None:
        self.order, self.key = order.tolist(), key

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((i, _mix(self.key, i)) for i in self.order)


def _init_worker(worker_id: int) -> None:
    # SIGTERM to the whole process group (timeout, scancel, a cluster's time limit) must not kill a
    # worker by signal: the loader would raise "worker killed" in the parent before its own SIGTERM
    # ends the run as KILLED. The parent decides; it shuts its workers down on the way out.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # torch seeds each worker from the loader's generator; extend that to python and numpy so
    # that any randomness in user transforms is reproducible too.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def loader_workers(asked: int) -> int:
    """``data.num_workers`` capped at the cores this process may use: more workers than cores only
    compete for them, and the number of workers changes no batch."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(asked, cores)


def _loader(dataset: Dataset, sampler: Iterable, batch_size: int, cfg: DataConfig, key: int,
            pin_memory: bool) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=(workers := loader_workers(cfg.num_workers)),
        pin_memory=pin_memory, drop_last=False, persistent_workers=workers > 0,
        worker_init_fn=_init_worker,
        # An explicit generator: worker seeds follow `key`, and the loader leaves the global RNG
        # untouched (without one it draws its base seed from it).
        generator=torch.Generator().manual_seed(key))


def train_loader(bundle: DataBundle, cfg: DataConfig, *, seed: int, epoch: int, rank: int = 0,
                 world_size: int = 1, pin_memory: bool = False) -> Iterable[tuple[Tensor, Tensor]]:
    """The training batches of one epoch; build a fresh one per epoch.

    Order and augmentation are a pure function of (seed, epoch, rank, world_size): independent of
    num_workers, of the global RNG and of what was iterated before, and the same on every pass.

    Args:
        bundle: from build_datasets.
        cfg: the recipe's data section (batch_size, num_workers).
        seed: the run's seed.
        epoch: the epoch these batches are for.
        rank: this process's rank among world_size; each rank gets its own share of the epoch,
            padded to equal length.
        world_size: number of data-parallel processes.
        pin_memory: pin batches for faster host-to-GPU copies.

    Returns:
        An iterable of (inputs, labels int64 [B]) with a len(); last batch may be short. Inputs
        are float32 images [B, C, H, W], or for event data frame sequences [B, T, C, H, W]
        (batch-first, as collated; the model turns them time-first).

    Raises:
        ValueError: rank outside 0..world_size-1.
    """
    order = _epoch_order(len(bundle.train), seed, epoch, rank, world_size)  # type: ignore[arg-type]
    if isinstance(bundle.train, TensorPairs):
        return _TensorBatches(bundle.train, order, cfg.batch_size, pin_memory)
    key = _mix(seed, epoch, rank)
    sampler: Iterable = (_SeededSampler(order, _mix(seed, epoch)) if isinstance(bundle.train, SeededSet)
                         else order.tolist())
    return _loader(bundle.train, sampler, cfg.batch_size, cfg, key, pin_memory)


def test_loader(bundle: DataBundle, cfg: DataConfig, *, rank: int = 0, world_size: int = 1,
                pin_memory: bool = False, indices: np.ndarray | None = None) -> Iterable[tuple[Tensor, Tensor]]:
    """The test batches in dataset order; reusable across epochs.

    Args:
        bundle: from build_datasets.
        cfg: the recipe's data section (eval_batch_size, num_workers).
        rank: this process's rank; each rank gets a disjoint shard (every rank-th sample) and the
            shards together cover the test set exactly once, so counts must be summed over ranks.
        world_size: number of data-parallel processes.
        pin_memory: pin batches for faster host-to-GPU copies.
        indices: score only these samples, in this order (a capped evaluation's subset,
            ``data.capped``); None: the whole set.

    Returns:
        An iterable of (inputs, labels) with a len(); no shuffling, last batch may be short.

    Raises:
        ValueError: rank outside 0..world_size-1.
    """
    return eval_loader(bundle.test, cfg, rank=rank, world_size=world_size, pin_memory=pin_memory, indices=indices)


def eval_loader(dataset: Dataset, cfg: DataConfig, *, rank: int = 0, world_size: int = 1,
                pin_memory: bool = False, indices: np.ndarray | None = None) -> Iterable[tuple[Tensor, Tensor]]:
    """Batches of any evaluation set (test or validation) in dataset order: see :func:`test_loader`."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    order = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices)  # type: ignore[arg-type]
    shard = order[rank::world_size]
    if isinstance(dataset, TensorPairs):
        return _TensorBatches(dataset, shard, cfg.eval_batch_size, pin_memory)
    return _loader(dataset, shard.tolist(), cfg.eval_batch_size, cfg, 0, pin_memory)


# Test modules import this function by name; without the flag pytest would collect it as a test.
test_loader.__test__ = False  # type: ignore[attr-defined]
