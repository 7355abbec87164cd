"""Event frames: a recording cut into T frames of per-pixel event counts, one channel per polarity.

SpikingJelly's ``integrate_events_by_fixed_frames_number``, for N events t_0..t_{N-1} and T frames:

    number:  frame j holds events [j * floor(N / T), (j + 1) * floor(N / T)), the last one up to N
    time:    dt = floor((t_{N-1} - t_0) / T) (at least 1 us); frame j holds the events with
             t_0 + j * dt <= t < t_0 + (j + 1) * dt, the last one every event from t_0 + (T-1) * dt on

(``time`` takes the events in time order: a recording whose timestamps go back is sorted first, so
every event lands in the frame of its own timestamp.)

Frame j is then counts[j, p, y, x] = #events of frame j at column x, row y, channel p (the
orientation of ``aedat.decode_dvs128``). Counting is one ``np.bincount`` per frame over the raw
15-bit addresses, then a fixed permutation puts the bins in [p, y, x] order: no loop per event.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from imloss_cli.data.aedat import ADDRESS_MASK, SENSOR_SIDE, EventWords, decode_dvs128

Split = Literal["number", "time"]
_BINS = ADDRESS_MASK + 1  # 2 * 128 * 128: every (polarity, x, y) an address can name


def _address_order() -> np.ndarray:
    """order[(p * 128 + y) * 128 + x] = the raw address that decodes to channel p, row y, column x."""
    every = np.arange(_BINS, dtype=np.uint32)
    ev = decode_dvs128(EventWords(addresses=every, timestamps=np.zeros_like(every)))
    order = np.empty(_BINS, dtype=np.int64)
    p, y, x = (v.astype(np.int64) for v in (ev.p, ev.y, ev.x))
    order[(p * SENSOR_SIDE + y) * SENSOR_SIDE + x] = every
    return order


_ORDER = _address_order()


def frame_bounds(words: EventWords, timesteps: int, split: Split) -> np.ndarray:
    """Event index bounds of the frames: frame j holds events [bounds[j], bounds[j + 1]).

    ``time`` needs the timestamps in non-decreasing order (``integrate`` sorts them when they are not).
    """
    n = len(words)
    if split == "number":
        bounds = np.arange(timesteps + 1, dtype=np.int64) * (n // timesteps)
    else:
        t = words.timestamps
        t0 = int(t[0])
        dt = max((int(t[-1]) - t0) // timesteps, 1)
        edges = t0 + dt * np.arange(1, timesteps, dtype=np.int64)
        bounds = np.concatenate([[0], np.searchsorted(t, edges, side="left"), [n]]).astype(np.int64)
    bounds[-1] = n
    return bounds


def integrate(words: EventWords, timesteps: int, split: Split) -> np.ndarray:
    """The T frames of one recording: float32 counts [T, 2, 128, 128] (see the module docstring)."""
    t = words.timestamps
    if split == "time" and np.any(t[1:] < t[:-1]):
        order = np.argsort(t, kind="stable")
        words = EventWords(addresses=words.addresses[order], timestamps=t[order])
    bounds = frame_bounds(words, timesteps, split)
    addresses = (words.addresses & ADDRESS_MASK).astype(np.intp)
    frames = np.empty((timesteps, _BINS), dtype=np.float32)
    for j in range(timesteps):  # T bincounts over contiguous slices
        frames[j] = np.bincount(addresses[bounds[j] : bounds[j + 1]], minlength=_BINS)[_ORDER]
    return frames.reshape(timesteps, 2, SENSOR_SIDE, SENSOR_SIDE)


RESIZE_KERNELS = ("nearest", "bilinear")
"""How event frames are resized: ``data.resize``."""


def resize(frames: np.ndarray, side: int, kernel: str) -> np.ndarray:
    """Frames [..., 128, 128] resized to [..., side, side] (float32).

    "nearest": each output pixel is one input pixel (PyTorch's legacy nearest, pixel
    floor(i * 128 / side)), so frames keep whole event counts; it is the authors' code's
    ``torchvision.transforms.Resize((48, 48), interpolation=NEAREST)`` on a tensor, which calls
    ``F.interpolate(mode="nearest")`` without antialiasing. "bilinear": bilinear with antialiasing
    (PIL's bilinear), a downscaled pixel the weighted mean of the counts it covers (fractions).
    ``side == 128`` keeps the counts with either.
    """
    if kernel not in RESIZE_KERNELS:
        raise ValueError(f"resize kernel must be one of {', '.join(RESIZE_KERNELS)}, got {kernel!r}")
    if side == frames.shape[-1]:
        return frames.astype(np.float32, copy=False)
    x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
    lead = x.shape[:-2]
    x = x.reshape(1, -1, *x.shape[-2:])  # interpolate takes [N, C, H, W]; every frame is a channel
    if kernel == "nearest":
        y = F.interpolate(x, size=(side, side), mode="nearest")
    else:
        y = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return y.reshape(*lead, side, side).numpy()
