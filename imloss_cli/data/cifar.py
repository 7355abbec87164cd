"""CIFAR-10/100 from the python-pickle batches: format checks, download, and the DataBundle."""

from __future__ import annotations

import pickle
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100, VisionDataset
from torchvision.datasets.utils import download_and_extract_archive

from imloss_cli.data.bundle import DataBundle, DataError
from imloss_cli.data.images import _image_bundle
from imloss_cli.recipe import DataConfig

# Channel statistics of the training sets (dataset facts, used when data.mean/std are None).
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
CIFAR_HOME = "https://www.cs.toronto.edu/~kriz/cifar.html"
_PROBE_TIMEOUT_S = 3.0


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


# What a CIFAR batch holds: dicts, lists, strings, bytes and numpy arrays. The only globals such a
# pickle names are numpy's array rebuilders (Python 2 / numpy 1 names and numpy 2's) and the codec
# that Python 3 uses to pickle bytes at protocol 2. Anything else could run code while loading.
_CIFAR_GLOBALS = frozenset(
    {(f"numpy.{core}.multiarray", "_reconstruct") for core in ("core", "_core")}
    | {(f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")}
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
)


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global that a data file never holds."""


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers, strings, bytes and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_GLOBALS:
            raise RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path, display: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            entry = _DataUnpickler(f, encoding="latin1").load()  # latin1: the official files are Python 2's
    except RefusedGlobal as e:
        _bad(path, f"it asks to load {e}, which a CIFAR batch never holds; refused unloaded", display)
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
