"""Scale-out on CPU: a 2-process gloo DDP run through torchrun, and a rank that dies."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imloss_cli.cli.app import app
from imloss_cli.recipe import validate_recipe
from imloss_cli.registry import Registry
from imloss_cli.train.checkpoint import load_checkpoint
from imloss_cli.train.loop import Trainer

pytestmark = pytest.mark.slow  # every test here trains

runner = CliRunner()


def test_two_process_ddp_run_records_the_accuracy_of_its_checkpoint(tiny_recipe: Path, registry_url: str) -> None:
    result = runner.invoke(app, ["train", str(tiny_recipe), "--nproc", "2", "--seed", "0", "--registry", registry_url])
    assert result.exit_code == 0, result.output
    (run,) = Registry(registry_url).list_runs()
    assert run.status == "FINISHED"
    metrics = Registry(registry_url).epoch_metrics([run.id])
    logged = metrics[(metrics.name == "test_acc") & (metrics.epoch == 2)].value.item()

    recipe = validate_recipe(run.recipe)
    trainer = Trainer(recipe, run.seed)  # one process: the whole test set, no sharding
    trainer.model.load_state_dict(load_checkpoint(Path(run.checkpoint_dir) / "last.pt")["model"])
    evaluated, layers = trainer.evaluate()
    assert evaluated["test_acc"] == logged
    stored = Registry(registry_url).layer_stats([run.id], last_epoch_only=True)
    firing = stored[stored.stat == "firing_rate"].sort_values("layer_index").value.tolist()
    assert firing == [s.firing_rate for s in layers]  # global statistics, reduced across ranks


def worker_pids(rank: int) -> list[int]:
    """Processes started by torchrun for the given local rank."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"LOCAL_RANK={rank}".encode() in environ and b"imloss_cli" in cmdline and b"--run-id" in cmdline:
            pids.append(int(proc.name))
    return pids


def test_a_rank_that_dies_fails_the_run_and_stops_the_others(tiny_recipe: Path, workdir: Path) -> None:
    db = workdir / "reg.db"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "imloss_cli", "train", str(tiny_recipe), "--nproc", "2", "--seed", "0",
         "--set", "train.epochs=200", "--registry", str(db)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                if conn.execute("select count(*) from epoch_metrics").fetchone()[0] > 0:
                    break
        except sqlite3.Error:
            continue
    victims = worker_pids(rank=1)
    assert victims, "no rank-1 worker found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    launcher.wait(timeout=120)  # no hang: torchrun stops rank 0 and returns
    assert launcher.returncode == 1
    (run,) = Registry(str(db)).list_runs()
    assert run.status == "FAILED"
    # Rank 0 sees its peer vanish (gloo: "connection reset/closed ... remote worker") or, if torchrun
    # stops rank 0 first, the launcher records torchrun's failure.
    assert "remote worker" in run.error_message or "torchrun exit code" in run.error_message


def ablate(workdir: Path, registry: str, jobs: int) -> None:
    recipe = workdir / "tiny.toml"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # both sides with one thread per trial: same arithmetic
    subprocess.run(
        [sys.executable, "-m", "imloss_cli", "ablate", str(recipe), "--im-weight", "0,2", "--seeds", "2",
         "--set", "train.epochs=1", "--jobs", str(jobs), "--registry", registry],
        check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip


def group_results(registry: str) -> dict[tuple[float, int], list[tuple[int, str, float]]]:
    reg = Registry(registry)
    runs = reg.list_runs(group_id=reg.latest_group().id)
    metrics = reg.epoch_metrics([r.id for r in runs])
    metrics = metrics[~metrics.name.isin(["train_seconds", "epoch_seconds"])]
    return {
        (r.recipe["loss"]["im_weight"], r.seed): sorted(
            (int(e), n, v)
            for e, n, v in metrics[metrics.run_id == r.id][["epoch", "name", "value"]].itertuples(index=False)
        )
        for r in runs
    }


def test_parallel_ablation_gives_the_same_group_as_sequential(tiny_recipe: Path, workdir: Path) -> None:
    ablate(workdir, str(workdir / "one.db"), jobs=1)
    ablate(workdir, str(workdir / "two.db"), jobs=2)
    one, two = group_results(str(workdir / "one.db")), group_results(str(workdir / "two.db"))
    assert len(one) == 4 and one == two
    group = Registry(str(workdir / "two.db")).latest_group().id
    logs = sorted(p.name for p in (workdir / "runs" / f"group-{group}").iterdir())
    assert logs == ["worker-0.log", "worker-1.log"]  # where the README says the --jobs logs are
    trainers = {a["pid"] for r in Registry(str(workdir / "two.db")).list_runs() for a in r.attempts}
    assert len(trainers) >= 2  # the job workers trained trials, not only this process
    assert {r.status for r in Registry(str(workdir / "two.db")).list_runs()} == {"FINISHED"}
