"""A capped evaluation's images: a fixed, class-balanced subset chosen once from the run's seed.

``train.max_eval_batches`` scores only part of the test (and validation) set. The first batches in
stored order would be a poor part: an ImageFolder test set is stored class by class, so two batches
are all airplanes and the accuracy measures nothing about the network. The subset is instead as even
a share of every class as the cap allows (the labels are read from the dataset's label list, no
image is decoded), drawn from the run's seed, so it is the same images in every epoch (epochs
compare) and in every run of that seed.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from imloss_cli.data.bundle import TensorPairs
from imloss_cli.data.validation import IndexedSet


def labels_of(dataset: Dataset) -> np.ndarray:
    """Every sample's class, read from the dataset's (or its base's) label list; decoded only as a last resort."""
    if isinstance(dataset, TensorPairs):
        return dataset.y.numpy()
    for name in ("labels", "targets"):
        if hasattr(dataset, name):
            return np.asarray(getattr(dataset, name))
    if isinstance(dataset, IndexedSet):
        return labels_of(dataset.base)[dataset.indices]
    base = getattr(dataset, "base", None)
    if base is not None and len(base) == len(dataset):  # type: ignore[arg-type]
        return labels_of(base)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]


def balanced_shares(counts: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """How many images of each class a subset of ``cap`` takes: as even as the classes' sizes allow.

    Every class gets floor(cap / C) (or all it has, the rest going to the others); the images left
    over after equal shares go one each to classes in a seeded order, so no class is favoured.
    """
    shares = np.zeros_like(counts)
    left = min(cap, int(counts.sum()))
    while left > 0:
        open_ = np.flatnonzero(shares < counts)
        each = left // len(open_)
        if each == 0:  # fewer images left than classes that can take one: one each, in a seeded order
            shares[rng.permutation(open_)[:left]] += 1
            break
        take = np.minimum(counts[open_] - shares[open_], each)
        shares[open_] += take
        left -= int(take.sum())
    return shares


def capped_subset(dataset: Dataset, cap: int | None, seed: int) -> np.ndarray | None:
    """The sample indices a capped evaluation scores (sorted), or None to score the whole set.

    Args:
        cap: at most this many images (``max_eval_batches`` x ``eval_batch_size``); None: no cap.
        seed: the run's seed; the subset is a function of it and of the dataset alone.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if cap is None or cap >= n:
        return None
    rng = np.random.default_rng([seed, 0x5E7])  # its own stream: no other draw of the run moves it
    labels = labels_of(dataset)
    classes, inverse = np.unique(labels, return_inverse=True)
    shares = balanced_shares(np.bincount(inverse, minlength=len(classes)), cap, rng)
    chosen = [rng.permutation(np.flatnonzero(inverse == c))[: shares[c]] for c in range(len(classes))]
    return np.sort(np.concatenate(chosen))
