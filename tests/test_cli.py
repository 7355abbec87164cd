"""End to end through the CLI: train on digits and generated data (images and event recordings),
validate, malformed recipes."""

from __future__ import annotations

import pickle
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imloss_cli.cli.app import app
from imloss_cli.registry import Registry
from imloss_cli.snn.stats import STAT_NAMES

from .conftest import REPO
from .test_dvs import write_cifar10dvs

runner = CliRunner()


def run_cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.slow
def test_train_digits_records_what_it_prints(tiny_recipe: Path, registry_url: str, workdir: Path) -> None:
    code, out = run_cli("train", str(tiny_recipe), "--seed", "0", "--registry", registry_url)
    assert code == 0, out
    printed = re.search(r"test accuracy (\d\.\d{4})\s+run (\w+)", out)
    assert printed, out
    acc, run_id = float(printed.group(1)), printed.group(2)
    assert acc > 0.5
    assert len(re.findall(r"^epoch\s+\d/2 ", out, flags=re.M)) == 2

    reg = Registry(registry_url)
    run = reg.get_run(run_id)
    assert (run.status, run.seed, run.recipe["train"]["seed"]) == ("FINISHED", 0, 0)
    metrics = reg.epoch_metrics([run_id])
    last = metrics[(metrics.epoch == 2) & (metrics.name == "test_acc")].value.item()
    assert f"{last:.4f}" == f"{acc:.4f}"
    assert set(metrics.name) >= {"loss", "ce", "im", "train_acc", "test_acc", "k", "mean_entropy"}
    k = metrics[metrics.name == "k"].sort_values("epoch").value.tolist()
    assert k == pytest.approx([1 + 9 * (10**0.5 - 1) / 9, 10.0])  # ESG K(i) at i = 1, 2 of I = 2
    layers = reg.layer_stats([run_id], last_epoch_only=True)
    assert sorted(layers.layer.unique()) == ["body.1", "body.3", "encoder.lif"]
    assert len(layers) == 3 * len(STAT_NAMES)
    assert (workdir / "runs" / run_id / "last.pt").is_file()


@pytest.mark.slow
def test_registry_location_from_environment(tiny_recipe: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMLOSS_REGISTRY", str(workdir / "env.db"))
    code, out = run_cli("train", str(tiny_recipe), "--seed", "1", "--set", "train.epochs=1")
    assert code == 0, out
    assert len(Registry(str(workdir / "env.db")).list_runs()) == 1
    assert not (workdir / "runs" / "imloss.db").exists()


def test_validate_prints_the_resolved_recipe_with_overrides() -> None:
    code, out = run_cli(
        "validate", str(REPO / "recipes" / "cifar10.toml"), "--set", "loss.im_weight=0", "--set", "model.timesteps=4"
    )
    assert code == 0, out
    assert 'arch = "resnet19"' in out
    assert "im_weight = 0" in out
    assert "timesteps = 4" in out


MALFORMED = [
    ("[model\narch = 1\n", "TOML syntax error"),
    ("[loss]\nim_wieght = 1\n", "loss.im_wieght: unknown key; did you mean 'im_weight'?"),
    ("[optim]\nlr = 'fast'\n", "optim.lr: Input should be a valid number"),
    ("[model]\ntimesteps = 0\n", "model.timesteps: Input should be greater than or equal to 1"),
    ("[surrogate]\nk_min = 10.0\nk_max = 1.0\n", "surrogate.k_min: 10.0 must not exceed k_max (1.0)"),
    ("[model]\narch = 'resnet99'\n", "model.arch: 'resnet99' is not one of"),
    ("[data]\ndataset = 'mnist'\n", "data.dataset: 'mnist' is not one of"),
]


@pytest.mark.parametrize("text, message", MALFORMED, ids=[m[1].split(":")[0] for m in MALFORMED])
def test_malformed_recipe_exits_2_with_field_path_and_writes_nothing(
    text: str, message: str, workdir: Path, registry_url: str
) -> None:
    recipe = workdir / "bad.toml"
    recipe.write_text(text)
    for command in ("train", "validate"):
        code, out = (
            run_cli(command, str(recipe), "--registry", registry_url)
            if command == "train"
            else run_cli(command, str(recipe))
        )
        assert code == 2, out
        assert message in " ".join(out.split()), out
    assert not (workdir / "reg.db").exists()
    assert not (workdir / "runs").exists()


def test_bad_override_exits_2(tiny_recipe: Path, registry_url: str, workdir: Path) -> None:
    code, out = run_cli("train", str(tiny_recipe), "--set", "model.timesteps=0", "--registry", registry_url)
    assert code == 2
    assert "model.timesteps" in out
    assert not (workdir / "reg.db").exists()


def test_cifar10_without_data_fails_fast_naming_the_directory(workdir: Path, registry_url: str) -> None:
    start = time.perf_counter()
    code, out = run_cli(
        "train",
        str(REPO / "recipes" / "cifar10.toml"),
        "--set",
        f"data.root={workdir / 'nodata'}",
        "--registry",
        registry_url,
    )
    assert time.perf_counter() - start < 30
    assert code == 2, out
    assert str(workdir / "nodata") in " ".join(out.split()).replace(" ", "") or "nodata" in out
    assert "Traceback" not in out
    assert Registry(registry_url).list_runs() == []


def write_cifar10(root: Path, n_train: int = 40, n_test: int = 20) -> None:
    """A CIFAR-10 directory in the real pickled format, with random pixels."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n: int) -> dict[bytes, object]:
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n_train // 5)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test)))
    names = [
        n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    ]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))


def write_imagefolder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "frog"), per_class: int = 4) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cifar10", "imagefolder"])
def test_train_reads_generated_data_through_the_real_loaders(kind: str, workdir: Path, registry_url: str) -> None:
    root = workdir / "data"
    (write_cifar10 if kind == "cifar10" else write_imagefolder)(root)
    code, out = run_cli(
        "train", "--registry", registry_url, "--seed", "0",
        "--set", f"data.dataset={kind}", "--set", f"data.root={root}", "--set", "data.augment=crop_flip",
        "--set", "data.batch_size=8", "--set", "train.epochs=1", "--set", "model.timesteps=2",
    )  # fmt: skip
    assert code == 0, out
    reg = Registry(registry_url)
    (run,) = reg.list_runs()
    assert (run.status, run.recipe["data"]["dataset"]) == ("FINISHED", kind)
    m = reg.epoch_metrics([run.id])
    assert 0.0 <= m[m.name == "test_acc"].value.item() <= 1.0
    assert len(reg.layer_stats([run.id], last_epoch_only=True)) == 3 * len(STAT_NAMES)


@pytest.mark.slow
def test_train_cifar10dvs_from_generated_recordings_records_the_split_and_layer_statistics(
    workdir: Path, registry_url: str
) -> None:
    root = workdir / "dvs"
    write_cifar10dvs(root, per_class=4, events=(300, 500))
    code, out = run_cli(
        "train", str(REPO / "recipes" / "cifar10dvs.toml"), "--registry", registry_url, "--seed", "0",
        "--set", f"data.root={root}", "--set", "data.image_size=16", "--set", "data.batch_size=8",
        "--set", "data.test_fraction=0.25", "--set", "data.num_workers=0", "--set", "model.arch=convnet3",
        "--set", "model.timesteps=3", "--set", "train.epochs=2", "--set", "train.max_steps_per_epoch=2",
    )  # fmt: skip
    assert code == 0, out
    reg = Registry(registry_url)
    (run,) = reg.list_runs()
    data = run.recipe["data"]
    assert run.status == "FINISHED"
    assert (data["dataset"], data["test_fraction"], data["split_seed"], data["frames_split"]) == (
        "cifar10dvs",
        0.25,
        0,
        "number",
    )
    m = reg.epoch_metrics([run.id])
    assert sorted(m[m.name == "test_acc"].epoch.tolist()) == [1, 2]
    layers = reg.layer_stats([run.id], last_epoch_only=True)
    assert sorted(layers.layer.unique()) == ["body.1", "body.3", "encoder.lif"] and len(layers) == 3 * len(STAT_NAMES)
    assert len(list((root / "imloss-frames").glob("cifar10dvs-T3-number-16px-*.npy"))) == 1


@pytest.mark.parametrize("damage", ["class-folder-missing", "truncated-file"])
def test_cifar10dvs_data_problem_exits_2_naming_it_and_writes_nothing(
    damage: str, workdir: Path, registry_url: str
) -> None:
    root = workdir / "dvs"
    write_cifar10dvs(root, per_class=2)
    if damage == "class-folder-missing":
        (root / "horse").rename(workdir / "horse-elsewhere")
        expected = "class folder horse missing; it must hold one folder per class"
    else:
        bad = root / "ship" / "cifar10_ship_1.aedat"
        bad.write_bytes(bad.read_bytes()[:-3])
        expected = f"{bad}: truncated"
    code, out = run_cli(
        "train", str(REPO / "recipes" / "cifar10dvs.toml"), "--registry", registry_url, "--set", f"data.root={root}"
    )
    assert code == 2, out
    assert expected in " ".join(out.split())
    assert "Traceback" not in out
    assert Registry(registry_url).list_runs() == []
    assert not (workdir / "runs").exists() and not list(root.glob("imloss-frames/*"))


def test_report_names_an_unknown_format_before_opening_the_registry(workdir: Path) -> None:
    code, out = run_cli("report", "--format", "pdf", "--registry", str(workdir / "no" / "such.db"))
    assert code == 2
    assert "unknown format 'pdf'; use one of: markdown, csv, latex, json, html" in out
    assert not (workdir / "no").exists()


@pytest.mark.slow
def test_show_prints_the_spikes_and_operations_of_a_run(tiny_recipe: Path, registry_url: str) -> None:
    code, out = run_cli("train", str(tiny_recipe), "--seed", "0", "--set", "train.epochs=1", "--registry", registry_url)
    assert code == 0, out
    assert re.search(r"H \d\.\d{3} bit  E \d+(\.\d+)? µJ", out), out
    run_id = Registry(registry_url).list_runs()[0].id
    code, shown = run_cli("show", run_id, "--registry", registry_url)
    assert code == 0, shown
    for column in ("sops", "macs", "energy_uj", "spikes_per_image", "sops_per_image"):
        assert re.search(rf"\b{column}\b", shown), column
    assert "energy_uj = macs × 4.6 pJ + sops × 0.9 pJ" in shown


@pytest.mark.slow
def test_the_ann_twin_trains_and_is_recorded_like_any_run(tiny_recipe: Path, registry_url: str) -> None:
    code, out = run_cli(
        "train", str(tiny_recipe), "--seed", "0", "--set", "model.neuron=relu", "--registry", registry_url
    )
    assert code == 0, out
    # no IM term, K or entropy to print
    assert re.search(r"^epoch\s+2/2  loss \S+  ce \S+  train \S+  test \S+  E \S+ µJ  \S+s$", out, flags=re.M), out
    reg = Registry(registry_url)
    run = reg.list_runs()[0]
    assert (run.status, run.recipe["model"]["neuron"], run.recipe["model"]["timesteps"]) == ("FINISHED", "relu", 1)
    assert run.recipe["loss"]["im_weight"] == 0.0
    metrics = reg.epoch_metrics([run.id])
    assert {"sops", "macs", "energy_uj", "test_acc"} <= set(metrics.name) and "k" not in set(metrics.name)
    assert metrics[metrics.name == "sops"].value.tolist() == [0.0, 0.0]
    assert reg.layer_stats([run.id]).empty
    code, shown = run_cli("show", run.id, "--registry", registry_url)
    assert code == 0 and "energy_uj" in shown


def test_models_lists_every_architecture_with_its_parameters_and_source() -> None:
    from imloss_cli.snn.models import MODELS

    code, out = run_cli("models")
    assert code == 0, out
    for arch in MODELS:
        assert f"│ {arch} " in out
    assert "12,697,994" in out and "12,569,226" in out  # resnet19 (tdBN/TET head), resnet19-guo
    assert "the IM-Loss authors' public code (one FC readout)" in out


def test_an_empty_recipe_file_warns_that_it_sets_nothing(workdir: Path) -> None:
    (workdir / "empty.toml").write_text("# nothing yet\n")
    result = runner.invoke(app, ["validate", str(workdir / "empty.toml")])
    assert result.exit_code == 0
    assert "empty.toml sets nothing: this is the embedded digits default" in result.output
