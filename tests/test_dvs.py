"""CIFAR10-DVS: AEDAT 2.0 files written here in the real binary format, decoded, framed, cached, split."""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from imloss_cli.data import CIFAR10DVS_CLASSES, DataError, build_datasets, test_loader, train_loader
from imloss_cli.data import framecache as framecache_mod
from imloss_cli.data.aedat import decode_dvs128, read_aedat
from imloss_cli.data.dvs import ROLL_PIXELS, split_per_class
from imloss_cli.data.frames import integrate, resize
from imloss_cli.recipe import DataConfig

# The header jAER writes in front of a CIFAR10-DVS recording.
HEADER = (
    b"#!AER-DAT2.0\r\n"
    b"# This is a raw AE data file - do not edit\r\n"
    b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"
    b"# Timestamps tick is 1 us\r\n"
    b"# created Thu Dec 15 10:21:40 CST 2016\r\n"
)


def write_aedat(path: Path, x_raw, y_raw, polarity, t, header: bytes = HEADER) -> None:
    """Events as a DVS128 writes them: a = y << 8 | x << 1 | polarity, then big-endian (a, t) pairs."""
    a = (np.asarray(y_raw, np.uint32) << 8) | (np.asarray(x_raw, np.uint32) << 1) | np.asarray(polarity, np.uint32)
    words = np.empty(2 * len(a), dtype=">u4")
    words[0::2], words[1::2] = a, np.asarray(t, np.uint32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + words.tobytes())


def write_frame_events(path: Path, events: list[tuple[int, int, int, int]]) -> None:
    """(t, x, y, p) given in frame orientation, written as the sensor's raw (x, y, polarity)."""
    t, x, y, p = (np.array(v) for v in zip(*events))
    write_aedat(path, x_raw=127 - y, y_raw=127 - x, polarity=1 - p, t=t)


def random_events(rng: np.random.Generator, n: int, duration_us: int = 1_300_000) -> dict[str, np.ndarray]:
    return {
        "x_raw": rng.integers(0, 128, n),
        "y_raw": rng.integers(0, 128, n),
        "polarity": rng.integers(0, 2, n),
        "t": np.sort(rng.integers(0, duration_us, n)) + 5_000_000,
    }


def write_cifar10dvs(root: Path, per_class: int = 4, events: tuple[int, int] = (150, 300), seed: int = 0) -> None:
    """The release's tree: root/<class>/cifar10_<class>_<i>.aedat, random events per file."""
    rng = np.random.default_rng(seed)
    for name in CIFAR10DVS_CLASSES:
        for i in range(per_class):
            write_aedat(root / name / f"cifar10_{name}_{i}.aedat", **random_events(rng, int(rng.integers(*events))))


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="cifar10dvs", root=str(root), image_size=16, batch_size=8, **kw)


def _caches(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npy"))


# --- decoding ------------------------------------------------------------------------------------


def test_decoded_events_are_exactly_the_events_written(tmp_path: Path) -> None:
    ev = random_events(np.random.default_rng(1), 5000)
    path = tmp_path / "r.aedat"
    write_aedat(path, **ev)
    words = read_aedat(path)
    assert len(words) == 5000
    expected_a = (ev["y_raw"] << 8) | (ev["x_raw"] << 1) | ev["polarity"]
    assert np.array_equal(words.addresses, expected_a) and np.array_equal(words.timestamps, ev["t"])
    decoded = decode_dvs128(words)
    # SpikingJelly's CIFAR10DVS orientation: x = 127 - y_raw, y = 127 - x_raw, p = 1 - polarity
    assert np.array_equal(decoded.t, ev["t"])
    assert np.array_equal(decoded.x, 127 - ev["y_raw"])
    assert np.array_equal(decoded.y, 127 - ev["x_raw"])
    assert np.array_equal(decoded.p, 1 - ev["polarity"])


@pytest.mark.parametrize(
    "damage, message",
    [
        ("empty", "empty file (0 bytes)"),
        ("truncated", "truncated (3997 bytes after the header is not a whole number of 8-byte events)"),
        ("not-aedat", "not an AEDAT file (it does not start with '#!AER-DAT')"),
        ("header-only", "no events after the header"),
        ("aedat3", "AEDAT '3.1'; only AEDAT 2.0"),
        ("no-newline", "truncated inside its header"),
    ],
)
def test_a_corrupt_file_is_named_with_what_is_wrong(tmp_path: Path, damage: str, message: str) -> None:
    path = tmp_path / "airplane" / "cifar10_airplane_7.aedat"
    write_aedat(path, **random_events(np.random.default_rng(0), 500))
    data = path.read_bytes()
    body = data[len(HEADER) :]
    bad = {
        "empty": b"",
        "truncated": data[:-3],
        "not-aedat": b"\x89PNG\r\n\x1a\n" + body,
        "header-only": HEADER,
        "aedat3": b"#!AER-DAT3.1\r\n" + HEADER[14:] + body,
        "no-newline": b"#!AER-DAT2.0",
    }[damage]
    path.write_bytes(bad)
    with pytest.raises(DataError) as err:
        read_aedat(path)
    assert str(err.value).startswith(f"{path}: {message}"), err.value


# --- frames --------------------------------------------------------------------------------------

# (t, x, y, p) in frame orientation; 7 events, T = 3.
HAND_EVENTS = [(0, 5, 6, 0), (10, 5, 6, 0), (20, 7, 1, 1), (35, 5, 6, 0), (50, 0, 127, 1), (61, 7, 1, 1), (90, 5, 6, 1)]
HAND_COUNTS = {
    # number: floor(7 / 3) = 2 events a frame, the last takes the rest: [0, 2), [2, 4), [4, 7)
    "number": {(0, 0, 6, 5): 2, (1, 1, 1, 7): 1, (1, 0, 6, 5): 1, (2, 1, 127, 0): 1, (2, 1, 1, 7): 1, (2, 1, 6, 5): 1},
    # time: dt = floor(90 / 3) = 30 us: [0, 30), [30, 60), [60, end]
    "time": {(0, 0, 6, 5): 2, (0, 1, 1, 7): 1, (1, 0, 6, 5): 1, (1, 1, 127, 0): 1, (2, 1, 1, 7): 1, (2, 1, 6, 5): 1},
}


@pytest.mark.parametrize("split", ["number", "time"])
def test_frames_equal_hand_counts(tmp_path: Path, split: str) -> None:
    path = tmp_path / "hand.aedat"
    write_frame_events(path, HAND_EVENTS)
    frames = integrate(read_aedat(path), 3, split)
    expected = np.zeros((3, 2, 128, 128), np.float32)
    for (j, p, y, x), n in HAND_COUNTS[split].items():
        expected[j, p, y, x] = n
    assert frames.dtype == np.float32 and frames.shape == (3, 2, 128, 128)
    assert np.array_equal(frames, expected)


def _loop_reference(ev: dict[str, np.ndarray], T: int, split: str) -> np.ndarray:
    """SpikingJelly's rules, one event at a time."""
    x, y, p, t = 127 - ev["y_raw"], 127 - ev["x_raw"], 1 - ev["polarity"], ev["t"]
    n = len(t)
    out = np.zeros((T, 2, 128, 128), np.float32)
    dt = max((int(t.max()) - int(t.min())) // T, 1)
    for i in range(n):
        j = min(i // (n // T), T - 1) if split == "number" else min((int(t[i]) - int(t.min())) // dt, T - 1)
        out[j, p[i], y[i], x[i]] += 1
    return out


@pytest.mark.parametrize("split", ["number", "time"])
def test_frames_equal_an_event_by_event_count(tmp_path: Path, split: str) -> None:
    ev = random_events(np.random.default_rng(2), 2003, duration_us=9_999)
    path = tmp_path / "r.aedat"
    write_aedat(path, **ev)
    frames = integrate(read_aedat(path), 4, split)
    assert frames.sum() == 2003
    assert np.array_equal(frames, _loop_reference(ev, 4, split))


def test_time_split_counts_out_of_order_events_by_their_own_timestamp(tmp_path: Path) -> None:
    ev = random_events(np.random.default_rng(3), 500, duration_us=4_000)
    shuffled = {k: v[::-1].copy() for k, v in ev.items()}  # timestamps now go backwards
    write_aedat(tmp_path / "r.aedat", **shuffled)
    frames = integrate(read_aedat(tmp_path / "r.aedat"), 5, "time")
    assert np.array_equal(frames, _loop_reference(ev, 5, "time"))


def test_resize_keeps_uniform_frames_and_full_size_counts() -> None:
    frames = np.full((3, 2, 128, 128), 2.5, np.float32)
    for kernel in ("nearest", "bilinear"):
        small = resize(frames, 48, kernel)
        assert small.shape == (3, 2, 48, 48) and small.dtype == np.float32
        np.testing.assert_allclose(small, 2.5, rtol=1e-6)
        counts = np.random.default_rng(0).poisson(1.0, (2, 2, 128, 128)).astype(np.float32)
        assert np.array_equal(resize(counts, 128, kernel), counts)


def test_nearest_resize_equals_the_authors_torchvision_resize_and_keeps_whole_counts() -> None:
    from torchvision.transforms import InterpolationMode, Resize

    frames = np.zeros((2, 2, 128, 128), np.float32)
    rng = np.random.default_rng(1)
    for _ in range(40):  # single hot pixels: nearest picks some, bilinear smears them into fractions
        t, p, y, x = rng.integers(0, 2), rng.integers(0, 2), rng.integers(0, 128), rng.integers(0, 128)
        frames[t, p, y, x] = float(rng.integers(1, 9))
    ours = resize(frames, 48, "nearest")
    theirs = Resize((48, 48), interpolation=InterpolationMode.NEAREST)(torch.from_numpy(frames)).numpy()
    assert np.array_equal(ours, theirs)
    # pixel floor(i * 128 / 48) of each row and column: whole counts, by hand
    rows = [i * 128 // 48 for i in range(48)]
    assert np.array_equal(ours, frames[..., rows, :][..., :, rows])
    assert np.array_equal(ours, np.round(ours)) and ours.max() > 0
    smeared = resize(frames, 48, "bilinear")
    assert not np.array_equal(smeared, np.round(smeared))  # bilinear averages counts into fractions


# --- the dataset: tree, cache, split -------------------------------------------------------------


def _recording_files(root: Path) -> list[Path]:
    """The recordings in cache order: class by class, names sorted."""
    return [p for name in CIFAR10DVS_CLASSES for p in sorted((root / name).glob("*.aedat"))]


def test_bundle_frames_equal_the_recordings_integrated_and_resized(tmp_path: Path) -> None:
    write_cifar10dvs(tmp_path)
    bundle = build_datasets(_cfg(tmp_path, test_fraction=0.25), timesteps=3)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 2, 16)
    assert bundle.classes == CIFAR10DVS_CLASSES
    assert (len(bundle.train), len(bundle.test)) == (30, 10)  # 1 of 4 per class held out
    files = _recording_files(tmp_path)
    for ds in (bundle.train, bundle.test):
        for i in (0, len(ds) - 1):
            x, y = ds[i]
            rec = files[ds.rows[i]]
            assert y == CIFAR10DVS_CLASSES.index(rec.parent.name)
            assert x.dtype == torch.float32 and x.shape == (3, 2, 16, 16)
            assert torch.equal(x, torch.from_numpy(resize(integrate(read_aedat(rec), 3, "number"), 16, "nearest")))
            assert torch.equal(x, x.round())  # the nearest kernel (the default) keeps whole event counts
    (cache,) = (tmp_path / "imloss-frames").iterdir()
    assert cache.name.startswith("cifar10dvs-T3-number-16px-nearest-") and cache.suffix == ".npy"


def test_cache_is_reused_and_rebuilt_when_t_split_size_or_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cache = tmp_path / "dvs", tmp_path / "cache"
    write_cifar10dvs(root, per_class=2)
    files = _recording_files(root)
    calls: list[int] = []
    real = framecache_mod.integrate

    def counting(words, timesteps, split):
        calls.append(timesteps)
        return real(words, timesteps, split)

    monkeypatch.setattr(framecache_mod, "integrate", counting)
    base = _cfg(root, cache_dir=str(cache))

    def first_test_sample(cfg: DataConfig, T: int) -> tuple[torch.Tensor, Path]:
        bundle = build_datasets(cfg, timesteps=T)
        return bundle.test[0][0], files[bundle.test.rows[0]]

    x, _ = first_test_sample(base, 2)
    assert len(calls) == 20 and len(_caches(cache)) == 1
    assert torch.equal(first_test_sample(base, 2)[0], x) and len(calls) == 20  # reused: nothing integrated
    settings = [
        (base, 3),
        (base.model_copy(update={"frames_split": "time"}), 2),
        (base.model_copy(update={"image_size": 24}), 2),
        (base.model_copy(update={"resize": "bilinear"}), 2),  # another kernel: its own cache
    ]
    for n, (cfg, T) in enumerate(settings, start=2):
        got, rec = first_test_sample(cfg, T)
        assert len(calls) == 20 * n and len(_caches(cache)) == n
        # what is read is the new setting's frames, not a stale cache's
        fresh = resize(integrate(read_aedat(rec), T, cfg.frames_split), cfg.image_size, cfg.resize)
        assert torch.equal(got, torch.from_numpy(fresh))
    # a recording that changes size (an event appended) invalidates the cache
    changed = root / "cat" / "cifar10_cat_1.aedat"
    changed.write_bytes(changed.read_bytes() + np.array([1, 99_999_999], ">u4").tobytes())
    first_test_sample(base, 2)
    assert len(calls) == 20 * 6 and len(_caches(cache)) == 6
    assert not list(cache.glob(".*"))  # no temporary file left behind


def test_a_corrupt_recording_fails_the_build_and_leaves_no_cache(tmp_path: Path) -> None:
    write_cifar10dvs(tmp_path, per_class=2)
    bad = tmp_path / "truck" / "cifar10_truck_1.aedat"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(DataError, match=f"^{bad}: truncated"):
        build_datasets(_cfg(tmp_path), timesteps=2)
    assert not (tmp_path / "imloss-frames").exists()  # no cache, and not even an empty folder


def test_an_unwritable_cache_folder_says_to_set_cache_dir(tmp_path: Path) -> None:
    write_cifar10dvs(tmp_path / "dvs", per_class=2)
    (tmp_path / "afile").write_text("a file where the cache folder would go")
    with pytest.raises(DataError, match=r"cannot write the frame cache in .*afile.*set data.cache_dir"):
        build_datasets(_cfg(tmp_path / "dvs", cache_dir=str(tmp_path / "afile")), timesteps=2)


def test_split_is_disjoint_stratified_and_seed_stable(tmp_path: Path) -> None:
    write_cifar10dvs(tmp_path / "a", per_class=20, events=(20, 40))
    cfg = _cfg(tmp_path / "a", test_fraction=0.1, split_seed=7)
    bundle = build_datasets(cfg, timesteps=2)
    train, test = set(bundle.train.rows.tolist()), set(bundle.test.rows.tolist())
    assert not train & test and train | test == set(range(200))
    assert np.array_equal(np.bincount(bundle.test.labels, minlength=10), [2] * 10)
    assert np.array_equal(np.bincount(bundle.train.labels, minlength=10), [18] * 10)
    # the same recipe elsewhere: another root, files created in another order -> the same test files
    other = tmp_path / "b"
    for src in sorted((tmp_path / "a").glob("*/*.aedat"), reverse=True):
        (other / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, other / src.parent.name / src.name)
    again = build_datasets(cfg.model_copy(update={"root": str(other)}), timesteps=2)
    assert np.array_equal(again.test.rows, bundle.test.rows)
    # another seed draws another test set, with the same per-class counts
    reseeded = build_datasets(cfg.model_copy(update={"split_seed": 8}), timesteps=2)
    assert not np.array_equal(reseeded.test.rows, bundle.test.rows)
    assert np.array_equal(np.bincount(reseeded.test.labels, minlength=10), [2] * 10)


def test_split_rounds_per_class_and_keeps_one_of_each_side() -> None:
    from imloss_cli.data.framecache import Recording

    recs = [
        Recording(Path(f"{c}/{i}.aedat"), f"{c}/{i}.aedat", 1) for c, n in (("a", 1001), ("b", 3)) for i in range(n)
    ]
    labels = np.array([0] * 1001 + [1] * 3)
    _, test = split_per_class(recs, labels, 0.1, 0)
    assert np.bincount(labels[test]).tolist() == [100, 1]  # round(100.1) and at least 1
    _, test_big = split_per_class(recs, labels, 0.9, 0)
    assert np.bincount(labels[test_big]).tolist() == [901, 2]  # at most n - 1: training keeps one
    assert np.array_equal(split_per_class(recs, labels, 0.1, 0)[1], test)


def test_missing_root_class_folder_or_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"cifar10dvs root {tmp_path / 'nowhere'} not found; it must hold one folder"):
        build_datasets(_cfg(tmp_path / "nowhere"), timesteps=2)
    write_cifar10dvs(tmp_path / "dvs", per_class=2)
    shutil.rmtree(tmp_path / "dvs" / "frog")
    with pytest.raises(DataError, match=f"^{tmp_path / 'dvs'}: class folder frog missing"):
        build_datasets(_cfg(tmp_path / "dvs"), timesteps=2)
    (tmp_path / "dvs" / "frog").mkdir()
    (tmp_path / "dvs" / "frog" / "notes.txt").write_text("not a recording")
    with pytest.raises(DataError, match=f"^{tmp_path / 'dvs' / 'frog'}: 0 .aedat files; a train/test split"):
        build_datasets(_cfg(tmp_path / "dvs"), timesteps=2)


@pytest.mark.parametrize(
    "update, message",
    [
        (
            {"augment": "crop_flip"},
            "data.augment = 'crop_flip' is for RGB images; cifar10dvs takes 'none' or 'flip_roll'",
        ),
        ({"mean": (0.1, 0.1, 0.1)}, "data.mean / data.std do not apply to cifar10dvs"),
    ],
)
def test_settings_that_do_not_fit_event_data_are_refused(tmp_path: Path, update: dict, message: str) -> None:
    with pytest.raises(DataError, match=re.escape(message)):
        build_datasets(_cfg(tmp_path, **update), timesteps=2)


def test_flip_roll_is_refused_on_image_datasets(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape("data.augment = 'flip_roll' is for event frames")):
        build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path), augment="flip_roll"))


# --- loaders and augmentation --------------------------------------------------------------------


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _is_flip_roll_of(aug: torch.Tensor, plain: torch.Tensor) -> bool:
    r = range(-ROLL_PIXELS, ROLL_PIXELS + 1)
    return any(
        torch.equal(aug, torch.roll(plain.flip(-1) if flip else plain, (dy, dx), (-2, -1)))
        for flip in (False, True)
        for dy in r
        for dx in r
    )


def test_train_batches_are_batch_first_sequences_seeded_per_epoch_and_augmented_alike_over_t(
    tmp_path: Path,
) -> None:
    write_cifar10dvs(tmp_path, per_class=3, events=(400, 600))
    cfg = _cfg(tmp_path, augment="flip_roll", test_fraction=0.34)
    bundle = build_datasets(cfg, timesteps=3)
    first = _batches(train_loader(bundle, cfg, seed=3, epoch=2))
    x, y = first[0]
    assert x.shape == (8, 3, 2, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    torch.manual_seed(99)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, _batches(train_loader(bundle, cfg, seed=3, epoch=2))))
    assert not torch.equal(first[0][0], _batches(train_loader(bundle, cfg, seed=3, epoch=3))[0][0])
    plain_cfg = cfg.model_copy(update={"augment": "none"})
    plain = _batches(train_loader(build_datasets(plain_cfg, timesteps=3), plain_cfg, seed=3, epoch=2))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, plain))  # same order
    augmented = [(a, p) for xa, xp in zip(first, plain) for a, p in zip(xa[0], xp[0])]
    assert any(not torch.equal(a, p) for a, p in augmented)
    assert all(_is_flip_roll_of(a, p) for a, p in augmented)  # one flip and roll for all T frames
    test_x, test_y = next(iter(test_loader(bundle, cfg)))
    assert test_x.shape[1:] == (3, 2, 16, 16) and torch.equal(test_y, torch.from_numpy(bundle.test.labels))


def test_workers_receive_no_copy_of_the_cache_and_give_the_same_batches(tmp_path: Path) -> None:
    write_cifar10dvs(tmp_path, per_class=2)
    cfg = _cfg(tmp_path, augment="flip_roll")
    bundle = build_datasets(cfg, timesteps=2)
    twin = pickle.loads(pickle.dumps(bundle.train))
    assert twin._frames is None and len(pickle.dumps(bundle.train)) < 4096
    assert torch.equal(twin[(3, 11)][0], bundle.train[(3, 11)][0])
    serial = _batches(train_loader(bundle, cfg, seed=1, epoch=1))
    workers = _batches(train_loader(bundle, cfg.model_copy(update={"num_workers": 2}), seed=1, epoch=1))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(serial, workers))
