"""Where the datasets come from: digits (bundled with scikit-learn), CIFAR-10/100, ImageFolder
trees and CIFAR10-DVS recordings, checked on load so that a problem fails early with a DataError
that says what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from imloss_cli.data.bundle import DataBundle, DataError, TensorPairs
from imloss_cli.data.cifar import _cifar
from imloss_cli.data.dvs import _cifar10dvs
from imloss_cli.data.images import _image_bundle
from imloss_cli.data.validation import split_validation
from imloss_cli.recipe import DataConfig

# Channel statistics of ImageNet's training set (dataset facts, used when data.mean/std are None).
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def build_datasets(cfg: DataConfig, *, timesteps: int | None = None) -> DataBundle:
    """Load the train and test sets that ``cfg`` describes.

    Args:
        cfg: the recipe's data section.
        timesteps: the model's T; event datasets (cifar10dvs) cut each recording into T frames and
            need it, image datasets ignore it.

    Returns:
        The two datasets (and, with ``data.val_fraction``, a validation set held out of the
        training set) with their class names, channel count and input side. Image samples are
        [C, H, W]; event samples are frame sequences [T, C, H, W].

    Raises:
        DataError: data missing or in the wrong format, a failed download, or settings that do not
            fit the dataset (e.g. augmentation on digits).
        ValueError: cifar10dvs without timesteps.
    """
    return split_validation(_load(cfg, timesteps), cfg)


def _load(cfg: DataConfig, timesteps: int | None) -> DataBundle:
    if cfg.dataset == "digits":
        return _digits(cfg)
    if cfg.dataset == "cifar10dvs":
        return _cifar10dvs(cfg, timesteps)
    if cfg.augment == "flip_roll":
        raise DataError(f"data.augment = 'flip_roll' is for event frames (cifar10dvs); {cfg.dataset} takes "
                        "'none', 'crop_flip' or 'resized_crop_flip'")  # fmt: skip
    if cfg.dataset in ("cifar10", "cifar100"):
        return _cifar(cfg)
    return _imagefolder(cfg)


def _digits(cfg: DataConfig) -> DataBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if cfg.augment != "none":
        raise DataError(f"data.augment = {cfg.augment!r} is for image datasets; digits takes 'none'")
    mean, std = _grey(cfg.mean, "mean", 0.0), _grey(cfg.std, "std", 1.0)
    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None] / 16.0  # [N,1,8,8], pixels 0..16 -> [0,1]
    y = digits.target.astype(np.int64)
    # The split's own seed, not the run's: every run of every seed is scored on the same test set.
    try:
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, y, test_size=cfg.test_fraction, stratify=y, random_state=cfg.split_seed)
    except ValueError as e:
        raise DataError(f"data.test_fraction = {cfg.test_fraction} cannot split digits "
                        f"stratified over its 10 classes ({e})") from None

    def pairs(xs: np.ndarray, ys: np.ndarray) -> TensorPairs:
        return TensorPairs((torch.from_numpy(xs) - mean) / std, torch.from_numpy(ys))

    return DataBundle(train=pairs(x_tr, y_tr), test=pairs(x_te, y_te), num_classes=10,
                      in_channels=1, image_size=8, classes=tuple(str(c) for c in range(10)))


def _grey(values: tuple[float, float, float] | None, name: str, identity: float) -> float:
    if values is None:
        return identity
    if len(set(values)) != 1:
        raise DataError(f"data.{name} = {list(values)}: digits has one (grey) channel; give the "
                        f"same value three times, e.g. [{values[0]}, {values[0]}, {values[0]}]")
    return values[0]


def _imagefolder(cfg: DataConfig) -> DataBundle:
    root = Path(cfg.root)
    layout = "it must hold train/<class>/<image> and test/<class>/<image> (or val/)"
    if not root.is_dir():
        raise DataError(f"imagefolder root {root} not found; {layout}, or set data.root")
    if not (root / "train").is_dir():
        raise DataError(f"{root / 'train'} not found; {layout}")
    split = "test" if (root / "test").is_dir() else "val"
    if not (root / split).is_dir():
        raise DataError(f"neither {root / 'test'} nor {root / 'val'} found; {layout}")
    sets: dict[str, ImageFolder] = {}
    for name in ("train", split):
        try:
            sets[name] = ImageFolder(str(root / name))
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"{root / name}: no images ({e}); {layout}") from None
    train, test = sets["train"], sets[split]
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_test = sorted(set(test.classes) - set(train.classes))
        raise DataError(f"{root}: train/ and {split}/ hold different classes (only in train: "
                        f"{only_train or '-'}; only in {split}: {only_test or '-'}); "
                        "both must have the same class folders")
    first = train.samples[0][0]
    try:
        Image.open(first).close()  # reads the header: catches a non-image early, not mid-epoch
    except OSError as e:
        raise DataError(f"{first}: not a readable image ({e})") from None
    return _image_bundle(cfg, train, test, train.classes, IMAGENET_STATS)
