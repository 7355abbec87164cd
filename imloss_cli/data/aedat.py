"""jAER AEDAT 2.0 recordings of a DVS128 sensor (the CIFAR10-DVS release): checks and numpy decoding.

An AEDAT 2.0 file is header lines that start with ``#`` (the first is ``#!AER-DAT2.0``), then one
8-byte record per event: a big-endian uint32 address and a big-endian uint32 timestamp in
microseconds. A DVS128 address holds the polarity in bit 0, x in bits 1-7 and y in bits 8-14:

    x_raw = (a & 0xFE) >> 1,    y_raw = (a & 0x7F00) >> 8,    polarity = a & 1

Events are read in SpikingJelly's orientation (``CIFAR10DVS`` reads the release turned, so that its
frames show the objects upright): column x = 127 - y_raw, row y = 127 - x_raw, channel p = 1 - polarity.
Everything is vectorised: the file is read once and viewed with ``np.frombuffer(..., ">u4")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imloss_cli.data.bundle import DataError

SENSOR_SIDE = 128  # DVS128: 128 x 128 pixels
ADDRESS_MASK = 0x7FFF  # the bits of an address that hold x, y and polarity
_MAGIC = b"#!AER-DAT"
_VERSION = b"2.0"
_EVENT_BYTES = 8
_REDO = "re-extract it from the release's per-class zip"


@dataclass(frozen=True)
class EventWords:
    """The records of one file as stored: addresses and timestamps (us), uint32 [N] each."""

    addresses: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.addresses)


@dataclass(frozen=True)
class Events:
    """Decoded events in frame orientation: t (us, int64); column x, row y and channel p (int16)."""

    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    p: np.ndarray


def read_aedat(path: Path) -> EventWords:
    """The event records of an AEDAT 2.0 file, checked.

    Raises:
        DataError: the file is empty, not AEDAT, another AEDAT version, truncated (a partial
            record at the end) or holds no events; the message names the file.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    start = _header_end(path, data)
    body = len(data) - start
    if body % _EVENT_BYTES:
        raise DataError(
            f"{path}: truncated ({body} bytes after the header is not a whole number of "
            f"{_EVENT_BYTES}-byte events); {_REDO}"
        )
    if body == 0:
        raise DataError(f"{path}: no events after the header; {_REDO}")
    words = np.frombuffer(data, dtype=">u4", offset=start).reshape(-1, 2)
    return EventWords(addresses=words[:, 0], timestamps=words[:, 1])


def _header_end(path: Path, data: bytes) -> int:
    """Offset of the first event: past every line that starts with '#'."""
    if not data:
        raise DataError(f"{path}: empty file (0 bytes); {_REDO}")
    if not data.startswith(_MAGIC):
        raise DataError(f"{path}: not an AEDAT file (it does not start with {_MAGIC.decode()!r}); {_REDO}")
    first = data[: data.find(b"\n")] if b"\n" in data else data
    version = first[len(_MAGIC) :].strip()
    if version != _VERSION:
        raise DataError(
            f"{path}: AEDAT {version.decode(errors='replace')!r}; only AEDAT 2.0, the format of the "
            "CIFAR10-DVS release, is read"
        )
    pos = 0
    while data.startswith(b"#", pos):
        end = data.find(b"\n", pos)
        if end < 0:
            raise DataError(f"{path}: truncated inside its header (no end of line); {_REDO}")
        pos = end + 1
    return pos


def decode_dvs128(words: EventWords) -> Events:
    """Timestamps, columns, rows and channels of DVS128 records, in SpikingJelly's orientation."""
    a = (words.addresses & ADDRESS_MASK).astype(np.int16)  # 15 bits: x, y and polarity fit an int16
    x_raw, y_raw, polarity = (a & 0xFE) >> 1, (a & 0x7F00) >> 8, a & 1
    last = SENSOR_SIDE - 1
    return Events(t=words.timestamps.astype(np.int64), x=last - y_raw, y=last - x_raw, p=1 - polarity)
