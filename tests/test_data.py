"""Tests for imloss_cli.data: real values from generated on-disk datasets, errors, reproducibility."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imloss_cli.data import (
    CIFAR10_STATS,
    CIFAR100_STATS,
    IMAGENET_STATS,
    DataError,
    TensorPairs,
    build_datasets,
    test_loader,
    train_loader,
)
from imloss_cli.recipe import DataConfig

REAL_CIFAR_JPG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg"


def _normalised(pixels_chw: np.ndarray, stats: tuple) -> torch.Tensor:
    x = torch.from_numpy(pixels_chw.astype(np.float32) / 255.0)
    mean, std = (torch.tensor(s).view(3, 1, 1) for s in stats)
    return (x - mean) / std


def _dump(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj))


def _key(name: str, as_bytes: bool) -> str | bytes:
    return name.encode() if as_bytes else name


def make_cifar10(root: Path, *, as_bytes: bool = True, n_train: int = 20, n_test: int = 10) -> dict:
    """CIFAR-10's python layout: 5 train batches of n_train images, a test batch, batches.meta."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out: dict = {"train": [], "test": None}
    for i in range(1, 6):
        data = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n_train)]
        _dump(base / f"data_batch_{i}", {_key("data", as_bytes): data, _key("labels", as_bytes): labels})
        out["train"].append((data, labels))
    data = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    labels = [i % 10 for i in range(n_test)]
    _dump(base / "test_batch", {_key("data", as_bytes): data, _key("labels", as_bytes): labels})
    out["test"] = (data, labels)
    names = [f"class{i}".encode() for i in range(10)]
    _dump(base / "batches.meta", {_key("label_names", as_bytes): names})
    return out


def make_cifar100(root: Path) -> dict:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    out = {}
    for split, n in (("train", 40), ("test", 12)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 100, n)]
        _dump(base / split, {b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * n})
        out[split] = (data, labels)
    _dump(base / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    return out


def make_imagefolder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog"),
    test: str = "test",
    size: int = 32,
    test_classes: tuple[str, ...] | None = None,
) -> None:
    rng = np.random.default_rng(2)
    for split, cls_list, n in (("train", classes, 3), (test, test_classes or classes, 2)):
        for c in cls_list:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.png")


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


# --- digits --------------------------------------------------------------------------------------


def test_digits_split_is_stratified_stable_and_scaled() -> None:
    cfg = DataConfig()
    a, b = build_datasets(cfg), build_datasets(cfg)
    assert len(a.train) + len(a.test) == 1797
    assert len(a.test) == 450  # ceil(0.25 * 1797)
    assert (a.num_classes, a.in_channels, a.image_size) == (10, 1, 8)
    assert a.classes == tuple("0123456789")
    x, y = a.train.x, a.train.y
    assert x.shape == (len(a.train), 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    all_counts = torch.bincount(torch.cat([a.train.y, a.test.y]), minlength=10)
    test_counts = torch.bincount(a.test.y, minlength=10)
    assert (torch.bincount(a.train.y, minlength=10) > 0).all() and (test_counts > 0).all()
    expected = all_counts.double() * len(a.test) / 1797
    assert ((test_counts.double() - expected).abs() <= 1).all()
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)
    assert torch.equal(a.train.y, b.train.y)


def test_digits_loaders_cover_the_data_in_batches() -> None:
    cfg = DataConfig(batch_size=100, eval_batch_size=128)
    bundle = build_datasets(cfg)
    batches = list(train_loader(bundle, cfg, seed=0, epoch=0))
    assert len(batches) == len(train_loader(bundle, cfg, seed=0, epoch=0)) == 14
    assert [len(y) for _, y in batches][-1] == len(bundle.train) - 1300
    seen = torch.cat([y for _, y in batches])
    assert torch.equal(torch.sort(seen).values, torch.sort(bundle.train.y).values)
    xs, ys = zip(*test_loader(bundle, cfg))
    assert torch.equal(torch.cat(ys), bundle.test.y) and torch.equal(torch.cat(xs), bundle.test.x)


def test_digits_mean_std_normalise_when_given() -> None:
    plain = build_datasets(DataConfig())
    norm = build_datasets(DataConfig(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    assert torch.allclose(norm.test.x, (plain.test.x - 0.5) / 0.25)
    with pytest.raises(DataError, match=r"one .grey. channel"):
        build_datasets(DataConfig(mean=(0.1, 0.2, 0.3)))


def test_digits_too_small_test_fraction() -> None:
    with pytest.raises(DataError, match=r"data.test_fraction = 0.001 cannot split digits"):
        build_datasets(DataConfig(test_fraction=0.001))


@pytest.mark.parametrize("augment", ["crop_flip", "resized_crop_flip"])
def test_digits_rejects_augmentation(augment: str) -> None:
    with pytest.raises(DataError, match=f"data.augment = '{augment}' is for image datasets; digits takes 'none'"):
        build_datasets(DataConfig(augment=augment))


# --- CIFAR ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes-keys", "str-keys"])
def test_cifar10_generated_files_load_with_exact_pixels(tmp_path: Path, as_bytes: bool) -> None:
    made = make_cifar10(tmp_path, as_bytes=as_bytes)
    bundle = build_datasets(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert (len(bundle.train), len(bundle.test)) == (100, 10)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, 32)
    assert bundle.classes == tuple(f"class{i}" for i in range(10))
    x, y = bundle.train[0]
    data, labels = made["train"][0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and y == labels[0]
    assert torch.allclose(x, _normalised(data[0].reshape(3, 32, 32), CIFAR10_STATS), atol=1e-6)
    # the last train image comes from data_batch_5, in order
    assert torch.allclose(
        bundle.train[99][0], _normalised(made["train"][4][0][19].reshape(3, 32, 32), CIFAR10_STATS), atol=1e-6
    )
    tx, ty = bundle.test[3]
    assert ty == made["test"][1][3] == 3
    assert torch.allclose(tx, _normalised(made["test"][0][3].reshape(3, 32, 32), CIFAR10_STATS), atol=1e-6)


def test_cifar100_generated_files_load_with_exact_pixels(tmp_path: Path) -> None:
    made = make_cifar100(tmp_path)
    bundle = build_datasets(DataConfig(dataset="cifar100", root=str(tmp_path)))
    assert (len(bundle.train), len(bundle.test), bundle.num_classes) == (40, 12, 100)
    assert bundle.classes[:2] == ("f0", "f1") and len(bundle.classes) == 100
    x, y = bundle.train[0]
    assert y == made["train"][1][0]
    assert torch.allclose(x, _normalised(made["train"][0][0].reshape(3, 32, 32), CIFAR100_STATS), atol=1e-6)


def test_cifar_custom_mean_std(tmp_path: Path) -> None:
    made = make_cifar10(tmp_path)
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x, _ = build_datasets(cfg).test[0]
    expected = torch.from_numpy(made["test"][0][0].reshape(3, 32, 32).astype(np.float32)) / 255 * 2 - 1
    assert torch.allclose(x, expected, atol=1e-6)


def test_cifar_missing_without_download(tmp_path: Path) -> None:
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        build_datasets(DataConfig(dataset="cifar10", root=str(root)))
    msg = str(err.value)
    assert f"CIFAR-10 not found under {root / 'cifar-10-batches-py'}" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg and "data.download = true" in msg


def test_cifar_incomplete_names_missing_files(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"incomplete under .*missing data_batch_3"):
        build_datasets(DataConfig(dataset="cifar10", root=str(tmp_path)))


def test_cifar_download_without_network_fails_fast(tmp_path: Path) -> None:
    root = tmp_path / "dl"
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        build_datasets(DataConfig(dataset="cifar100", root=str(root), download=True))
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert f"cannot download CIFAR-100 into {root}" in msg
    assert f"unpack it into {root}/" in msg and "data.download = false" in msg


@pytest.mark.parametrize("damage", ["truncated", "wrong-keys", "wrong-shape"])
def test_cifar_corrupt_file_is_named(tmp_path: Path, damage: str) -> None:
    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "wrong-keys":
        _dump(path, {b"pixels": np.zeros((20, 3072), np.uint8), b"labels": [0] * 20})
    else:
        _dump(path, {b"data": np.zeros((20, 1024), np.uint8), b"labels": [0] * 20})
    with pytest.raises(DataError, match=f"^{path}: not a CIFAR-10 python-version file"):
        build_datasets(DataConfig(dataset="cifar10", root=str(tmp_path)))


def test_cifar_corrupt_meta_is_named(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match=f"^{meta}: .*cannot be unpickled"):
        build_datasets(DataConfig(dataset="cifar10", root=str(tmp_path)))


# --- imagefolder ---------------------------------------------------------------------------------


def test_imagefolder_loads(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, classes=("cat", "dog", "emu"))
    bundle = build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path)))
    assert bundle.classes == ("cat", "dog", "emu") and bundle.num_classes == 3
    assert (len(bundle.train), len(bundle.test), bundle.in_channels, bundle.image_size) == (9, 6, 3, 32)
    x, y = bundle.test[0]
    pixels = np.asarray(Image.open(tmp_path / "test" / "cat" / "0.png")).transpose(2, 0, 1)
    assert y == 0 and torch.allclose(x, _normalised(pixels, IMAGENET_STATS), atol=1e-6)


def test_imagefolder_val_resize_and_resized_crop(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, test="val", size=40)
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=24, batch_size=4)
    bundle = build_datasets(cfg)
    assert len(bundle.test) == 4 and bundle.test[0][0].shape == (3, 24, 24)
    rcfg = cfg.model_copy(update={"augment": "resized_crop_flip"})
    rbundle = build_datasets(rcfg)
    assert rbundle.train[0][0].shape == (3, 24, 24) and rbundle.test[0][0].shape == (3, 24, 24)
    x, y = next(iter(train_loader(rbundle, rcfg, seed=0, epoch=0)))
    assert x.shape == (4, 3, 24, 24) and y.dtype == torch.int64


def test_imagefolder_missing_root_split_images_or_class_mismatch_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"imagefolder root {missing} not found"):
        build_datasets(DataConfig(dataset="imagefolder", root=str(missing)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'empty' / 'train'} not found"):
        build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path / "empty")))
    (tmp_path / "noimg" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "noimg" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=f"{tmp_path / 'noimg' / 'train'}: no images"):
        build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path / "noimg")))
    bad = tmp_path / "mismatch"
    make_imagefolder(bad, classes=("cat", "dog"), test_classes=("cat", "eel"))
    with pytest.raises(DataError, match=rf"{bad}: train/ and test/ hold different classes .*dog.*eel"):
        build_datasets(DataConfig(dataset="imagefolder", root=str(bad)))


@pytest.mark.skipif(not REAL_CIFAR_JPG.is_dir(), reason=f"real CIFAR-10 JPEGs not at {REAL_CIFAR_JPG}")
def test_real_cifar10_jpg_imagefolder() -> None:
    bundle = build_datasets(DataConfig(dataset="imagefolder", root=str(REAL_CIFAR_JPG)))
    assert (len(bundle.train), len(bundle.test), bundle.num_classes) == (50_000, 10_000, 10)
    assert bundle.classes[0] == "airplane"
    assert bundle.test[0][0].shape == (3, 32, 32)


# --- loaders and reproducibility -----------------------------------------------------------------


def test_train_batches_reproducible_and_epoch_dependent(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path), augment="crop_flip", batch_size=16)
    bundle = build_datasets(cfg)
    first = _batches(train_loader(bundle, cfg, seed=3, epoch=2))
    _batches(train_loader(bundle, cfg, seed=5, epoch=0))  # another loader in between
    torch.manual_seed(1234)
    torch.rand(17)
    np.random.seed(7)
    again = _batches(train_loader(bundle, cfg, seed=3, epoch=2))
    assert _same(first, again)
    assert [len(y) for _, y in first] == [16] * 6 + [4]
    assert not _same(first, _batches(train_loader(bundle, cfg, seed=3, epoch=3)))
    assert not _same(first, _batches(train_loader(bundle, cfg, seed=4, epoch=2)))
    # augmentation is real: the same image differs from its un-augmented self somewhere
    plain = build_datasets(cfg.model_copy(update={"augment": "none"}))
    plain_first = _batches(train_loader(plain, cfg, seed=3, epoch=2))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, plain_first))  # same order
    assert not torch.equal(first[0][0], plain_first[0][0])
    # the loader leaves the global RNG where it was
    state = torch.get_rng_state()
    _batches(train_loader(bundle, cfg, seed=3, epoch=2))
    assert torch.equal(state, torch.get_rng_state())


def test_digits_train_order_reproducible() -> None:
    cfg = DataConfig(batch_size=64)
    bundle = build_datasets(cfg)
    first = _batches(train_loader(bundle, cfg, seed=3, epoch=2))
    torch.manual_seed(99)
    _batches(train_loader(bundle, cfg, seed=3, epoch=1))
    assert _same(first, _batches(train_loader(bundle, cfg, seed=3, epoch=2)))
    assert not _same(first, _batches(train_loader(bundle, cfg, seed=3, epoch=3)))


def test_workers_do_not_change_batches(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    cfg0 = DataConfig(dataset="cifar10", root=str(tmp_path), augment="crop_flip", batch_size=16)
    cfg2 = cfg0.model_copy(update={"num_workers": 2})
    bundle = build_datasets(cfg0)
    serial = _batches(train_loader(bundle, cfg0, seed=3, epoch=2))
    loader2 = train_loader(bundle, cfg2, seed=3, epoch=2)
    assert loader2.persistent_workers and not train_loader(bundle, cfg0, seed=3, epoch=2).persistent_workers
    assert _same(serial, _batches(loader2))
    assert _same(_batches(test_loader(bundle, cfg0)), _batches(test_loader(bundle, cfg2)))


@pytest.mark.parametrize("dataset", ["digits", "cifar10"])
def test_sharding_across_ranks(tmp_path: Path, dataset: str) -> None:
    if dataset == "cifar10":
        make_cifar10(tmp_path, n_train=21, n_test=11)  # 105 train, 11 test: uneven shards
    cfg = DataConfig(dataset=dataset, root=str(tmp_path), batch_size=8, eval_batch_size=4)
    bundle = build_datasets(cfg)
    n_test = len(bundle.test)
    test_labels = [torch.cat([y for _, y in test_loader(bundle, cfg, rank=r, world_size=3)]) for r in range(3)]
    assert sum(len(t) for t in test_labels) == n_test
    expected = torch.tensor([int(bundle.test[i][1]) for i in range(n_test)])
    for r in range(3):
        assert torch.equal(test_labels[r], expected[r::3])  # disjoint, together exactly once
    train_sizes = [
        sum(len(y) for _, y in train_loader(bundle, cfg, seed=1, epoch=0, rank=r, world_size=3)) for r in range(3)
    ]
    assert train_sizes == [-(-len(bundle.train) // 3)] * 3  # padded to equal length
    with pytest.raises(ValueError):
        train_loader(bundle, cfg, seed=1, epoch=0, rank=3, world_size=3)


def _rows(pairs: TensorPairs) -> set[bytes]:
    return {row.numpy().tobytes() for row in pairs.x}


def test_validation_split_is_disjoint_stratified_and_fixed_by_the_split_seed() -> None:
    plain = build_datasets(DataConfig())
    held = build_datasets(DataConfig(val_fraction=0.2))
    assert held.val is not None and plain.val is None
    assert len(held.train) + len(held.val) == len(plain.train)
    assert torch.equal(held.test.x, plain.test.x)  # the test set is untouched
    train, val = _rows(held.train), _rows(held.val)
    assert not train & val and train | val == _rows(plain.train)
    counts = np.bincount(held.val.y.numpy(), minlength=10)
    expected = 0.2 * np.bincount(plain.train.y.numpy(), minlength=10)
    assert np.all(np.abs(counts - expected) <= 1)  # each class keeps its share
    again = build_datasets(DataConfig(val_fraction=0.2))
    assert torch.equal(again.val.x, held.val.x)
    other = build_datasets(DataConfig(val_fraction=0.2, split_seed=1))
    assert _rows(other.val) != val


def test_validation_images_of_cifar_are_read_without_the_training_augmentation(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path), augment="crop_flip", val_fraction=0.2)
    bundle = build_datasets(cfg)
    assert (len(bundle.train), len(bundle.val)) == (80, 20)
    plain = build_datasets(DataConfig(dataset="cifar10", root=str(tmp_path)))
    index = int(bundle.val.indices[3])
    torch.manual_seed(0)
    assert torch.equal(bundle.val[3][0], plain.train[index][0])  # no crop, no flip
    labels = [int(bundle.val[i][1]) for i in range(len(bundle.val))]
    assert labels == [plain.train[int(i)][1] for i in bundle.val.indices]
    train_indices = {int(i) for i in bundle.train.indices}
    assert not train_indices & {int(i) for i in bundle.val.indices} and len(train_indices) == 80
