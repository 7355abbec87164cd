"""A registry that holds under real use: readers while runs write, a paused worker fenced off, a soak.

Everything here is real processes on a real SQLite file (and the CI's PostgreSQL server): workers are
``imloss ablate`` processes with one torch thread each, readers are ``imloss runs`` and ``sqlite3``
loops, and the signals are the ones a cluster or a user sends (SIGSTOP/SIGCONT, SIGKILL).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from imloss_cli.registry import Registry
from imloss_cli.train.checkpoint import load_checkpoint
from tests.planting import start_run

from .test_registry import postgres_admin, postgres_url  # noqa: F401  (fixtures)

TIMING = ("train_seconds", "epoch_seconds")


def _worker(workdir: Path, recipe: Path, registry: str, *args: str) -> subprocess.Popen[str]:
    """``imloss ablate RECIPE ARGS`` in its own process, one torch thread, output captured."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "imloss_cli", "ablate", str(recipe), *args, "--registry", registry]
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@contextmanager
def _readers(workdir: Path, registry: str, *, sqlite_file: Path | None) -> Iterator[list[subprocess.Popen[str]]]:
    """Readers hammering the registry until the block ends: ``imloss runs`` in a loop, and a raw
    ``sqlite3`` reader of the epoch table every 0.1 s (SQLite only)."""
    loop = (
        f'while true; do "{sys.executable}" -m imloss_cli runs --registry "{registry}" >/dev/null 2>>errors.log; done'
    )
    readers = [subprocess.Popen(["bash", "-c", loop], cwd=workdir, text=True, start_new_session=True)]
    if sqlite_file is not None:
        script = (
            "import sqlite3, time\n"
            "while True:\n"
            "    try:\n"
            f"        db = sqlite3.connect({str(sqlite_file)!r}, timeout=30)\n"
            "        db.execute('select count(*) from epoch_metrics').fetchone()\n"
            "        db.close()\n"
            "    except sqlite3.OperationalError as e:\n"
            "        if 'no such table' not in str(e): raise\n"
            "    time.sleep(0.1)\n"
        )
        readers.append(subprocess.Popen([sys.executable, "-c", script], cwd=workdir, text=True, start_new_session=True))
    try:
        yield readers
    finally:
        alive = [reader.poll() is None for reader in readers]
        for reader in readers:
            os.killpg(reader.pid, signal.SIGKILL)  # the loop and the `imloss runs` it is running
            reader.wait(timeout=30)
        assert all(alive), "a reader died while the registry was written"


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _epochs(registry: str) -> dict[tuple[float, int], dict[int, dict[str, float]]]:
    """Per trial (lambda, seed): per epoch, every metric but the timings."""
    reg = Registry(registry, create=False, write=False)
    runs = reg.list_runs()
    metrics = reg.epoch_metrics([r.id for r in runs])
    metrics = metrics[~metrics.name.isin(TIMING)]
    out = {}
    for r in runs:
        own = metrics[metrics.run_id == r.id]
        out[(r.recipe["loss"]["im_weight"], r.seed)] = {
            int(e): dict(zip(g.name, g.value)) for e, g in own.groupby("epoch")
        }
    reg.close()
    return out


def _sqlite_path(url: str) -> Path | None:
    return Path(url) if "://" not in url else None


# ------------------------------------------------------------------------------ readers


def test_a_second_handle_in_the_same_process_keeps_the_first_ones_locks(tmp_path: Path) -> None:
    """Opening a registry must not open the database file outside SQLite: closing any descriptor of it
    drops every POSIX lock this process holds, and a reader that then closes last deletes the WAL
    under the first handle's connection ("disk I/O error")."""
    path = tmp_path / "reg.db"
    first = Registry(str(path))
    run_id = start_run(first, name="r", recipe={}, config_hash="c", fingerprint="f", seed=0, code_version="v")
    first.log_epoch(run_id, 1, {"loss": 1.0}, [], attempt=1)  # the pool keeps this connection open
    Registry(str(path)).close()
    reader = "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); db.execute('select 1 from runs'); db.close()"
    subprocess.run([sys.executable, "-c", reader, str(path)], check=True)
    assert (tmp_path / "reg.db-wal").exists()  # the reader saw a connection still open: it left the WAL
    first.log_epoch(run_id, 2, {"loss": 0.5}, [], attempt=1)
    assert first.epoch_metrics([run_id]).value.tolist() == [1.0, 0.5]
    first.close()


@pytest.mark.slow
def test_readers_hammering_the_registry_never_break_an_ablation(workdir: Path, tiny_recipe: Path) -> None:
    db = workdir / "reg.db"
    quick = ["--set", "train.epochs=3", "--set", "train.max_steps_per_epoch=8"]
    with _readers(workdir, str(db), sqlite_file=db):
        worker = _worker(workdir, tiny_recipe, str(db), "--im-weight", "0,2", "--seeds", "2", *quick)
        out = worker.communicate(timeout=600)[0]
    assert worker.returncode == 0, out
    assert "Traceback" not in out and "error" not in out.lower(), out
    reg = Registry(str(db))
    runs = reg.list_runs()
    assert len(runs) == 4 and {r.status for r in runs} == {"FINISHED"}
    assert all(set(reg.epoch_attempts(r.id).items()) == {(1, 1), (2, 1), (3, 1)} for r in runs)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    reader_errors = (workdir / "errors.log").read_text() if (workdir / "errors.log").exists() else ""
    assert "Traceback" not in reader_errors, reader_errors


# ------------------------------------------------------------------------------ fencing


@pytest.mark.slow
def test_a_paused_worker_whose_trial_was_taken_over_stops_and_writes_nothing_more(
    workdir: Path, tiny_recipe: Path
) -> None:
    db = str(workdir / "reg.db")
    args = ["--im-weight", "2", "--seed", "0", "--set", "train.epochs=10", "--set", "train.max_steps_per_epoch=8"]
    first = _worker(workdir, tiny_recipe, db, *args, "--heartbeat", "0.5")

    def logged(attempt: int, epochs: int) -> Callable[[], bool]:
        def check() -> bool:
            if not os.path.exists(db):
                return False
            with Registry(db, create=False, write=False) as reg:
                runs = reg.list_runs()
                return bool(runs) and sum(a == attempt for a in reg.epoch_attempts(runs[0].id).values()) >= epochs

        return check

    _wait_for(logged(attempt=1, epochs=3), "epoch 3 of the first worker")
    first.send_signal(signal.SIGSTOP)
    second = _worker(workdir, tiny_recipe, db, *args, "--heartbeat", "0.5")
    try:
        _wait_for(logged(attempt=2, epochs=1), "an epoch of the second worker")
    finally:
        first.send_signal(signal.SIGCONT)
    out_first, out_second = first.communicate(timeout=600)[0], second.communicate(timeout=600)[0]
    assert (first.returncode, second.returncode) == (0, 0), (out_first, out_second)
    assert "Traceback" not in out_first + out_second
    reg = Registry(db)
    (run,) = reg.list_runs()
    assert f"run {run.id} was taken over by " in out_first and "(attempt 2); stopping this copy" in out_first
    assert (run.status, run.attempt, [a["attempt"] for a in run.attempts]) == ("FINISHED", 2, [1, 2])
    assert run.attempts[1]["how"].startswith("resumed from ")
    written = reg.epoch_attempts(run.id)
    assert sorted(written) == list(range(1, 11))  # every epoch once
    resumed_at = min(e for e, a in written.items() if a == 2)
    assert resumed_at >= 3 and all(a == (1 if e < resumed_at else 2) for e, a in written.items())
    last = load_checkpoint(Path(run.checkpoint_dir) / "last.pt")
    assert (last["epoch"], last["written_by"]) == (10, "attempt-2")
    assert not list(Path(run.checkpoint_dir).glob(".epoch-*"))  # no file of the stale copy is left


# ------------------------------------------------------------------------------ soak


def _soak(workdir: Path, recipe: Path, url: str) -> None:
    """3 workers and 2 readers on a 6-trial grid; one worker is paused past its heartbeat and continued,
    one is killed; every trial ends FINISHED with every epoch written once and the numbers of an
    undisturbed single worker."""
    grid = ["--im-weight", "0,1,2", "--seeds", "2", "--set", "train.epochs=4", "--set", "train.max_steps_per_epoch=6"]
    sqlite_file = _sqlite_path(url)
    outputs: list[str] = []
    with _readers(workdir, url, sqlite_file=sqlite_file):
        workers = [_worker(workdir, recipe, url, *grid, "--heartbeat", "0.5") for _ in range(3)]

        def trial_of(worker: subprocess.Popen[str]) -> str | None:
            """The trial this worker holds, once it has logged an epoch of it."""
            if sqlite_file is not None and not sqlite_file.exists():
                return None
            with Registry(url, create=False, write=False) as reg:
                held = [r.id for r in reg.list_runs(status="RUNNING") if r.pid == worker.pid]
                return held[0] if held and reg.epoch_attempts(held[0]) else None

        def taken_over(run_id: str) -> bool:
            with Registry(url, create=False, write=False) as reg:
                return reg.get_run(run_id).attempt > 1

        paused, killed, _ = workers
        _wait_for(lambda: trial_of(paused) is not None, "a trial of the worker to pause")
        paused_trial = trial_of(paused)
        assert paused_trial is not None
        paused.send_signal(signal.SIGSTOP)
        try:
            _wait_for(lambda: trial_of(killed) is not None, "a trial of the worker to kill")
            killed.send_signal(signal.SIGKILL)
            killed.wait(timeout=60)
            _wait_for(lambda: taken_over(paused_trial), "the paused worker's trial to be taken over")
        finally:
            paused.send_signal(signal.SIGCONT)
        for worker in workers:
            outputs.append(worker.communicate(timeout=900)[0])
    assert [w.returncode for w in workers] == [0, -signal.SIGKILL, 0], outputs
    assert not any("Traceback" in out for out in outputs), outputs
    reg = Registry(url)
    runs = reg.list_runs()
    assert len(runs) == 6 and {r.status for r in runs} == {"FINISHED"}
    assert sum(r.attempt > 1 for r in runs) >= 2  # the paused and the killed worker's trials were taken over
    assert "was taken over by" in outputs[0]
    for r in runs:
        assert sorted(reg.epoch_attempts(r.id)) == [1, 2, 3, 4]  # each epoch written by exactly one attempt
        assert set(reg.epoch_attempts(r.id).values()) <= set(range(1, r.attempt + 1))
    alone = workdir / "alone"
    alone.mkdir()
    single = _worker(alone, recipe, str(alone / "one.db"), *grid)
    assert single.wait(timeout=900) == 0
    assert _epochs(url) == _epochs(str(alone / "one.db"))


@pytest.mark.slow
def test_soak_on_sqlite_three_workers_two_readers_a_pause_and_a_kill(workdir: Path, tiny_recipe: Path) -> None:
    _soak(workdir, tiny_recipe, str(workdir / "soak.db"))


@pytest.mark.slow
def test_soak_on_postgresql_three_workers_two_readers_a_pause_and_a_kill(
    workdir: Path,
    tiny_recipe: Path,
    postgres_url: str,
) -> None:
    _soak(workdir, tiny_recipe, postgres_url)
