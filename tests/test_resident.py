"""The device-resident input pipeline, run on CPU: the host loaders' order, the host crop and flip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms import functional as TF

from imloss_cli.data import build_datasets, test_loader, train_loader
from imloss_cli.data.resident import (
    PAD,
    augment_params,
    resident_eval_batches,
    resident_sets,
    resident_train_batches,
)
from imloss_cli.recipe import DataConfig
from tests.test_data import make_cifar10

CPU = torch.device("cpu")


def _cifar_cfg(root: Path, **kw: object) -> DataConfig:
    return DataConfig(dataset="cifar10", root=str(root), batch_size=16, eval_batch_size=7, **kw)


def test_digits_batches_on_the_device_equal_the_host_loaders_batch_for_batch() -> None:
    cfg = DataConfig(batch_size=100, eval_batch_size=128)
    bundle = build_datasets(cfg)
    train, test = resident_sets(bundle, cfg, CPU)
    for epoch in (1, 2):
        host = list(train_loader(bundle, cfg, seed=3, epoch=epoch))
        device = list(resident_train_batches(train, cfg, seed=3, epoch=epoch))
        assert len(host) == len(device) == 14  # 1347 training digits: the last batch is short
        for (xh, yh), (xd, yd) in zip(host, device):
            assert torch.equal(xh, xd) and torch.equal(yh, yd)
    host_test = list(test_loader(bundle, cfg))
    device_test = list(resident_eval_batches(test, cfg))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(host_test, device_test))


def test_drop_last_leaves_out_the_short_batch() -> None:
    cfg = DataConfig(batch_size=100)
    train, _ = resident_sets(build_datasets(cfg), cfg, CPU)
    batches = resident_train_batches(train, cfg, seed=0, epoch=1, drop_last=True)
    assert len(batches) == 13 and all(x.shape[0] == 100 for x, _ in batches)


def test_cifar_test_batches_equal_the_host_pipeline(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    cfg = _cifar_cfg(tmp_path)
    bundle = build_datasets(cfg)
    train, test = resident_sets(bundle, cfg, CPU)
    assert train.x.dtype == torch.uint8 and not train.augment  # stored pixels, no augmentation asked
    host = list(test_loader(bundle, cfg))
    device = list(resident_eval_batches(test, cfg))
    assert [x.shape[0] for x, _ in device] == [7, 3]
    for (xh, yh), (xd, yd) in zip(host, device):
        assert torch.equal(xh, xd) and torch.equal(yh, yd)  # ToTensor + Normalize, the same roundings
        assert xd.is_contiguous(memory_format=torch.channels_last)
    host_train = list(train_loader(bundle, cfg, seed=1, epoch=1))
    device_train = list(resident_train_batches(train, cfg, seed=1, epoch=1))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(host_train, device_train))


def test_cifar_crop_and_flip_equal_a_hand_computation_with_torchvision(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    cfg = _cifar_cfg(tmp_path, augment="crop_flip")
    bundle = build_datasets(cfg)
    train, _ = resident_sets(bundle, cfg, CPU)
    assert train.augment and train.x.shape[1:] == (32 + 2 * PAD, 32 + 2 * PAD, 3)
    seed, epoch = 5, 2
    params = augment_params(len(train), seed, epoch, 2 * PAD + 1, CPU)
    assert params[:, :2].min() >= 0 and params[:, :2].max() <= 2 * PAD
    assert 0 < params[:, 2].sum() < len(train)  # some flipped, some not
    order = list(train_loader(bundle, DataConfig(dataset="cifar10", batch_size=16), seed=seed, epoch=epoch))
    batches = list(resident_train_batches(train, cfg, seed=seed, epoch=epoch))
    base, (mean, std) = bundle.train.base, bundle.train.normalise
    for (_, y_host), (_, y) in zip(order, batches):
        assert torch.equal(y, y_host)  # the host loader's order
    # by hand, sample by sample: torchvision's pad, crop, flip, ToTensor and Normalize
    idx = torch.cat([y_idx for y_idx in _indices(seed, epoch, len(train), cfg.batch_size)])
    x_all = torch.cat([x for x, _ in batches])
    for pos, i in enumerate(idx.tolist()):
        img, _ = base[i]
        top, left, flip = params[i].tolist()
        img = TF.crop(TF.pad(img, [PAD]), top, left, 32, 32)
        img = TF.hflip(img) if flip else img
        expected = TF.normalize(TF.to_tensor(img), mean, std)
        assert torch.equal(x_all[pos], expected), pos


def _indices(seed: int, epoch: int, n: int, batch_size: int) -> list[torch.Tensor]:
    from imloss_cli.data.loaders import _epoch_order

    order = _epoch_order(n, seed, epoch, 0, 1)
    return list(order.split(batch_size))


def test_augmentation_is_a_function_of_seed_and_epoch_only(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    cfg = _cifar_cfg(tmp_path, augment="crop_flip")
    train, _ = resident_sets(build_datasets(cfg), cfg, CPU)

    def epoch_images(seed: int, epoch: int, batch_size: int) -> torch.Tensor:
        batches = resident_train_batches(
            train, cfg.model_copy(update={"batch_size": batch_size}), seed=seed, epoch=epoch
        )
        x = torch.cat([x for x, _ in batches])
        order = torch.cat(_indices(seed, epoch, len(train), batch_size))
        return x[order.argsort()]  # back in data set order

    torch.manual_seed(123)  # the global RNG plays no part
    a = epoch_images(1, 1, 16)
    torch.manual_seed(9)
    assert torch.equal(a, epoch_images(1, 1, 16))
    assert torch.equal(a, epoch_images(1, 1, 33))  # nor the batch size
    assert not torch.equal(a, epoch_images(1, 2, 16))
    assert not torch.equal(a, epoch_images(2, 1, 16))
    # two ranks together see the samples of one process, each with the same crop
    halves = [resident_train_batches(train, cfg, seed=1, epoch=1, rank=r, world_size=2) for r in (0, 1)]
    assert sum(len(h.order) for h in halves) == len(train)


def test_sets_that_cannot_live_on_the_device_are_left_to_the_host_loaders(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    resized = _cifar_cfg(tmp_path, image_size=16)
    assert resident_sets(build_datasets(resized), resized, CPU) is None
    other_augment = _cifar_cfg(tmp_path, augment="resized_crop_flip")
    assert resident_sets(build_datasets(other_augment), other_augment, CPU) is None


def test_a_validation_split_keeps_its_training_part_on_the_device(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    cfg = _cifar_cfg(tmp_path, val_fraction=0.2)
    bundle = build_datasets(cfg)
    train, _ = resident_sets(bundle, cfg, CPU)
    assert len(train) == len(bundle.train) == 80
    host = list(train_loader(bundle, cfg, seed=0, epoch=1))
    device = list(resident_train_batches(train, cfg, seed=0, epoch=1))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(host, device))


@pytest.mark.parametrize("rank", [0, 1])
def test_eval_shards_cover_the_test_set(tmp_path: Path, rank: int) -> None:
    make_cifar10(tmp_path)
    cfg = _cifar_cfg(tmp_path)
    bundle = build_datasets(cfg)
    _, test = resident_sets(bundle, cfg, CPU)
    host = list(test_loader(bundle, cfg, rank=rank, world_size=2))
    device = list(resident_eval_batches(test, cfg, rank=rank, world_size=2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(host, device))
