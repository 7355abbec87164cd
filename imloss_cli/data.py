"""Datasets and loaders: digits (bundled), CIFAR-10/100 (python pickles) and ImageFolder trees.

Every setting comes from ``DataConfig``; this module only adds dataset facts (channel statistics,
file layouts). Training batches of epoch E are a pure function of (seed, E, rank, world_size): the
order comes from a generator seeded with (seed, E), and each sample's augmentation draws from its
own generator seeded with (seed, E, index), so neither num_workers nor earlier RNG use changes a
batch, and a run resumed at epoch E sees exactly the batches it would have seen.
"""

from __future__ import annotations

import math
import pickle
import random
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder, VisionDataset
from torchvision.datasets.utils import download_and_extract_archive
from torchvision.transforms import functional as TF

from imloss_cli.recipe import DataConfig

# Channel statistics of the training sets (dataset facts, used when data.mean/std are None).
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR_HOME = "https://www.cs.toronto.edu/~kriz/cifar.html"
_PROBE_TIMEOUT_S = 3.0


class DataError(Exception):
    """Data that cannot be loaded; the message names the file or directory and what to do."""


@dataclass(frozen=True)
class DataBundle:
    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int  # side of the (square) input
    classes: tuple[str, ...]


class TensorPairs(Dataset):
    """An in-memory dataset; its loaders slice whole batches instead of collating samples."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]


class ImageSet(Dataset):
    """PIL images from a torchvision dataset -> (normalised float tensor, label).

    ``ds[i]`` draws its augmentation from torch's global RNG, as torchvision transforms do;
    ``ds[(i, sample_seed)]`` (what the train loader asks for) is deterministic.
    """

    def __init__(self, base: Dataset, prepare: Callable[[Image.Image], Image.Image],
                 augment: _Augment | None, finish: Callable[[Image.Image], Tensor]) -> None:
        self.base, self.prepare, self.augment, self.finish = base, prepare, augment, finish

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


# --- building ------------------------------------------------------------------------------------


def build_datasets(cfg: DataConfig) -> DataBundle:
    """Load the train and test sets that ``cfg`` describes.

    Args:
        cfg: the recipe's data section.

    Returns:
        The two datasets with their class names, channel count and input side.

    Raises:
        DataError: data missing or in the wrong format, a failed download, or settings that do not
            fit the dataset (e.g. augmentation on digits).
    """
    if cfg.dataset == "digits":
        return _digits(cfg)
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
    # A constant split seed: every run of every seed is scored on the same test set.
    try:
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, y, test_size=cfg.test_fraction, stratify=y, random_state=0)
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


def _pipelines(cfg: DataConfig, stats: tuple[Sequence[float], Sequence[float]]
               ) -> tuple[Callable, _Augment | None, Callable, Callable]:
    """(train prepare, train augment, test prepare, finish) for an RGB image dataset."""
    side = cfg.image_size
    finish = transforms.Compose([transforms.ToTensor(), transforms.Normalize(
        cfg.mean if cfg.mean is not None else stats[0],
        cfg.std if cfg.std is not None else stats[1])])
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
    return DataBundle(
        train=ImageSet(train, train_prepare, augment, finish),
        test=ImageSet(test, test_prepare, None, finish),
        num_classes=len(classes), in_channels=3, image_size=cfg.image_size, classes=tuple(classes))


class _PickledCifar:
    """Reads the python-pickle layout and checks its format, not the md5 of the official files,
    so that converted or generated copies load too. Keys may be str or bytes."""

    # Set by the torchvision class mixed in (CIFAR10 / CIFAR100) and by the subclasses below.
    base_folder: str
    train_list: list[list[str]]
    test_list: list[list[str]]
    meta: dict[str, str]
    url: str
    filename: str
    tgz_md5: str
    label_key: str
    display: str

    def __init__(self, root: str, train: bool) -> None:
        VisionDataset.__init__(self, root)  # type: ignore[arg-type]  # not CIFAR10's: md5 checks
        self.train = train
        base = Path(root) / self.base_folder
        meta = _unpickle(base / self.meta["filename"], self.display)
        names = meta.get(self.meta["key"])
        if not isinstance(names, (list, tuple)) or not names:
            _bad(base / self.meta["filename"], f"no list under key {self.meta['key']!r}", self.display)
        self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        chunks: list[np.ndarray] = []
        self.targets: list[int] = []
        for name, _md5 in self.train_list if train else self.test_list:
            path = base / name
            entry = _unpickle(path, self.display)
            data, labels = entry.get("data"), entry.get(self.label_key)
            if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                    and data.shape[1] == 3072):
                _bad(path, "key 'data' must hold uint8 pixels of shape [N, 3072]", self.display)
            try:
                labels = [int(v) for v in labels]  # type: ignore[union-attr]
            except (TypeError, ValueError):
                _bad(path, f"key {self.label_key!r} must hold integer labels", self.display)
            if len(labels) != len(data):
                _bad(path, f"{len(labels)} labels for {len(data)} images", self.display)
            if labels and not 0 <= min(labels) <= max(labels) < len(self.classes):
                _bad(path, f"labels outside 0..{len(self.classes) - 1}", self.display)
            chunks.append(data)
            self.targets.extend(labels)
        self.data = np.vstack(chunks).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # to HWC

    def _check_integrity(self) -> bool:
        # What torchvision's download() asks before fetching: existence, not the official md5s.
        return not _missing_files(Path(self.root), type(self))  # type: ignore[attr-defined]


class _Cifar10(_PickledCifar, CIFAR10):
    label_key, display = "labels", "CIFAR-10"


class _Cifar100(_PickledCifar, CIFAR100):
    label_key, display = "fine_labels", "CIFAR-100"


def _unpickle(path: Path, display: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")  # latin1: the official files are Python 2's
    except Exception as e:  # arbitrary bytes can make pickle raise nearly any exception type
        _bad(path, f"cannot be unpickled: {type(e).__name__}: {e}", display)
    if not isinstance(entry, dict):
        _bad(path, f"holds a {type(entry).__name__}, not a dict", display)
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _bad(path: Path, reason: str, display: str) -> NoReturn:
    raise DataError(f"{path}: not a {display} python-version file ({reason}); replace it with the "
                    f"original from {CIFAR_HOME}, or delete {path.parent} and set "
                    "data.download = true")


def _cifar_files(kind: type[_PickledCifar]) -> list[str]:
    return [n for n, _ in kind.train_list + kind.test_list] + [kind.meta["filename"]]


def _missing_files(root: Path, kind: type[_PickledCifar]) -> list[str]:
    return [n for n in _cifar_files(kind) if not (root / kind.base_folder / n).is_file()]


def _cifar(cfg: DataConfig) -> DataBundle:
    kind = _Cifar10 if cfg.dataset == "cifar10" else _Cifar100
    root = Path(cfg.root)
    _ensure_cifar(kind, root, cfg.download)
    train, test = kind(str(root), train=True), kind(str(root), train=False)
    stats = CIFAR10_STATS if cfg.dataset == "cifar10" else CIFAR100_STATS
    return _image_bundle(cfg, train, test, train.classes, stats)


def _ensure_cifar(kind: type[_PickledCifar], root: Path, download: bool) -> None:
    base = root / kind.base_folder
    missing = _missing_files(root, kind)
    if not missing:
        return
    if len(missing) == len(_cifar_files(kind)):
        what = f"{kind.display} not found under {base}"
    else:
        what = f"{kind.display} incomplete under {base} (missing {', '.join(missing)})"
    by_hand = f"download the python version from {CIFAR_HOME} and unpack it into {root}/"
    if not download:
        raise DataError(f"{what}; {by_hand}, or set data.download = true")
    reason = _network_problem(kind.url)
    if reason is None:
        try:
            download_and_extract_archive(kind.url, str(root), filename=kind.filename, md5=kind.tgz_md5)
        except (urllib.error.URLError, OSError, RuntimeError) as e:
            reason = f"{type(e).__name__}: {e}"
    if reason is None and _missing_files(root, kind):
        reason = f"the archive lacks {', '.join(_missing_files(root, kind))}"
    if reason is not None:
        raise DataError(f"cannot download {kind.display} into {root} ({reason}); without network "
                        f"access, {by_hand} (giving {base}/) and set data.download = false")


def _network_problem(url: str) -> str | None:
    """None when url's host accepts a connection within a few seconds, else why not.

    Runs in a thread because name resolution ignores socket timeouts and can hang for long where
    DNS is unreachable. Behind a configured proxy the probe is skipped (urllib uses the proxy).
    """
    if urllib.request.getproxies():
        return None
    host = urlparse(url).hostname or ""
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(f"no network: cannot reach {host}: {e}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT_S + 1.0)
    return outcome[0] if outcome else f"no network: {host} did not answer"


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


# --- loading -------------------------------------------------------------------------------------

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
    """Yields (index, sample_seed) for ImageSet, whose augmentation then draws from sample_seed."""

    def __init__(self, order: Tensor, key: int) -> None:
        self.order, self.key = order.tolist(), key

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((i, _mix(self.key, i)) for i in self.order)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; extend that to python and numpy so
    # that any randomness in user transforms is reproducible too.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _loader(dataset: Dataset, sampler: Iterable, batch_size: int, cfg: DataConfig, key: int,
            pin_memory: bool) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=cfg.num_workers,
        pin_memory=pin_memory, drop_last=False, persistent_workers=cfg.num_workers > 0,
        worker_init_fn=_seed_worker,
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
        An iterable of (inputs float32 [B,C,H,W], labels int64 [B]) with a len(); last batch may
        be short.

    Raises:
        ValueError: rank outside 0..world_size-1.
    """
    order = _epoch_order(len(bundle.train), seed, epoch, rank, world_size)  # type: ignore[arg-type]
    if isinstance(bundle.train, TensorPairs):
        return _TensorBatches(bundle.train, order, cfg.batch_size, pin_memory)
    key = _mix(seed, epoch, rank)
    sampler: Iterable = (_SeededSampler(order, _mix(seed, epoch)) if isinstance(bundle.train, ImageSet)
                         else order.tolist())
    return _loader(bundle.train, sampler, cfg.batch_size, cfg, key, pin_memory)


def test_loader(bundle: DataBundle, cfg: DataConfig, *, rank: int = 0, world_size: int = 1,
                pin_memory: bool = False) -> Iterable[tuple[Tensor, Tensor]]:
    """The test batches in dataset order; reusable across epochs.

    Args:
        bundle: from build_datasets.
        cfg: the recipe's data section (eval_batch_size, num_workers).
        rank: this process's rank; each rank gets a disjoint shard (every rank-th sample) and the
            shards together cover the test set exactly once, so counts must be summed over ranks.
        world_size: number of data-parallel processes.
        pin_memory: pin batches for faster host-to-GPU copies.

    Returns:
        An iterable of (inputs, labels) with a len(); no shuffling, last batch may be short.

    Raises:
        ValueError: rank outside 0..world_size-1.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    n = len(bundle.test)  # type: ignore[arg-type]
    if isinstance(bundle.test, TensorPairs):
        shard = torch.arange(rank, n, world_size)
        return _TensorBatches(bundle.test, shard, cfg.eval_batch_size, pin_memory)
    return _loader(bundle.test, range(rank, n, world_size), cfg.eval_batch_size, cfg, 0, pin_memory)


# Test modules import this function by name; without the flag pytest would collect it as a test.
test_loader.__test__ = False  # type: ignore[attr-defined]
