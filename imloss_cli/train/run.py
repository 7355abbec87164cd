"""One training run from recipe to registry: the library calls behind ``imloss train`` and ``resume``.

Order matters: the registry is opened (and proven writable) by the caller, and the data and model
are built before a run row exists, so a bad registry path, missing data or an impossible device
request costs no epoch of work and leaves nothing behind. From the claim on, the run lives in
:func:`~imloss_cli.train.lifecycle.claimed_run`: every way out ends it with one status, FINISHED,
FAILED (with the traceback) or KILLED (Ctrl-C, SIGTERM), and a copy that was taken over stops.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from imloss_cli import data as data_mod
from imloss_cli.recipe import Recipe, config_hash, run_fingerprint, to_toml, validate_recipe
from imloss_cli.registry import QUEUED, Registry, RunInfo
from imloss_cli.train.distributed import DistEnv, process_group, rank_batch_size
from imloss_cli.train.environment import code_version, git_state
from imloss_cli.train.errors import WorkerFailedError
from imloss_cli.train.lifecycle import HEARTBEAT_S, ClaimedRun, claimed_run
from imloss_cli.train.loop import EpochRecord, StepCallback, Trainer
from imloss_cli.train.placement import resolve_device
from imloss_cli.train.scoring import BatchCallback

__all__ = ["HEARTBEAT_S", "Callbacks", "RunResult", "RunStart", "launch_distributed", "resume_run", "train_run"]


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
    on_eval_batch: BatchCallback | None = None
    on_epoch: Callable[[EpochRecord], None] | None = None


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


def queue_run(
    registry: Registry,
    recipe: Recipe,
    *,
    argv: list[str],
    kind: str,
    group_id: str | None,
    reproduces: str | None = None,
) -> str:
    """Record a run of ``recipe`` as QUEUED (attempt 0): the next claim starts it."""
    fields = run_fields(recipe, argv=argv, kind=kind)
    return registry.create_run(**fields, group_id=group_id, status=QUEUED, reproduces=reproduces)


def train_run(
    recipe: Recipe,
    *,
    registry: Registry | None,
    argv: list[str],
    callbacks: Callbacks = Callbacks(),
    held: tuple[str, int] | None = None,
    heartbeat_s: float = HEARTBEAT_S,
    reproduces: str | None = None,
) -> RunResult | None:
    """Train ``recipe`` as a new run recorded in ``registry``.

    Under torchrun every rank trains; only rank 0 is given the registry and writes to it and to the
    checkpoints (the other ranks pass None and get None back).

    Args:
        recipe: the resolved recipe (a missing seed is drawn and recorded).
        registry: the open registry (None: a torchrun rank other than 0).
        argv: the command line, recorded with the run.
        callbacks: progress hooks for a front end.
        held: ``(run id, attempt)`` of a run the ``--nproc`` launcher holds: rank 0 writes into it
            with that attempt's token, and the launcher ends it.
        heartbeat_s: seconds between heartbeats while the run trains.
        reproduces: the id of a recorded run this one trains again (``imloss reproduce``).

    Raises:
        RegistryError, DataError, TrainingError: before any row is written (except divergence).
        KeyboardInterrupt: after the run was recorded as KILLED.
        RunFencedError: another worker took the run over; nothing more was written.
    """
    env = DistEnv.from_environ()
    with process_group(env, resolve_device(recipe.train.device, env)):
        recipe = resolve_seed(recipe)
        trainer = Trainer(recipe, recipe.train.seed or 0, dist=env)
        if registry is None:
            for _ in trainer.fit():
                pass
            return None
        if held is not None:
            run_id, attempt = held
            return _execute(ClaimedRun(registry, run_id, attempt, _run_dir(recipe, run_id)), trainer, callbacks)
        run_id = queue_run(registry, recipe, argv=argv, kind="train", group_id=None, reproduces=reproduces)
        with claimed_run(
            registry, run_id, how="fresh", heartbeat_s=heartbeat_s, device=trainer.device,
            checkpoint_dir=_run_dir(recipe, run_id), argv=argv,
        ) as run:  # fmt: skip
            return _execute(run, trainer, callbacks)


def launch_distributed(
    registry: Registry, recipe: Recipe, nproc: int, *, argv: list[str], heartbeat_s: float = HEARTBEAT_S
) -> str:
    """``imloss train --nproc N``: hold a new run while torchrun's N processes train it.

    This process records the run, claims it (it beats and ends it), writes the resolved recipe
    beside its checkpoints and starts ``torchrun --standalone --nproc-per-node N -m imloss_cli
    train ... --run-id ID --attempt A``: rank 0 writes epochs and checkpoints with this claim's
    token. If any process fails, torchrun stops the others and the run ends FAILED.

    Returns:
        The run id.

    Raises:
        WorkerFailedError: torchrun ended with an error (the run is FAILED).
        KeyboardInterrupt: the run was recorded as KILLED after torchrun stopped.
    """
    rank_batch_size(recipe.data.batch_size, nproc)  # before any row or process
    recipe = resolve_seed(recipe)
    # A data problem fails here, before any row or process (and an event cache is built once, not per rank).
    data_mod.build_datasets(recipe.data, timesteps=recipe.model.timesteps)
    run_id = queue_run(registry, recipe, argv=argv, kind="train", group_id=None)
    run_dir = Path(recipe.train.output_dir) / run_id
    with claimed_run(
        registry, run_id, how=f"fresh: torchrun, {nproc} processes", heartbeat_s=heartbeat_s,
        device=resolve_device(recipe.train.device), checkpoint_dir=run_dir, argv=argv,
    ) as run:  # fmt: skip
        recipe_file = run_dir / "recipe.toml"
        recipe_file.write_text(to_toml(recipe))
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "imloss_cli", "train", str(recipe_file), "--registry", registry.url_for_subprocesses,
            "--run-id", run_id, "--attempt", str(run.attempt),
        ]  # fmt: skip
        code = _wait_for(subprocess.Popen(command), run)
        if code != 0:
            raise WorkerFailedError(f"a training process failed (torchrun exit code {code}); its output is above")
    return run_id


def _wait_for(proc: subprocess.Popen[bytes], run: ClaimedRun) -> int:
    """torchrun's exit code; on an interrupt or a takeover it is stopped first (it stops its workers)."""
    try:
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                return proc.wait(timeout=1.0)
            run.check()
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def resume_run(
    registry: Registry,
    run: str,
    *,
    argv: list[str],
    callbacks: Callbacks = Callbacks(),
    heartbeat_s: float = HEARTBEAT_S,
) -> RunResult:
    """Continue a QUEUED, KILLED, FAILED or LOST run in the same row: claim it, then train.

    The claim comes first, so of several workers reaching for one run only one builds data and
    model. It resumes from the run's last checkpoint when that file is reachable here, and restarts
    from epoch 1 otherwise; the run's attempts record which.

    Raises:
        RegistryError: no such run, or it is FINISHED. RunClaimedError: another live process holds it.
        RunFencedError: it was taken over while this trained.
    """
    info = registry.get_run(run)
    recipe = validate_recipe(info.recipe, f"run {info.id}")
    checkpoint_dir, how = _checkpoint_plan(info, recipe)
    with claimed_run(
        registry, info.id, how=how, heartbeat_s=heartbeat_s, device=resolve_device(recipe.train.device),
        checkpoint_dir=checkpoint_dir, argv=argv,
    ) as claimed:  # fmt: skip
        trainer = Trainer(recipe, info.seed)
        if checkpoint_dir is not None and (checkpoint_dir / "last.pt").is_file():
            trainer.resume(checkpoint_dir / "last.pt")
        return _execute(claimed, trainer, callbacks)


def _run_dir(recipe: Recipe, run_id: str) -> Path | None:
    """Where a new run keeps its checkpoints: OUTPUT_DIR/<run id>, or None without checkpoints."""
    return Path(recipe.train.output_dir) / run_id if recipe.train.checkpoint else None


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


def _execute(run: ClaimedRun, trainer: Trainer, callbacks: Callbacks) -> RunResult:
    """Train the held run epoch by epoch, each epoch's rows stored before its checkpoint is promoted."""
    trainer.checkpoints_to(run.checkpoint_dir, tag=f"attempt-{run.attempt}", fence=run.fence)
    on_step = callbacks.on_step

    def step(done: int, steps: int) -> None:
        run.check()  # a copy that was taken over stops at its next step
        if on_step is not None:
            on_step(done, steps)

    trainer.on_step, trainer.on_eval_batch = step, callbacks.on_eval_batch
    recipe = trainer.recipe
    if callbacks.on_start is not None:
        start = RunStart(
            run.run_id, trainer.seed, str(trainer.device), recipe.train.epochs, trainer.steps_per_epoch(),
            trainer.start_epoch,
        )  # fmt: skip
        callbacks.on_start(start)
    last: EpochRecord | None = None
    with contextlib.closing(trainer.fit()) as epochs:
        for record in epochs:
            run.log_epoch(record)
            last = record
            if callbacks.on_epoch is not None:
                callbacks.on_epoch(record)
    return RunResult(run.run_id, trainer.seed, last, trainer.checkpoint_dir)
