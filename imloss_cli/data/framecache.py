"""The frame cache: every recording of a dataset integrated once into one ``.npy`` file.

The file name carries a key over everything that changes the frames (T, the split rule, the side and
resize kernel,
each recording's relative path and size, and ``FORMAT``, the version of the framing code), so a
changed setting or a changed file finds no cache and builds its own: a stale cache is never read.
Building writes a temporary file in the same folder and renames it into place, so a crash, a bad
recording or a full disk leaves no partial cache under the final name. Readers memory-map it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imloss_cli.data.aedat import read_aedat
from imloss_cli.data.bundle import DataError
from imloss_cli.files import temporary_beside
from imloss_cli.data.frames import Split, integrate, resize

FORMAT = 1  # bump whenever integrate() or resize() change what they produce
_CHUNK_BYTES = 64 * 2**20  # frames at full sensor size held in memory at once while building


@dataclass(frozen=True)
class Recording:
    path: Path
    name: str  # relative to the dataset root, e.g. "airplane/cifar10_airplane_0.aedat"
    size: int  # bytes


def cache_file(cache_dir: Path, prefix: str, recordings: Sequence[Recording], timesteps: int, split: Split,
               side: int, kernel: str) -> Path:  # fmt: skip
    """Where the frames of these recordings and settings (``kernel``: the resize) are cached."""
    key = {
        "format": FORMAT,
        "timesteps": timesteps,
        "split": split,
        "side": side,
        "files": [[r.name, r.size] for r in recordings],
    }
    if side != 128:  # the kernel changes nothing at the sensor's own size
        key["resize"] = kernel
    digest = hashlib.sha256(json.dumps(key, separators=(",", ":")).encode()).hexdigest()[:16]
    resized = f"-{kernel}" if side != 128 else ""
    return cache_dir / f"{prefix}-T{timesteps}-{split}-{side}px{resized}-{digest}.npy"


def cached_frames(path: Path, recordings: Sequence[Recording], timesteps: int, split: Split,
                  side: int, kernel: str) -> np.ndarray:  # fmt: skip
    """The frames float32 [N, T, 2, side, side] (memory-mapped), integrated into ``path`` first if
    it holds no readable cache of that shape.

    Raises:
        DataError: a recording that cannot be decoded (named), or a cache folder that cannot be written.
    """
    shape = (len(recordings), timesteps, 2, side, side)
    frames = _open(path, shape)
    if frames is None:
        _build(path, recordings, timesteps, split, side, kernel)
        frames = _open(path, shape)
        if frames is None:
            raise DataError(f"{path}: the frame cache just written cannot be read back; delete it and retry")
    return frames


def _open(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        frames = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):  # missing, or not a whole .npy (then it is rebuilt)
        return None
    return frames if frames.shape == shape and frames.dtype == np.float32 else None


def _build(path: Path, recordings: Sequence[Recording], timesteps: int, split: Split, side: int, kernel: str) -> None:
    shape = (len(recordings), timesteps, 2, side, side)
    where = "set data.cache_dir to a writable folder with room for it"
    created = not path.parent.exists()  # a folder made here goes again if nothing is cached in it
    try:
        fd, tmp = temporary_beside(path)
    except OSError as e:
        _remove_if_empty(path.parent, created)
        raise DataError(f"cannot write the frame cache in {path.parent} ({e}); {where}") from None
    per_chunk = max(1, _CHUNK_BYTES // (timesteps * 2 * 128 * 128 * 4))
    try:
        with os.fdopen(fd, "wb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(f, header)
            for start in range(0, len(recordings), per_chunk):
                chunk = recordings[start : start + per_chunk]
                frames = np.stack([integrate(read_aedat(r.path), timesteps, split) for r in chunk])
                f.write(resize(frames, side, kernel).astype("<f4", copy=False).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        _remove_if_empty(path.parent, created)
        raise DataError(f"cannot write the frame cache {path} ({e}); {where}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        _remove_if_empty(path.parent, created)
        raise


def _remove_if_empty(folder: Path, created: bool) -> None:
    """Take back a cache folder this build created, when the build failed before anything was cached."""
    if created:
        with contextlib.suppress(OSError):  # not empty, or already gone: leave it
            folder.rmdir()
