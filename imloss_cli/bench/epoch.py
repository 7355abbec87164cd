"""A whole epoch end to end: generated CIFAR-sized images through the real loader and training step.

``time_epochs`` writes N random 32x32 images (and N/5 test images, CIFAR-10's ratio) as CIFAR-10's
python pickles into a temporary folder and trains the benchmark's network on them with the
``Trainer`` itself: the recipe's defaults for the data set (crop + flip, the device-resident
pipeline where it applies), evaluation and its layer statistics included, checkpoints off. Two
epochs: the first pays the warm-up (compilation, autotuning, graph capture), the second is the
steady state. Wall time of an epoch is the trainer's ``epoch_seconds`` (train + evaluation).
"""

from __future__ import annotations

import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imloss_cli.recipe import Recipe, validate_recipe

EPOCHS = 2  # the first warms up, the second is the steady state
TEST_SHARE = 5  # CIFAR-10: 50,000 training and 10,000 test images


@dataclass(frozen=True)
class EpochTiming:
    epoch: int
    train_images: int
    test_images: int
    epoch_s: float  # training and evaluation, wall time
    train_s: float
    images_per_s: float  # training images / epoch_s: end to end, evaluation included
    lif_kernels: str
    device_resident: bool
    cuda_graphs: bool


def write_cifar(root: Path, train_images: int, seed: int = 0) -> int:
    """CIFAR-10's python layout under ``root`` with random pixels and labels. Returns the test size."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    test_images = max(train_images // TEST_SHARE, 1)
    for i, part in enumerate(np.array_split(np.arange(train_images), 5), start=1):
        batch = {
            b"data": rng.integers(0, 256, (len(part), 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, len(part)).tolist(),
        }
        (base / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {
        b"data": rng.integers(0, 256, (test_images, 3072), dtype=np.uint8),
        b"labels": rng.integers(0, 10, test_images).tolist(),
    }
    (base / "test_batch").write_bytes(pickle.dumps(test))
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return test_images


def epoch_recipe(arch: str, timesteps: int, batch: int, device: str, dtype: str, root: Path, *,
                 lif_kernels: str, cuda_graphs: bool) -> Recipe:  # fmt: skip
    """The recipe an epoch is timed with: CIFAR-10 with crop + flip, everything else the defaults."""
    return validate_recipe({
        "name": "bench-epoch",
        "model": {"arch": arch, "timesteps": timesteps},
        "data": {"dataset": "cifar10", "root": str(root), "augment": "crop_flip", "batch_size": batch},
        "train": {"epochs": EPOCHS, "device": device, "precision": dtype, "checkpoint": False, "seed": 0,
                  "lif_kernels": lif_kernels, "cuda_graphs": cuda_graphs},
    })  # fmt: skip


def time_epochs(arch: str, timesteps: int, batch: int, device: str, dtype: str, images: int, *,
                lif_kernels: str = "auto", cuda_graphs: bool = False) -> list[EpochTiming]:  # fmt: skip
    """Train ``EPOCHS`` epochs of ``images`` generated images; one timing per epoch.

    Raises:
        TrainingError: the trainer's (e.g. CUDA graphs without CUDA).
    """
    from imloss_cli.train.loop import Trainer  # the trainer's whole stack, only when an epoch is timed

    with tempfile.TemporaryDirectory(prefix="imloss-bench-epoch-") as tmp:
        test_images = write_cifar(Path(tmp), images)
        recipe = epoch_recipe(arch, timesteps, batch, device, dtype, Path(tmp), lif_kernels=lif_kernels,
                              cuda_graphs=cuda_graphs)  # fmt: skip
        trainer = Trainer(recipe, seed=0)
        out = []
        for record in trainer.fit():
            m = record.metrics
            out.append(EpochTiming(
                epoch=record.epoch, train_images=images, test_images=test_images, epoch_s=m["epoch_seconds"],
                train_s=m["train_seconds"], images_per_s=images / m["epoch_seconds"],
                lif_kernels=trainer.lif_kernels, device_resident=trainer.resident is not None,
                cuda_graphs=recipe.train.cuda_graphs,
            ))  # fmt: skip
        return out
