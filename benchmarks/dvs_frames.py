"""How fast CIFAR10-DVS is prepared: events decoded per second, and the time to build the frame cache.

Writes N recordings in the release's format (jAER AEDAT 2.0 header, big-endian (address, timestamp)
pairs, random DVS128 events, 10 class folders) and measures, on those files:

  decode   read + decode every file to (t, x, y, p)             (aedat.read_aedat, decode_dvs128)
  frame    read + integrate every file into T frames            (frames.integrate)
  cache    build_datasets(cifar10dvs) with no cache: read, integrate, resize, write, split, open

then scales the times linearly to the release's 10,000 recordings. Each step is timed ``--repeat``
times (the cache built from nothing each time) and the fastest is kept, as the machine may be shared.
The files were just written (and synced), so they are read from the page cache: on a cold disk add
the time to read them once.

``--spikingjelly`` (SpikingJelly 2.0 importable) adds two rows: its CIFAR10-DVS reading plus
``integrate_events_by_fixed_frames_number`` on the same files, with its frames checked equal to
ours; and its whole preparation (``CIFAR10DVS(root, data_type="frame", ...)`` on the extracted
tree: events to npz, then frames to npz) on the first ``--sj-files`` recordings, as it takes ~0.5 s
a file.

Example:
    python benchmarks/dvs_frames.py --files 200 --timesteps 10 --image-size 48
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, when imloss is not installed

import numpy as np

from imloss_cli.data import CIFAR10DVS_CLASSES, build_datasets
from imloss_cli.data.aedat import decode_dvs128, read_aedat
from imloss_cli.data.frames import integrate
from imloss_cli.recipe import DataConfig

RELEASE_FILES = 10_000
HEADER = b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n# Timestamps tick is 1 us\r\n"


def write_recordings(root: Path, files: int, events: tuple[int, int], seed: int) -> int:
    """``files`` recordings spread over the 10 class folders; returns the number of events written."""
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(files):
        name = CIFAR10DVS_CLASSES[i % 10]
        n = int(rng.integers(events[0], events[1] + 1))
        a = (rng.integers(0, 128, n, dtype=np.uint32) << 8) | (rng.integers(0, 128, n, dtype=np.uint32) << 1)
        a |= rng.integers(0, 2, n, dtype=np.uint32)
        words = np.empty(2 * n, dtype=">u4")
        words[0::2] = a
        words[1::2] = np.sort(rng.integers(0, 1_300_000, n, dtype=np.uint32))  # a recording is ~1.3 s
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"cifar10_{name}_{i // 10}.aedat").write_bytes(HEADER + words.tobytes())
        total += n
    return total


def _timed(step, repeat: int, before=None) -> float:
    """The fastest of ``repeat`` runs of ``step`` (``before`` runs untimed ahead of each)."""
    best = float("inf")
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def _spikingjelly(paths: list[Path], timesteps: int, split: str) -> float:
    """Seconds for SpikingJelly's reading + framing of ``paths``; raises if a frame differs from ours."""
    import spikingjelly.datasets.cifar10_dvs as sj_dvs
    from spikingjelly.datasets.utils import integrate_events_by_fixed_frames_number

    load = getattr(sj_dvs.CIFAR10DVS, "load_origin_data", None) or sj_dvs._load_origin_data
    seconds = 0.0
    for path in paths:
        start = time.perf_counter()
        frames = integrate_events_by_fixed_frames_number(load(str(path)), split, timesteps, 128, 128)
        seconds += time.perf_counter() - start
        if not np.array_equal(frames, integrate(read_aedat(path), timesteps, split)):
            raise SystemExit(f"SpikingJelly's frames of {path} differ from imloss's")
    return seconds


def _spikingjelly_preparation(paths: list[Path], work: Path, timesteps: int, split: str) -> float:
    """Seconds for SpikingJelly's own preparation of frames from an extracted tree of ``paths``."""
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS

    with contextlib.suppress(ImportError):  # its progress log would drown the table
        from loguru import logger

        logger.remove()

    class Offline(CIFAR10DVS):  # the files are here already: nothing to download or check
        @classmethod
        def resource_url_md5(cls) -> list:
            return []

    for path in paths:
        target = work / "extract" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)
    (work / "download").mkdir()
    start = time.perf_counter()
    Offline(str(work), data_type="frame", frames_number=timesteps, split_by=split)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200, help="recordings to generate (the release has 10,000)")
    parser.add_argument("--events", type=int, nargs=2, default=(200_000, 400_000), metavar=("MIN", "MAX"),
                        help="events per recording, drawn uniformly")  # fmt: skip
    parser.add_argument("--timesteps", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--split", choices=("number", "time"), default="number")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the files (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=2, help="time each step this often, keep the fastest")
    parser.add_argument("--spikingjelly", action="store_true", help="also time SpikingJelly and compare frames")
    parser.add_argument("--sj-files", type=int, default=20, help="recordings for SpikingJelly's whole preparation")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="dvs-bench-", dir=args.dir))
    try:
        gen = time.perf_counter()
        events = write_recordings(root, args.files, tuple(args.events), args.seed)
        gen = time.perf_counter() - gen
        paths = sorted(root.glob("*/*.aedat"))
        size = sum(p.stat().st_size for p in paths)
        print(f"{args.files} recordings, {events:,} events ({events / args.files:,.0f} a file), "
              f"{size / 2**20:,.0f} MiB, written in {gen:.1f} s")  # fmt: skip
        os.sync()  # the files' write-back would otherwise run during the timings
        decode = _timed(lambda: [decode_dvs128(read_aedat(p)) for p in paths], args.repeat)
        frame = _timed(lambda: [integrate(read_aedat(p), args.timesteps, args.split) for p in paths], args.repeat)
        cfg = DataConfig(dataset="cifar10dvs", root=str(root), image_size=args.image_size,
                         frames_split=args.split, test_fraction=0.1)  # fmt: skip
        cache = _timed(
            lambda: build_datasets(cfg, timesteps=args.timesteps),
            args.repeat,
            before=lambda: shutil.rmtree(root / "imloss-frames", ignore_errors=True),
        )
        scale = RELEASE_FILES / args.files
        rows: list = [("decode (t, x, y, p)", decode), (f"frame (T={args.timesteps}, {args.split})", frame),
                (f"cache build ({args.image_size} px, written)", cache)]  # fmt: skip
        rows = [(name, seconds, args.files, events) for name, seconds in rows]
        if args.spikingjelly:
            rows.append(("SpikingJelly read + frame", _spikingjelly(paths, args.timesteps, args.split), args.files,
                         events))  # fmt: skip
            subset = paths[: args.sj_files]
            sj_events = sum((p.stat().st_size - len(HEADER)) // 8 for p in subset)
            sj = _spikingjelly_preparation(subset, root / "spikingjelly", args.timesteps, args.split)
            rows.append((f"SpikingJelly preparation ({len(subset)} files, npz)", sj, len(subset), sj_events))
        print("\n| step | seconds | events/s | per file | the release (10,000 files) |")
        print("|---|---|---|---|---|")
        for name, seconds, files, n in rows:
            print(f"| {name} | {seconds:.2f} | {n / seconds / 1e6:,.1f} M | {seconds / files * 1e3:.1f} ms "
                  f"| {seconds * RELEASE_FILES / files:,.0f} s |")  # fmt: skip
        cached = sum(p.stat().st_size for p in (root / "imloss-frames").glob("*.npy"))
        print(f"\nframe cache: {cached / 2**20:,.1f} MiB for {args.files} recordings "
              f"({cached * scale / 2**30:,.2f} GiB for the release)")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
