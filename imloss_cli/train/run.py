"""One training run from recipe to registry: the library call behind ``imloss train``.

Order matters: the registry is opened (and proven writable) and the data and model are built
before a run row exists, so a bad registry path, missing data or an impossible device request
costs no epoch of work and leaves nothing behind. From the first row on, every way out of the
loop ends the run with a status: FINISHED, FAILED (with the traceback) or KILLED (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from imloss_cli import data as data_mod
from imloss_cli.recipe import Recipe, config_hash, run_fingerprint, to_toml, validate_recipe
from imloss_cli.registry import (
    FAILED,
    FINISHED,
    KILLED,
    QUEUED,
    RESUMABLE,
    RUNNING,
    Registry,
    RegistryError,
    RunClaimedError,
    RunInfo,
)
from imloss_cli.train.distributed import DistEnv, process_group
from imloss_cli.train.environment import code_version, environment, git_state
from imloss_cli.train.loop import EpochRecord, StepCallback, Trainer, TrainingError, resolve_device

HEARTBEAT_S = 30.0
"""Seconds between a training run's heartbeats (``--heartbeat``); LOST after a few missed ones."""


@dataclass(frozen=True)
class RunStart:
    run_id: str
    seed: int
    device: str
    epochs: int
    steps_per_epoch: int
    first_epoch: int


@dataclass(frozen=True)
class RunResult:
    run_id: str
    seed: int
    last: EpochRecord | None
    checkpoint_dir: Path | None


@dataclass(frozen=True)
class Callbacks:
    """What a front end wants to hear about while a run trains."""

    on_start: Callable[[RunStart], None] | None = None
    on_step: StepCallback | None = None
    on_epoch: Callable[[EpochRecord], None] | None = None


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the run is closed as KILLED like Ctrl-C."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def heartbeat(registry: Registry, run_id: str, interval: float) -> Iterator[None]:
    """Refresh the run's heartbeat from a background thread every ``interval`` seconds.

    Epochs can last hours; the beat shows every machine that the run is alive in between. A beat
    that fails (the database briefly unreachable) is retried at the next interval.
    """
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(RegistryError):
                registry.heartbeat(run_id)

    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def resolve_seed(recipe: Recipe) -> Recipe:
    """The recipe with ``train.seed`` filled in (drawn when absent), as it is recorded.

    Under torchrun rank 0 draws and every rank takes its draw (the process group must be joined).
    """
    if recipe.train.seed is not None:
        return recipe
    drawn = torch.tensor([secrets.randbelow(2**31)])
    if dist.is_initialized():
        dist.broadcast(drawn, src=0)
    return recipe.with_overrides({"train.seed": int(drawn.item())})


def run_fields(recipe: Recipe, *, argv: list[str], kind: str, version: str | None = None) -> dict[str, Any]:
    """``Registry.create_run``'s arguments for a run of ``recipe`` (its seed set).

    ``version`` is the code version (``environment.code_version``); None: read from git now.
    """
    version = version or code_version(git_state())
    seed = recipe.train.seed or 0
    return {
        "name": recipe.name,
        "recipe": recipe.model_dump(mode="json"),
        "config_hash": config_hash(recipe),
        "fingerprint": run_fingerprint(recipe, seed, version),
        "seed": seed,
        "code_version": version,
        "kind": kind,
        "argv": argv,
    }


def queue_run(registry: Registry, recipe: Recipe, *, argv: list[str], kind: str, group_id: str | None) -> str:
    """Record a run as QUEUED (``--nproc`` queues the run before torchrun starts its processes)."""
    return registry.create_run(**run_fields(recipe, argv=argv, kind=kind), group_id=group_id, status=QUEUED)


def train_run(
    recipe: Recipe,
    *,
    registry_url: str,
    argv: list[str],
    callbacks: Callbacks = Callbacks(),
    queued_run: str | None = None,
    heartbeat_s: float = HEARTBEAT_S,
) -> RunResult | None:
    """Train ``recipe`` and record it in the registry at ``registry_url``.

    Under torchrun every rank trains; only rank 0 touches the registry and writes checkpoints
    (the other ranks return None).

    Args:
        recipe: the resolved recipe (a missing seed is drawn and recorded).
        registry_url: SQLAlchemy URL or SQLite path.
        argv: the command line, recorded with the run.
        callbacks: progress hooks for a front end.
        queued_run: id of a QUEUED run row to fill instead of creating a new one; its owner (the
            ``--nproc`` launcher) closes it if this process is interrupted.
        heartbeat_s: seconds between heartbeats while the run trains.

    Raises:
        RegistryError, DataError, TrainingError: before any row is written (except divergence).
        KeyboardInterrupt: after the run was recorded as KILLED.
    """
    env = DistEnv.from_environ()
    with process_group(env, resolve_device(recipe.train.device, env)):
        registry = Registry(registry_url) if env is None or env.is_main else None
        recipe = resolve_seed(recipe)
        trainer = Trainer(recipe, recipe.train.seed or 0, on_step=callbacks.on_step, dist=env)
        if registry is None:
            for _ in trainer.fit():
                pass
            return None
        run_id = queued_run or queue_run(registry, recipe, argv=argv, kind="train", group_id=None)
        checkpoint_dir = Path(recipe.train.output_dir) / run_id if recipe.train.checkpoint else None
        _start(registry, run_id, trainer.device, checkpoint_dir, argv, heartbeat_s, "fresh")
        trainer.checkpoint_dir = checkpoint_dir
        with heartbeat(registry, run_id, heartbeat_s):
            return _execute(registry, run_id, trainer, callbacks, close_on_interrupt=queued_run is None)


def launch_distributed(recipe: Recipe, nproc: int, *, registry_url: str, argv: list[str]) -> tuple[str, int]:
    """``imloss train --nproc N``: torchrun N processes on this machine, own their run row.

    The launcher records the run (QUEUED) and its resolved recipe, then starts
    ``torchrun --standalone --nproc-per-node N -m imloss_cli train ... --run-id ID``. Rank 0 fills
    the row; if any process fails, torchrun stops the others and the launcher marks the run FAILED.

    Returns:
        (run id, torchrun's exit code).
    """
    registry = Registry(registry_url)
    recipe = resolve_seed(recipe)
    # A data problem fails here, before any row or process (and an event cache is built once, not per rank).
    data_mod.build_datasets(recipe.data, timesteps=recipe.model.timesteps)
    run_id = queue_run(registry, recipe, argv=argv, kind="train", group_id=None)
    run_dir = Path(recipe.train.output_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe_file = run_dir / "recipe.toml"
    recipe_file.write_text(to_toml(recipe))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "imloss_cli", "train", str(recipe_file), "--registry", registry_url, "--run-id", run_id,
    ]  # fmt: skip
    try:
        code = subprocess.call(command)
    except KeyboardInterrupt:
        if not registry.get_run(run_id).is_terminal:
            registry.finish_run(run_id, KILLED, error_type="KeyboardInterrupt", error_message="interrupted")
        raise
    if code != 0 and not registry.get_run(run_id).is_terminal:
        registry.finish_run(
            run_id, FAILED, error_type="WorkerFailed",
            error_message=f"a training process failed (torchrun exit code {code}); its output is above",
        )  # fmt: skip
    return run_id, code


def resume_run(
    run: str,
    *,
    registry_url: str,
    argv: list[str],
    callbacks: Callbacks = Callbacks(),
    heartbeat_s: float = HEARTBEAT_S,
) -> RunResult:
    """Continue a QUEUED, KILLED, FAILED or LOST run in the same row: claim it, then train.

    The claim comes first (``Registry.mark_running``), so of several workers reaching for one run
    only one builds data and model. It resumes from the run's last checkpoint when that file is
    reachable here, and restarts from epoch 1 otherwise; the run's attempts record which.

    Raises:
        RegistryError: no such run. RunClaimedError: another live process holds it.
        TrainingError: the run is finished or still running.
    """
    registry = Registry(registry_url)
    info = registry.get_run(run)
    if info.display_status not in RESUMABLE:
        held = info.display_status == RUNNING
        error = RunClaimedError if held else TrainingError
        where = f" on {info.host} (pid {info.pid})" if held else ""
        raise error(f"run {info.id} is {info.display_status}{where}; only {', '.join(RESUMABLE)} runs can be resumed")
    recipe = validate_recipe(info.recipe, f"run {info.id}")
    checkpoint_dir, how = _checkpoint_plan(info, recipe)
    _start(registry, info.id, resolve_device(recipe.train.device), checkpoint_dir, argv, heartbeat_s, how)
    # Beat from the claim on: building data and model can take longer than the beats that make a run LOST.
    with heartbeat(registry, info.id, heartbeat_s):
        try:
            trainer = Trainer(recipe, info.seed, on_step=callbacks.on_step, checkpoint_dir=checkpoint_dir)
            if checkpoint_dir is not None and (checkpoint_dir / "last.pt").is_file():
                trainer.resume(checkpoint_dir / "last.pt")
        except BaseException as e:  # claimed but never trained: close the row, as _execute would
            _close(registry, info.id, e)
            raise
        return _execute(registry, info.id, trainer, callbacks)


def _checkpoint_plan(info: RunInfo, recipe: Recipe) -> tuple[Path | None, str]:
    """Where this attempt keeps its checkpoints, and how it starts (recorded in the run's attempts)."""
    if not recipe.train.checkpoint:
        return None, "fresh" if info.started_at is None else "restarted: checkpoints are off"
    local = Path(recipe.train.output_dir) / info.id
    recorded = Path(info.checkpoint_dir) if info.checkpoint_dir else None
    if recorded is not None and (recorded / "last.pt").is_file():
        return recorded, f"resumed from {recorded / 'last.pt'}"
    if info.started_at is None:
        return recorded or local, "fresh"
    if recorded is not None and not recorded.is_dir():
        return local, f"restarted: checkpoint directory {recorded} is not reachable from this machine"
    return recorded or local, "restarted: no checkpoint had been written"


def _start(
    registry: Registry,
    run_id: str,
    device: torch.device,
    checkpoint_dir: Path | None,
    argv: list[str],
    heartbeat_s: float,
    how: str,
) -> None:
    """Claim the run for this process (RUNNING, environment, attempt) and prepare its checkpoint folder."""
    git = git_state()
    registry.mark_running(
        run_id, environment=environment(device), argv=argv, git_commit=git.commit, git_dirty=git.dirty,
        checkpoint_dir=checkpoint_dir, heartbeat_s=heartbeat_s, how=how,
    )  # fmt: skip
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if git.dirty:
            (checkpoint_dir / "code.diff").write_text(git.diff)


def _close(registry: Registry, run_id: str, error: BaseException) -> None:
    """End a claimed run that stopped with ``error``: KILLED for an interrupt, FAILED otherwise."""
    if isinstance(error, KeyboardInterrupt):
        registry.finish_run(run_id, KILLED, error_type="KeyboardInterrupt", error_message="interrupted")
    else:
        registry.finish_run(
            run_id, FAILED, error_type=type(error).__name__, error_message=str(error), traceback=traceback.format_exc()
        )


def _execute(
    registry: Registry,
    run_id: str,
    trainer: Trainer,
    callbacks: Callbacks,
    close_on_interrupt: bool = True,
) -> RunResult:
    """Train the claimed run epoch by epoch and close it with a status (the caller keeps it beating)."""
    recipe = trainer.recipe
    if callbacks.on_start is not None:
        callbacks.on_start(
            RunStart(
                run_id,
                trainer.seed,
                str(trainer.device),
                recipe.train.epochs,
                trainer.steps_per_epoch(),
                trainer.start_epoch,
            )
        )
    last: EpochRecord | None = None
    with sigterm_as_interrupt():
        try:
            for record in trainer.fit():
                layers = [(s.index, s.name, s.as_dict()) for s in record.layers]
                registry.log_epoch(run_id, record.epoch, record.metrics, layers)
                last = record
                if callbacks.on_epoch is not None:
                    callbacks.on_epoch(record)
        except BaseException as e:
            if close_on_interrupt or not isinstance(e, KeyboardInterrupt):
                _close(registry, run_id, e)
            raise
    registry.finish_run(run_id, FINISHED)
    return RunResult(run_id, trainer.seed, last, trainer.checkpoint_dir)
