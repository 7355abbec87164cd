"""RGB image datasets: ImageSet and its pipelines (fit to a square, seeded augmentation, normalise).

Augmentation draws from a generator seeded per sample, so the seed the train loader hands a sample
fixes its crop and flip.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.transforms import functional as TF

from imloss_cli.data.bundle import DataBundle, SeededSet
from imloss_cli.recipe import DataConfig


class ImageSet(SeededSet):
    """PIL images from a torchvision dataset -> (normalised float tensor, label).

    ``ds[i]`` draws its augmentation from torch's global RNG, as torchvision transforms do;
    ``ds[(i, sample_seed)]`` (what the train loader asks for) is deterministic.
    """

    def __init__(self, base: Dataset, prepare: Callable[[Image.Image], Image.Image],
                 augment: _Augment | None, finish: Callable[[Image.Image], Tensor],
                 normalise: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        self.base, self.prepare, self.augment, self.finish = base, prepare, augment, finish
        self.normalise = normalise  # (mean, std) that ``finish`` applies after ToTensor

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        img, label = self.base[index]
        img = self.prepare(img)
        if self.augment is not None:
            if sample_seed is None:
                sample_seed = int(torch.randint(0, 2**62, ()).item())
            img = self.augment(img, torch.Generator().manual_seed(sample_seed))
        return self.finish(img), label


class _FitSquare:
    """Resize + centre-crop to side x side, skipped for images already that size (CIFAR at 32)."""

    def __init__(self, side: int) -> None:
        self.side = side

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.size == (self.side, self.side):
            return img
        return TF.center_crop(TF.resize(img, self.side, antialias=True), [self.side, self.side])


def _identity(img: Image.Image) -> Image.Image:
    return img


class _Augment:
    """torchvision's RandomCrop(pad 4)/RandomResizedCrop + RandomHorizontalFlip, drawn from an
    explicit generator so that no global RNG state is read or changed."""

    def __init__(self, kind: str, side: int) -> None:
        self.kind, self.side = kind, side

    def __call__(self, img: Image.Image, g: torch.Generator) -> Image.Image:
        u = torch.rand(23, generator=g).tolist()
        s = self.side
        if self.kind == "crop_flip":
            img = TF.pad(img, [4])
            w, h = img.size
            img = TF.crop(img, int(u[0] * (h - s + 1)), int(u[1] * (w - s + 1)), s, s)
        else:
            top, left, ch, cw = _resized_crop_box(img.size, u)
            img = TF.resized_crop(img, top, left, ch, cw, [s, s], antialias=True)
        return TF.hflip(img) if u[22] < 0.5 else img


def _resized_crop_box(size: tuple[int, int], u: list[float]) -> tuple[int, int, int, int]:
    # RandomResizedCrop.get_params (scale 0.08..1, ratio 3/4..4/3, 10 tries) on given uniforms.
    width, height = size
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    for t in range(10):
        area = width * height * (0.08 + 0.92 * u[2 * t])
        ratio = math.exp(lo + (hi - lo) * u[2 * t + 1])
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(u[20] * (height - h + 1)), int(u[21] * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < 3 / 4:
        w, h = width, round(width / (3 / 4))
    elif in_ratio > 4 / 3:
        w, h = round(height * (4 / 3)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def normalisation(cfg: DataConfig, stats: tuple[Sequence[float], Sequence[float]]
                  ) -> tuple[Sequence[float], Sequence[float]]:
    """(mean, std): the recipe's where it sets them, else the dataset's statistics."""
    return (cfg.mean if cfg.mean is not None else stats[0], cfg.std if cfg.std is not None else stats[1])


def _pipelines(cfg: DataConfig, stats: tuple[Sequence[float], Sequence[float]]
               ) -> tuple[Callable, _Augment | None, Callable, Callable]:
    """(train prepare, train augment, test prepare, finish) for an RGB image dataset."""
    side = cfg.image_size
    finish = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*normalisation(cfg, stats))])
    if cfg.augment == "resized_crop_flip":
        # The crop takes any input size; evaluation sees the usual 0.875 centre crop.
        test_prepare = transforms.Compose(
            [transforms.Resize(round(side / 0.875)), transforms.CenterCrop(side)])
        return _identity, _Augment(cfg.augment, side), test_prepare, finish
    fit = _FitSquare(side)
    return fit, (_Augment(cfg.augment, side) if cfg.augment == "crop_flip" else None), fit, finish


def _image_bundle(cfg: DataConfig, train: Dataset, test: Dataset, classes: Sequence[str],
                  stats: tuple[Sequence[float], Sequence[float]]) -> DataBundle:
    train_prepare, augment, test_prepare, finish = _pipelines(cfg, stats)
    norm = normalisation(cfg, stats)
    return DataBundle(
        train=ImageSet(train, train_prepare, augment, finish, norm),
        test=ImageSet(test, test_prepare, None, finish, norm),
        num_classes=len(classes), in_channels=3, image_size=cfg.image_size, classes=tuple(classes))
