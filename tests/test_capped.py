"""A capped evaluation (``train.max_eval_batches``) scores a fixed, class-balanced subset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imloss_cli.cli.app import app
from imloss_cli.data import build_datasets
from imloss_cli.data.bundle import TensorPairs
from imloss_cli.data.capped import balanced_shares, capped_subset, labels_of
from imloss_cli.recipe import DataConfig
from imloss_cli.registry import Registry

runner = CliRunner()


def test_shares_are_as_even_as_the_class_sizes_allow() -> None:
    rng = np.random.default_rng(0)
    shares = balanced_shares(np.array([5, 100, 100, 100]), 65, rng)
    assert shares[0] == 5 and sorted(shares[1:].tolist()) == [20, 20, 20]  # the small class gives up what it lacks
    shares = balanced_shares(np.array([50, 50, 50]), 10, rng)
    assert shares.sum() == 10 and sorted(shares.tolist()) == [3, 3, 4]
    assert balanced_shares(np.array([3, 4]), 100, rng).tolist() == [3, 4]  # a cap above the set: everything


def test_the_subset_is_a_function_of_the_seed_and_balanced_by_class() -> None:
    import torch

    y = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)  # stored class by class
    data = TensorPairs(torch.zeros(100, 1), y)
    first, again, other = capped_subset(data, 24, seed=3), capped_subset(data, 24, seed=3), capped_subset(data, 24, 4)
    assert first is not None and other is not None
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.bincount(y.numpy()[first]).tolist() == [8, 8, 8]
    assert list(first) == sorted(first) and len(set(first.tolist())) == 24
    assert capped_subset(data, 100, seed=3) is None and capped_subset(data, None, seed=3) is None


def _same_image_tree(root: Path, per_class: int) -> None:
    """Two classes whose every image is the same picture: a network can only give them one class."""
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for split, n in (("train", 4), ("test", per_class)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_labels_are_read_without_decoding_images(tmp_path: Path) -> None:
    _same_image_tree(tmp_path, 3)
    bundle = build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=8, val_fraction=0.5))
    assert labels_of(bundle.test).tolist() == [0, 0, 0, 1, 1, 1]
    assert bundle.val is not None and sorted(labels_of(bundle.val).tolist()) == [0, 0, 1, 1]


@pytest.mark.slow
def test_a_cap_of_two_batches_on_a_tree_stored_class_by_class_scores_exactly_half(workdir: Path) -> None:
    _same_image_tree(workdir / "tree", per_class=40)
    db = str(workdir / "r.db")
    args = ["--set", "data.dataset=imagefolder", "--set", f"data.root={workdir / 'tree'}", "--set", "data.image_size=8",
            "--set", "model.arch=convnet3", "--set", "model.timesteps=2", "--set", "data.eval_batch_size=8",
            "--set", "train.max_eval_batches=2", "--set", "train.epochs=2", "--set", "train.seed=0"]  # fmt: skip
    result = runner.invoke(app, ["train", *args, "--registry", db])
    assert result.exit_code == 0, result.output
    with Registry(db) as reg:
        (run,) = reg.list_runs()
        m = reg.epoch_metrics([run.id]).pivot(index="epoch", columns="name", values="value")
    assert m["test_acc"].tolist() == [0.5, 0.5]  # the first two batches in stored order would be 0 or 1
    assert m["test_images"].tolist() == [16.0, 16.0] and m["test_images_total"].tolist() == [80.0, 80.0]
    shown = runner.invoke(app, ["show", run.id, "--registry", db])
    assert shown.exit_code == 0 and "test_acc on 16 of 80 images" in shown.stdout
    reports = {fmt: runner.invoke(app, ["report", "--format", fmt, "--registry", db]) for fmt in
               ("markdown", "latex", "html", "csv", "json")}  # fmt: skip
    for fmt in ("markdown", "latex", "html"):
        text = reports[fmt].stdout.replace("\\_", "_")  # LaTeX escapes the underscores
        assert "50.00 (n = 1: no interval) (test_acc on 16 of 80 images)" in text, fmt
        assert "scored test_acc on a fixed, class-balanced subset (train.max_eval_batches)" in text, fmt
    assert "scored_images,scored_images_total" in reports["csv"].stdout
    row = json.loads(reports["json"].stdout)["rows"][0]
    assert (row["scored_images"], row["scored_images_total"]) == (16, 80)
