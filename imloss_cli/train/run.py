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
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from imloss_cli import data as data_mod
from imloss_cli.recipe import Recipe, config_hash, run_fingerprint, to_toml, validate_recipe
from imloss_cli.registry import FAILED, FINISHED, KILLED, QUEUED, RESUMABLE, Registry, RunInfo
from imloss_cli.train.distributed import DistEnv, process_group
from imloss_cli.train.environment import code_version, environment, git_state
from imloss_cli.train.loop import EpochRecord, StepCallback, Trainer, TrainingError, resolve_device


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


def queue_run(
    registry: Registry,
    recipe: Recipe,
    *,
    argv: list[str],
    kind: str,
    group_id: str | None,
    version: str | None = None,
) -> str:
    """Record a run as QUEUED (ablation trials are queued before any of them trains).

    ``version`` is the code version (``environment.code_version``); None: read from git now.
    """
    version = version or code_version(git_state())
    return registry.create_run(
        name=recipe.name,
        recipe=recipe.model_dump(mode="json"),
        config_hash=config_hash(recipe),
        fingerprint=run_fingerprint(recipe, recipe.train.seed or 0, version),
        seed=recipe.train.seed or 0,
        code_version=version,
        kind=kind,
        group_id=group_id,
        status=QUEUED,
        argv=argv,
    )


def train_run(
    recipe: Recipe,
    *,
    registry_url: str,
    argv: list[str],
    callbacks: Callbacks = Callbacks(),
    queued_run: str | None = None,
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
        return _execute(
            registry, registry.get_run(run_id), trainer, argv, callbacks, close_on_interrupt=queued_run is None
        )


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


def resume_run(run: str, *, registry_url: str, argv: list[str], callbacks: Callbacks = Callbacks()) -> RunResult:
    """Continue a QUEUED, KILLED, FAILED or LOST run from its last checkpoint, in the same row.

    Raises:
        RegistryError: no such run. TrainingError: the run is finished or still running.
    """
    registry = Registry(registry_url)
    info = registry.get_run(run)
    if info.display_status not in RESUMABLE:
        raise TrainingError(f"run {info.id} is {info.display_status}; only {', '.join(RESUMABLE)} runs can be resumed")
    recipe = validate_recipe(info.recipe, f"run {info.id}")
    trainer = Trainer(recipe, info.seed, on_step=callbacks.on_step)
    return _execute(registry, info, trainer, argv, callbacks)


def _execute(
    registry: Registry,
    info: RunInfo,
    trainer: Trainer,
    argv: list[str],
    callbacks: Callbacks,
    close_on_interrupt: bool = True,
) -> RunResult:
    """Mark the run RUNNING, train (from its last checkpoint if it has one), close it with a status."""
    recipe, run_id = trainer.recipe, info.id
    checkpoint_dir = (
        Path(info.checkpoint_dir or Path(recipe.train.output_dir) / run_id) if recipe.train.checkpoint else None
    )
    last_checkpoint = checkpoint_dir / "last.pt" if checkpoint_dir is not None else None
    if last_checkpoint is not None and last_checkpoint.is_file():
        trainer.resume(last_checkpoint)
    git = git_state()
    registry.mark_running(
        run_id, environment=environment(trainer.device), argv=argv, git_commit=git.commit, git_dirty=git.dirty
    )
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        registry.set_checkpoint_dir(run_id, str(checkpoint_dir))
        if git.dirty:
            (checkpoint_dir / "code.diff").write_text(git.diff)
    trainer.checkpoint_dir = checkpoint_dir
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
        except KeyboardInterrupt:
            if close_on_interrupt:
                registry.finish_run(run_id, KILLED, error_type="KeyboardInterrupt", error_message="interrupted")
            raise
        except BaseException as e:
            registry.finish_run(
                run_id, FAILED, error_type=type(e).__name__, error_message=str(e), traceback=traceback.format_exc()
            )
            raise
    registry.finish_run(run_id, FINISHED)
    return RunResult(run_id, trainer.seed, last, checkpoint_dir)
