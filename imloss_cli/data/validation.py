"""Honest model selection: a validation set held out of the training set (``data.val_fraction``).

The split is stratified (each class keeps its share) and seeded by ``data.split_seed``, never by
the run's seed, so every run of a recipe selects its epoch on the same held-out images. The held-out
samples are read as evaluation samples: without the training augmentation.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
from torch.utils.data import Dataset

from imloss_cli.data.bundle import DataBundle, DataError, SeededSet, TensorPairs
from imloss_cli.recipe import DataConfig


class IndexedSet(SeededSet):
    """The samples ``indices`` of ``base``, keeping ``(index, sample_seed)`` keys for seeded augmentation."""

    def __init__(self, base: Dataset, indices: np.ndarray) -> None:
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]):  # type: ignore[no-untyped-def]
        if isinstance(key, tuple):
            return self.base[(int(self.indices[key[0]]), key[1])]
        return self.base[int(self.indices[key])]


def labels_of(dataset: Dataset) -> np.ndarray:
    """Every sample's class, read from the dataset's label list (no image is decoded)."""
    if isinstance(dataset, TensorPairs):
        return dataset.y.numpy()
    for owner in (dataset, getattr(dataset, "base", None)):
        for name in ("labels", "targets"):
            if owner is not None and hasattr(owner, name):
                return np.asarray(getattr(owner, name))
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]


def split_validation(bundle: DataBundle, cfg: DataConfig) -> DataBundle:
    """``bundle`` with ``val_fraction`` of each class moved from ``train`` to ``val`` (0: unchanged).

    Raises:
        DataError: a class too small to give the validation set one sample and keep one to train.
    """
    if cfg.val_fraction == 0:
        return bundle
    from sklearn.model_selection import train_test_split

    labels = labels_of(bundle.train)
    try:
        train_idx, val_idx = train_test_split(
            np.arange(len(labels)), test_size=cfg.val_fraction, stratify=labels, random_state=cfg.split_seed
        )
    except ValueError as e:
        raise DataError(f"data.val_fraction = {cfg.val_fraction} cannot split the training set by class: {e}") from None
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    if isinstance(bundle.train, TensorPairs):
        t = bundle.train
        return dataclasses.replace(
            bundle, train=TensorPairs(t.x[train_idx], t.y[train_idx]), val=TensorPairs(t.x[val_idx], t.y[val_idx])
        )
    plain = copy.copy(bundle.train)
    if hasattr(plain, "augment"):
        plain.augment = None  # validation images are evaluation images
    return dataclasses.replace(bundle, train=IndexedSet(bundle.train, train_idx), val=IndexedSet(plain, val_idx))
