"""Device-resident data: an in-memory data set held on the training device as stored, batched there.

For data sets that fit on the device (digits; CIFAR-10/100 at 32 px, no augmentation or
``crop_flip``): the samples go to the device once, CIFAR as its uint8 HWC pixels (150 MB for the
50,000 training images, zero-padded by 4 when cropping), and every batch is gathered, cropped,
flipped and normalised there, one indexing kernel and a few pointwise ones per batch, no worker,
no host-to-device copy per step and no host sync.

Batch order is the host loaders' (``loaders._epoch_order``): the same indices in the same batches.
Augmentation is a pure function of (seed, epoch) too, drawn once per epoch for every sample of the
data set from one generator seeded with (seed, epoch, ``AUGMENT_STREAM``) and keyed by the sample's
index, so neither rank, world size nor batch size changes it. It is the host pipeline's crop and flip
(top and left offsets ``int(u * 9)``, a flip when ``u < 0.5``, zero padding, ``ToTensor`` then
``Normalize``), from other random numbers: the host draws each sample's from its own generator,
which would cost a generator per sample per epoch here.

Inputs come out as float32 [B, C, H, W] in channels_last (the trainer's layout), labels int64 [B].
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from imloss_cli.data.bundle import DataBundle, DataError, TensorPairs
from imloss_cli.data.images import ImageSet, _FitSquare
from imloss_cli.data.loaders import _epoch_order, _mix
from imloss_cli.data.validation import IndexedSet
from imloss_cli.recipe import DataConfig

PAD = 4  # crop_flip's zero padding on every side
AUGMENT_STREAM = 0xA0C  # the third part of the augmentation seed: apart from the order's (seed, epoch)


@dataclass(frozen=True)
class ResidentSet:
    """One split on the device: ``x`` as stored, ``y`` int64 [N].

    ``x`` is uint8 pixels [N, H(+2 PAD), W(+2 PAD), C] with their ``mean``/``std`` (normalised as
    ``(x / 255 - mean) / std``), or for digits the float samples [N, C, H, W] already normalised
    (``mean`` None).
    """

    x: Tensor
    y: Tensor
    mean: Tensor | None
    std: Tensor | None
    augment: bool  # random crop (x is padded by PAD) + horizontal flip

    def __len__(self) -> int:
        return len(self.y)


def resident_sets(bundle: DataBundle, cfg: DataConfig, device: torch.device) -> tuple[ResidentSet, ResidentSet] | None:
    """(train, test) on ``device``, or None where the bundle cannot be held there (ImageFolder and
    event data, CIFAR resized or with another augmentation)."""
    train = _resident(bundle.train, cfg, device, train=True)
    test = _resident(bundle.test, cfg, device, train=False)
    return None if train is None or test is None else (train, test)


def _pixels(dataset: object) -> tuple[np.ndarray, np.ndarray, ImageSet] | None:
    """(uint8 HWC pixels, labels, the ImageSet) of an in-memory image set (CIFAR's), else None."""
    indices = None
    if isinstance(dataset, IndexedSet):
        dataset, indices = dataset.base, dataset.indices
    if not isinstance(dataset, ImageSet):
        return None
    base = dataset.base
    data = getattr(base, "data", None)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4 and dataset.normalise):
        return None
    labels = np.asarray(base.targets, dtype=np.int64)  # type: ignore[attr-defined]
    if indices is not None:
        data, labels = data[indices], labels[indices]
    return data, labels, dataset


def _resident(dataset: object, cfg: DataConfig, device: torch.device, *, train: bool) -> ResidentSet | None:
    if isinstance(dataset, TensorPairs):
        return ResidentSet(dataset.x.to(device), dataset.y.to(device), None, None, augment=False)
    found = _pixels(dataset)
    if found is None:
        return None
    data, labels, image_set = found
    side = data.shape[1]
    fits = isinstance(image_set.prepare, _FitSquare) and image_set.prepare.side == side == data.shape[2]
    augment = image_set.augment is not None
    if not fits or (augment and image_set.augment.kind != "crop_flip"):  # type: ignore[union-attr]
        return None
    x = torch.from_numpy(np.ascontiguousarray(data))
    if augment and train:
        x = torch.nn.functional.pad(x, (0, 0, PAD, PAD, PAD, PAD))  # [N, H+8, W+8, C], zeros as TF.pad
    mean, std = (torch.tensor(v, dtype=torch.float32, device=device) for v in image_set.normalise)  # type: ignore[union-attr]
    return ResidentSet(x.to(device), torch.from_numpy(labels).to(device), mean, std, augment=augment and train)


def augment_params(n: int, seed: int, epoch: int, positions: int, device: torch.device) -> Tensor:
    """[n, 3] int64 (top, left, flip) of every sample of the epoch: a function of (seed, epoch)."""
    g = torch.Generator().manual_seed(_mix(seed, epoch, AUGMENT_STREAM))
    u = torch.rand(n, 3, generator=g, dtype=torch.float64)
    offsets = (u[:, :2] * positions).long()  # int(u * (padded - side + 1)), as the host crop
    return torch.cat([offsets, (u[:, 2:] < 0.5).long()], 1).to(device)


def _crop_flip(x: Tensor, idx: Tensor, params: Tensor, side: int) -> Tensor:
    """x [N, H+2P, W+2P, C] uint8 -> the batch ``idx`` cropped to side x side and flipped: [B, side, side, C]."""
    top, left, flip = params[idx].unbind(1)
    ar = torch.arange(side, device=x.device)
    rows = top[:, None] + ar  # [B, side]
    cols = torch.where(flip[:, None].bool(), left[:, None] + (side - 1) - ar, left[:, None] + ar)
    return x[idx[:, None, None], rows[:, :, None], cols[:, None, :]]  # [B, side, side, C]


def _finish(data: ResidentSet, pixels: Tensor) -> Tensor:
    """uint8 [B, H, W, C] -> normalised float32 [B, C, H, W] in channels_last (ToTensor, Normalize)."""
    x = pixels.float().div(255).sub(data.mean).div(data.std)  # type: ignore[arg-type]
    return x.permute(0, 3, 1, 2)  # channels_last strides of [B, C, H, W]


class ResidentBatches:
    """Batches of a ResidentSet in a given order (device indices), each made on the device.

    Args:
        data: the split.
        order: sample indices, in batch order.
        batch_size: samples per batch.
        params: the epoch's (top, left, flip) per sample when augmenting (``augment_params``).
        drop_last: leave out a last batch shorter than ``batch_size`` (static shapes).
    """

    def __init__(self, data: ResidentSet, order: Tensor, batch_size: int, params: Tensor | None = None,
                 drop_last: bool = False) -> None:  # fmt: skip
        self.data, self.batch_size, self.params = data, batch_size, params
        self.order = order.to(data.y.device)
        self.count = len(order) // batch_size if drop_last else math.ceil(len(order) / batch_size)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        d = self.data
        for b in range(self.count):
            idx = self.order[b * self.batch_size : (b + 1) * self.batch_size]
            if d.mean is None:
                x = d.x[idx]
            elif self.params is not None:
                x = _finish(d, _crop_flip(d.x, idx, self.params, d.x.shape[1] - 2 * PAD))
            else:
                x = _finish(d, d.x[idx])
            yield x, d.y[idx]


def resident_train_batches(data: ResidentSet, cfg: DataConfig, *, seed: int, epoch: int, rank: int = 0,
                           world_size: int = 1, drop_last: bool = False) -> ResidentBatches:  # fmt: skip
    """The training batches of one epoch: ``loaders.train_loader``'s order, augmentation on the device.

    Raises:
        ValueError: rank outside 0..world_size-1.
    """
    order = _epoch_order(len(data), seed, epoch, rank, world_size)
    params = None
    if data.augment:
        positions = 2 * PAD + 1
        params = augment_params(len(data), seed, epoch, positions, data.y.device)
    return ResidentBatches(data, order, cfg.batch_size, params, drop_last)


def resident_eval_batches(
    data: ResidentSet, cfg: DataConfig, *, rank: int = 0, world_size: int = 1, indices: np.ndarray | None = None
) -> ResidentBatches:
    """Evaluation batches in data set order (or of ``indices``, a capped evaluation's subset), this rank's
    shard (every world_size-th sample)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    order = torch.arange(len(data)) if indices is None else torch.as_tensor(indices)
    return ResidentBatches(data, order[rank::world_size], cfg.eval_batch_size)



def device_resident_sets(bundle: DataBundle, cfg: DataConfig, device: torch.device) -> tuple[ResidentSet, ResidentSet] | None:
    """``data.device_resident``: (train, test) held on ``device``, or None: the host loaders (ImageFolder,
    event data, "off", or "auto" off CUDA).

    Raises:
        DataError: "on" for a data set that is not held in memory as stored.
    """
    choice = cfg.device_resident
    if choice == "off" or (choice == "auto" and device.type != "cuda"):
        return None
    sets = resident_sets(bundle, cfg, device)
    if sets is None and choice == "on":
        raise DataError(
            f"data.device_resident = 'on' but {cfg.dataset} with data.augment = {cfg.augment!r} and data.image_size = "
            f"{cfg.image_size} is not held in memory as stored (digits, or CIFAR at 32 px with augment none or "
            "crop_flip); use 'auto' or 'off'"
        )
    return sets
