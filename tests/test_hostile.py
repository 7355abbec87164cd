"""Hostile input: a corpus of malformed recipes, broken checkpoints, unusable registries.

Every case must end with exit code 2, a message naming what is wrong, and the registry untouched.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from imloss_cli.cli.app import app
from imloss_cli.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

CORPUS = sorted((Path(__file__).parent / "malformed").glob("*.toml"))
runner = CliRunner()


def header(path: Path, key: str) -> str | None:
    for line in path.read_text().splitlines():
        if line.startswith(f"# {key}: "):
            return line.removeprefix(f"# {key}: ")
    return None


@pytest.fixture
def data_fixtures(workdir: Path) -> Path:
    """Directories the data-stage cases point at: an empty one, and CIFAR files full of garbage."""
    (workdir / "empty").mkdir()
    garbage = workdir / "garbage" / "cifar-10-batches-py"
    garbage.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
        (garbage / name).write_bytes(b"not a pickle at all")
    return workdir


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_malformed_recipe_gets_exit_2_its_message_and_leaves_the_registry_alone(
    path: Path, data_fixtures: Path, registry_url: str
) -> None:
    tmp = str(data_fixtures)
    recipe = data_fixtures / path.name
    recipe.write_text(path.read_text().replace("{tmp}", tmp))
    expected = header(path, "expect").replace("{tmp}", tmp)
    commands = [["train", str(recipe), "--registry", registry_url]]
    if header(path, "stage") != "train":
        commands.append(["validate", str(recipe)])
    for args in commands:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert expected in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
    db = data_fixtures / "reg.db"
    if db.exists():  # data errors surface after the registry was opened: it must hold no run
        assert sqlite3.connect(db).execute("select count(*) from runs").fetchone() == (0,)
    assert not (data_fixtures / "runs").exists()


def test_ablate_with_an_empty_axis_exits_2(registry_url: str, tiny_recipe: Path) -> None:
    result = runner.invoke(app, ["ablate", str(tiny_recipe), "--im-weight", "", "--registry", registry_url])
    assert result.exit_code == 2, result.output
    assert "loss.im_weight: no values given" in result.output


def test_ablate_with_an_invalid_axis_value_names_the_field(registry_url: str, tiny_recipe: Path, workdir: Path) -> None:
    result = runner.invoke(app, ["ablate", str(tiny_recipe), "--timesteps", "2,0", "--registry", registry_url])
    assert result.exit_code == 2, result.output
    assert "model.timesteps" in result.output
    assert not (workdir / "reg.db").exists()


@pytest.mark.parametrize(
    "registry, message",
    [("notadb.txt", "not a SQLite database"), ("afile/reg.db", "not writable")],
)
def test_unusable_registry_fails_before_training(registry: str, message: str, workdir: Path, tiny_recipe: Path) -> None:
    (workdir / "notadb.txt").write_text("hello, I am a text file\n" * 100)
    (workdir / "afile").write_text("a file where a directory is expected")
    result = runner.invoke(app, ["train", str(tiny_recipe), "--registry", str(workdir / registry)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "epoch" not in result.output
    assert (workdir / "notadb.txt").read_text().startswith("hello")


def test_registry_from_a_newer_imloss_is_refused(workdir: Path, tiny_recipe: Path, registry_url: str) -> None:
    from imloss_cli.registry import SCHEMA_VERSION, Registry

    Registry(registry_url).close()
    db = sqlite3.connect(workdir / "reg.db")
    db.execute("update meta set value = ? where key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    result = runner.invoke(app, ["train", str(tiny_recipe), "--registry", registry_url])
    assert result.exit_code == 2, result.output
    assert "newer" in result.output


class Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_crafted_checkpoint_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    torch.save({"format": "imloss-checkpoint-1", "model": Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
    with open(tmp_path / "plain.pkl", "wb") as f:  # a bare pickle, not even a torch file
        pickle.dump(Exploit(marker), f, protocol=2)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "plain.pkl")
    assert not marker.exists()


def test_truncated_and_foreign_checkpoints_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.ones(1000)}, "epoch": 3})
    assert load_checkpoint(good)["epoch"] == 3
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, foreign)
    with pytest.raises(CheckpointError, match="not an imloss checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_write_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path)["epoch"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
