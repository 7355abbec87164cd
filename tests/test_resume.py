"""Runs that survive: kill and resume reproduce the uninterrupted run; divergence fails cleanly."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imloss_cli.cli.app import app
from imloss_cli.recipe import load_recipe
from imloss_cli.registry import Registry
from imloss_cli.train import loop, objective
from imloss_cli.train.checkpoint import load_checkpoint
from imloss_cli.train.lifecycle import train_run

pytestmark = pytest.mark.slow  # every test here trains

runner = CliRunner()
TIMING = ("train_seconds", "epoch_seconds")


def epochs_table(registry_url: str, run_id: str) -> dict[int, dict[str, float]]:
    m = Registry(registry_url).epoch_metrics([run_id])
    m = m[~m.name.isin(TIMING)]
    return {int(e): dict(zip(g.name, g.value)) for e, g in m.groupby("epoch")}


def test_sigkill_in_epoch_3_then_resume_equals_the_uninterrupted_run(tiny_recipe: Path, workdir: Path) -> None:
    # Smaller batches: 43 steps an epoch, so there is a middle of epoch 3 to hit.
    args = ["train", str(tiny_recipe), "--seed", "3", "--set", "train.epochs=4", "--set", "data.batch_size=32"]
    straight = f"sqlite:///{workdir / 'straight.db'}"
    assert runner.invoke(app, [*args, "--registry", straight]).exit_code == 0
    (reference,) = Registry(straight).list_runs()

    killed = f"sqlite:///{workdir / 'killed.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "imloss_cli", *args, "--registry", killed],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    seconds = None
    while seconds is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
        try:  # a plain read-only look, so the poll never competes with the writer
            with sqlite3.connect(f"file:{workdir / 'killed.db'}?mode=ro", uri=True) as db:
                row = db.execute(
                    "select value from epoch_metrics where epoch = 2 and name = 'train_seconds'"
                ).fetchone()
        except sqlite3.Error:
            continue
        seconds = row[0] if row else None
    assert seconds is not None, "the run never finished epoch 2"
    time.sleep(seconds / 2)  # half-way into epoch 3, timed by epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (run,) = Registry(killed).list_runs()
    run_id = run.id
    assert run.display_status == "LOST"
    logged_before = set(epochs_table(killed, run_id))
    assert 2 in logged_before and 4 not in logged_before

    result = runner.invoke(app, ["resume", run_id[:6], "--registry", killed])
    assert result.exit_code == 0, result.output
    assert "resuming at epoch" in result.output
    run = Registry(killed).get_run(run_id)
    assert (run.status, run.attempt) == ("FINISHED", 2)
    assert epochs_table(killed, run_id) == epochs_table(straight, reference.id)


def test_resume_refuses_a_finished_run(tiny_recipe: Path, registry_url: str) -> None:
    assert (
        runner.invoke(
            app, ["train", str(tiny_recipe), "--seed", "0", "--set", "train.epochs=1", "--registry", registry_url]
        ).exit_code
        == 0
    )
    (run,) = Registry(registry_url).list_runs()
    result = runner.invoke(app, ["resume", run.id, "--registry", registry_url])
    assert result.exit_code == 2
    assert "FINISHED" in result.output


def test_nan_loss_fails_the_run_with_epoch_and_step_and_keeps_the_last_good_checkpoint(
    registry_url: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    original = loop.loss_step

    def poisoned(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 22 + 4:  # digits has 22 steps an epoch: step 4 of epoch 2
            return objective.StepLoss(out.total * float("nan"), out.ce, out.im, out.logits)
        return out

    monkeypatch.setattr(loop, "loss_step", poisoned)
    recipe = load_recipe(None, {"train.epochs": 3, "train.seed": 0, "model.timesteps": 2})
    with pytest.raises(loop.DivergedError, match="diverged at epoch 2, step 4"), Registry(registry_url) as registry:
        train_run(registry, recipe, argv=["test"])
    (run,) = Registry(registry_url).list_runs()
    assert run.status == "FAILED" and run.error_message.startswith("diverged at epoch 2, step 4")
    state = load_checkpoint(Path(run.checkpoint_dir) / "last.pt")
    assert state["epoch"] == 1


def test_keep_last_prunes_epoch_checkpoints_and_keeps_best_apart(
    tiny_recipe: Path, registry_url: str, workdir: Path
) -> None:
    result = runner.invoke(
        app,
        [
            "train",
            str(tiny_recipe),
            "--seed",
            "0",
            "--set",
            "train.epochs=4",
            "--keep-last",
            "2",
            "--registry",
            registry_url,
        ],
    )
    assert result.exit_code == 0, result.output
    (run,) = Registry(registry_url).list_runs()
    files = sorted(p.name for p in Path(run.checkpoint_dir).glob("*.pt"))
    assert files == ["best.pt", "epoch-0003.pt", "epoch-0004.pt", "last.pt"]
    last = load_checkpoint(Path(run.checkpoint_dir) / "last.pt")
    assert last["epoch"] == 4 and set(last["rng"]) >= {"python", "numpy", "torch"}
    accs = Registry(registry_url).epoch_metrics([run.id])
    best_epoch = int(
        accs[accs.name == "test_acc"].sort_values(["value", "epoch"], ascending=[False, True]).epoch.iloc[0]
    )
    assert load_checkpoint(Path(run.checkpoint_dir) / "best.pt")["epoch"] == best_epoch


def test_a_checkpoint_from_before_a_new_recipe_field_still_resumes(workdir: Path) -> None:
    import json

    import torch

    from imloss_cli.train.checkpoint import save_checkpoint
    from imloss_cli.train.loop import Trainer, TrainingError
    from imloss_cli.train.sink import LocalRun

    recipe = load_recipe(None, {"train.epochs": 2, "train.max_steps_per_epoch": 2, "train.device": "cpu"})
    trainer = Trainer(recipe, 0)
    next(trainer.fit(LocalRun(workdir / "ck")))
    state = load_checkpoint(workdir / "ck" / "last.pt")
    older = json.loads(state["recipe"])
    del older["data"]["val_fraction"], older["paper"]  # as an imloss without these fields wrote it
    save_checkpoint(
        workdir / "old.pt", {k: v for k, v in state.items() if k != "format"} | {"recipe": json.dumps(older)}
    )
    again = Trainer(recipe, 0)
    again.resume(workdir / "old.pt")
    assert again.start_epoch == 2
    other = Trainer(recipe.with_overrides({"loss.im_weight": 1.0}), 0)
    with pytest.raises(TrainingError, match="written for another recipe or seed"):
        other.resume(workdir / "old.pt")
    state["model"] = {k: torch.zeros(1) for k in state["model"]}  # another network's weights
    save_checkpoint(workdir / "net.pt", {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(TrainingError, match="holds another network than this imloss builds"):
        Trainer(recipe, 0).resume(workdir / "net.pt")
