"""Several workers on one ablation: a shared grid, claims that never train a trial twice, liveness.

Workers are real ``imloss ablate`` processes on one registry (a SQLite file, and the CI's
PostgreSQL server), with one torch thread each so that every trial computes the same numbers
whichever worker trains it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from imloss_cli.cli.app import app
from imloss_cli.registry import FINISHED, LOST, RUNNING, Claim, NewRun, Registry, RegistryError
from imloss_cli.registry import store as store_module
from imloss_cli.registry.schema import Run
from imloss_cli.train.lifecycle import ClaimedRun, heartbeat

from .test_registry import new_run, postgres_admin, postgres_url  # noqa: F401  (fixtures)

GRID = ["--im-weight", "0,1,2", "--seeds", "2"]  # 6 trials
QUICK = ["--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=4"]


def _worker(workdir: Path, recipe: Path, registry: str, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "imloss_cli", "ablate", str(recipe), *GRID, *QUICK, "--registry", registry, *extra]
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _report(registry: str) -> list[dict[str, object]]:
    result = CliRunner().invoke(app, ["report", "--format", "json", "--registry", registry])
    assert result.exit_code == 0, result.output
    return [
        {k: row[k] for k in ("loss.im_weight", "test_acc_mean_pct", "n")} for row in json.loads(result.stdout)["rows"]
    ]


def _three_workers_share_the_grid(workdir: Path, tiny_recipe: Path, url: str) -> None:
    workers = [_worker(workdir, tiny_recipe, url, "--heartbeat", "2") for _ in range(3)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], outputs
    reg = Registry(url)
    runs = reg.list_runs()
    assert len(runs) == 6 and len({r.group_id for r in runs}) == 1
    assert {(r.status, r.attempt) for r in runs} == {(FINISHED, 1)}  # each trained exactly once
    assert all(len(r.attempts) == 1 and r.attempts[0]["how"] == "fresh" for r in runs)
    assert all("| 2 |" in out for out in outputs)  # every worker printed the complete group's report
    # Each worker reports all six: "finished  ..." for its own, "finished on HOST (pid PID)" for the rest.
    own = [len(re.findall(r"^finished  ", out, flags=re.M)) for out in outputs]
    elsewhere = [len(re.findall(r"^finished on \S+ \(pid \d+\)", out, flags=re.M)) for out in outputs]
    assert sum(own) == 6 and [a + b for a, b in zip(own, elsewhere)] == [6, 6, 6]

    alone = workdir / "alone"
    alone.mkdir()
    single = _worker(alone, tiny_recipe, str(alone / "one.db"))
    assert single.wait(timeout=600) == 0
    assert _report(url) == _report(str(alone / "one.db"))


@pytest.mark.slow
def test_three_workers_on_one_sqlite_file_train_every_trial_once(workdir: Path, tiny_recipe: Path) -> None:
    _three_workers_share_the_grid(workdir, tiny_recipe, str(workdir / "shared.db"))


@pytest.mark.slow
def test_three_workers_on_postgresql_train_every_trial_once(
    workdir: Path,
    tiny_recipe: Path,
    postgres_url: str,
) -> None:
    _three_workers_share_the_grid(workdir, tiny_recipe, postgres_url)


@pytest.mark.slow
def test_a_killed_worker_leaves_its_trial_lost_and_another_worker_completes_the_group(
    workdir: Path, tiny_recipe: Path
) -> None:
    url = str(workdir / "shared.db")
    long_trials = ["--set", "train.epochs=3", "--set", "train.max_steps_per_epoch=40", "--heartbeat", "0.5"]
    first = _worker(workdir, tiny_recipe, url, *long_trials)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until it holds a trial that has logged an epoch
        if os.path.exists(url):
            reg = Registry(url)
            held = [r for r in reg.list_runs(status=RUNNING) if len(reg.epoch_metrics([r.id]))]
            if held:
                break
        time.sleep(0.2)
    else:
        pytest.fail("the first worker never started a trial")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    victim = held[0].id
    assert Registry(url).get_run(victim).display_status == LOST

    second = _worker(workdir, tiny_recipe, url, *long_trials)
    out = second.communicate(timeout=600)[0]
    assert second.returncode == 0, out
    runs = Registry(url).list_runs()
    assert len(runs) == 6 and {r.status for r in runs} == {FINISHED}
    killed = Registry(url).get_run(victim)
    assert killed.attempt == 2 and [a["attempt"] for a in killed.attempts] == [1, 2]
    assert killed.attempts[0]["how"] == "fresh"
    assert killed.attempts[1]["how"].startswith("resumed from ") and killed.attempts[1]["how"].endswith("last.pt")


def test_a_run_whose_heartbeat_lapses_is_lost_on_any_host(workdir: Path) -> None:
    reg = Registry(str(workdir / "reg.db"))
    run_id = new_run(reg, status="QUEUED")
    attempt = reg.claim_run(run_id, Claim(heartbeat_s=0.2))
    assert reg.get_run(run_id).display_status == RUNNING
    with reg._write() as s:  # as if another machine holds it: its pid means nothing here
        s.execute(update(Run).where(Run.id == run_id).values(host="another-host", pid=1))
    assert reg.get_run(run_id).display_status == RUNNING  # beating recently
    old = datetime.now(UTC) - timedelta(seconds=0.2 * store_module.LOST_AFTER_BEATS + 0.5)
    with reg._write() as s:
        s.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=old))
    assert reg.get_run(run_id).display_status == LOST
    with heartbeat(ClaimedRun(reg, run_id, attempt, None), 0.05):
        time.sleep(0.3)
    assert reg.get_run(run_id).display_status == RUNNING  # the background beats brought it back


def test_claiming_a_run_another_live_worker_holds_is_refused(workdir: Path) -> None:
    from imloss_cli.registry import RunClaimedError

    reg = Registry(str(workdir / "reg.db"))
    run_id = new_run(reg, status="QUEUED")
    reg.claim_run(run_id, Claim(heartbeat_s=30.0))
    with pytest.raises(RunClaimedError, match=r"is RUNNING on .* \(pid \d+\)"):
        reg.claim_run(run_id)
    entry = reg.get_run(run_id).attempts
    assert [(a["attempt"], a["how"], a["pid"]) for a in entry] == [(1, "fresh", os.getpid())]


def test_workers_that_create_the_group_together_get_one_group(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(str(workdir / "reg.db"))
    first = reg.claim_group("key-1", "g", {}, {"a": [1]}, [])
    assert reg.claim_group("key-1", "g", {}, {"a": [1]}, []) == first
    # The race: this worker looked before the other inserted, so its own insert hits the unique key.
    monkeypatch.setattr(Registry, "_group_id_by_key", lambda self, key, calls=iter([None]): next(calls, first))
    assert reg.claim_group("key-1", "g", {}, {"a": [1]}, []) == first
    with sqlite3.connect(workdir / "reg.db") as db:
        assert db.execute("select count(*) from groups").fetchone() == (1,)


def test_queueing_a_grid_twice_gives_one_row_per_trial_in_plan_order(workdir: Path) -> None:
    reg = Registry(str(workdir / "reg.db"))
    group = reg.claim_group("k", "g", {}, {}, [])
    rows = [
        NewRun(name="t", recipe={}, config_hash="c", fingerprint=f"fp{i}", seed=i, code_version="v") for i in range(5)
    ]
    ids = reg.queue_runs(group, rows)
    assert reg.queue_runs(group, rows[::-1]) == ids[::-1]
    assert [r.id for r in reversed(reg.list_runs(group_id=group))] == ids  # creation order is plan order
    with pytest.raises(RegistryError, match="no group with id 'nope'"):
        reg.queue_runs("nope", rows)


@pytest.mark.parametrize("command", [["runs"], ["show", "abc"], ["report"]])
def test_reading_commands_on_a_missing_registry_say_so_and_create_nothing(workdir: Path, command: list[str]) -> None:
    missing = workdir / "typo" / "imloss.db"
    result = CliRunner().invoke(app, [*command, "--registry", str(missing)])
    assert result.exit_code == 2
    assert f"no registry at {missing}" in result.output
    assert not missing.parent.exists()
