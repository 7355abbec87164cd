"""CIFAR10-DVS from its original release: the class tree, a seeded per-class split, the frame dataset.

The release is one folder per class (airplane ... truck, as its per-class zips extract) of jAER
AEDAT 2.0 recordings, about 1,000 a class, and has no train/test split. Each recording becomes T
frames (T = model.timesteps) once, in the frame cache (``framecache``); samples are read from it
memory-mapped. The split is a function of the file names and ``data.split_seed`` alone (not of the
run's seed, the machine or the order a directory lists), so every run of a recipe is scored on the
same test set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from imloss_cli.data.bundle import DataBundle, DataError, SeededSet
from imloss_cli.data.framecache import Recording, cache_file, cached_frames
from imloss_cli.recipe import DataConfig

CIFAR10DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ROLL_PIXELS = 5  # flip_roll: the authors' shift range, -5..5 pixels on each axis
_LAYOUT = (
    "it must hold one folder per class (" + ", ".join(CIFAR10DVS_CLASSES) + ") of .aedat files, "
    "as the release's per-class zips extract"
)


class EventFrames(SeededSet):
    """Samples of the frame cache -> (frames float32 [T, 2, H, W], label).

    With ``augment``, a sample is flipped horizontally (probability 1/2) and rolled by up to
    ``ROLL_PIXELS`` pixels on each axis, the same for all T frames, drawn from its sample seed.
    The cache is opened lazily in each process, so loader workers never receive a copy of it.
    """

    def __init__(self, path: Path, rows: np.ndarray, labels: np.ndarray, augment: bool,
                 frames: np.ndarray | None = None) -> None:  # fmt: skip
        self.path, self.rows, self.labels, self.augment = path, rows, labels, augment
        self._frames = frames

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        if self._frames is None:
            self._frames = np.load(self.path, mmap_mode="r", allow_pickle=False)
        x = torch.from_numpy(np.array(self._frames[self.rows[index]]))  # [T, 2, H, W], a copy
        if self.augment:
            if sample_seed is None:
                sample_seed = int(torch.randint(0, 2**62, ()).item())
            g = torch.Generator().manual_seed(sample_seed)
            flip = bool(torch.rand((), generator=g) < 0.5)
            dy, dx = torch.randint(-ROLL_PIXELS, ROLL_PIXELS + 1, (2,), generator=g).tolist()
            x = torch.roll(x.flip(-1) if flip else x, shifts=(dy, dx), dims=(-2, -1))
        return x, int(self.labels[index])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_frames": None}


def _cifar10dvs(cfg: DataConfig, timesteps: int | None) -> DataBundle:
    if timesteps is None:
        raise ValueError("cifar10dvs needs timesteps (model.timesteps): the frames per sample")
    if cfg.augment not in ("none", "flip_roll"):
        raise DataError(f"data.augment = {cfg.augment!r} is for RGB images; cifar10dvs takes 'none' or 'flip_roll'")
    if cfg.mean is not None or cfg.std is not None:
        raise DataError("data.mean / data.std do not apply to cifar10dvs (its inputs are event counts); leave them unset")
    root = Path(cfg.root)
    recordings, labels = _recordings(root)
    train_rows, test_rows = split_per_class(recordings, labels, cfg.test_fraction, cfg.split_seed)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir is not None else root / "imloss-frames"
    path = cache_file(cache_dir, "cifar10dvs", recordings, timesteps, cfg.frames_split, cfg.image_size, cfg.resize)
    frames = cached_frames(path, recordings, timesteps, cfg.frames_split, cfg.image_size, cfg.resize)
    return DataBundle(
        train=EventFrames(path, train_rows, labels[train_rows], cfg.augment == "flip_roll", frames),
        test=EventFrames(path, test_rows, labels[test_rows], False, frames),
        num_classes=len(CIFAR10DVS_CLASSES), in_channels=2, image_size=cfg.image_size,
        classes=CIFAR10DVS_CLASSES,
    )  # fmt: skip


def _recordings(root: Path) -> tuple[list[Recording], np.ndarray]:
    """Every .aedat file under root/<class>/, in class order then name order, with its label."""
    if not root.is_dir():
        raise DataError(f"cifar10dvs root {root} not found; {_LAYOUT}; set data.root")
    missing = [c for c in CIFAR10DVS_CLASSES if not (root / c).is_dir()]
    if missing:
        raise DataError(f"{root}: class folder{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                        f"missing; {_LAYOUT}")  # fmt: skip
    recordings: list[Recording] = []
    labels: list[int] = []
    for label, name in enumerate(CIFAR10DVS_CLASSES):
        files = sorted(p for p in (root / name).iterdir() if p.suffix == ".aedat" and p.is_file())
        if len(files) < 2:
            raise DataError(f"{root / name}: {len(files)} .aedat file{'s' if len(files) != 1 else ''}; "
                            f"a train/test split needs at least 2 per class; {_LAYOUT}")  # fmt: skip
        recordings += [Recording(p, f"{name}/{p.name}", p.stat().st_size) for p in files]
        labels += [label] * len(files)
    return recordings, np.asarray(labels, dtype=np.int64)


def split_per_class(recordings: Sequence[Recording], labels: np.ndarray, test_fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Row indices (train, test): in each class, round(test_fraction * n) recordings (at least 1,
    at most n - 1) go to the test set, chosen by the order of sha256("<seed>/<class>/<file>").

    A function of the names and the seed only: the same on every machine and numpy version, and a
    recording keeps its side when others are added.
    """
    test: list[int] = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        ranked = sorted(rows, key=lambda r: hashlib.sha256(f"{seed}/{recordings[r].name}".encode()).digest())
        n_test = min(max(int(test_fraction * len(rows) + 0.5), 1), len(rows) - 1)
        test += ranked[:n_test]
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)
