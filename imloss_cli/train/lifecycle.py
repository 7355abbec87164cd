"""A run's life in the registry, in one place: queue -> claim -> heartbeat -> fit -> finish (or close).

Every way a run trains goes through :func:`claimed_run` and :class:`ClaimedRun`, the registry's
side of the seam ``train.sink.RunSink``:

- :func:`train_run` (``imloss train``, ``reproduce``): a new run, queued then claimed here;
- :func:`resume_run` (``imloss resume``, and every ablation worker's trial): claim a queued,
  failed, killed or lost run, then train it from its last checkpoint;
- :func:`train_rank`: one process of ``imloss train --nproc N``; the launcher
  (``train.launch``) holds the claim, rank 0 writes into it with the launcher's attempt token.

A trial's path, from claim to FINISHED::

    with claimed_run(registry, run_id, Claim(how=...), ...) as run:   # claim: attempt N, RUNNING
        for record in trainer.fit(run):                               # per epoch: run.store_epoch ->
            ...                                                       # registry.log_epoch(attempt=N),
                                                                      # checkpoint promoted in run.fenced()
    # leaving normally: finish_run(FINISHED, attempt=N)

The claim returns the run's new attempt, the fence token every later write carries. While the body
runs, a background thread refreshes the heartbeat; SIGTERM becomes :class:`Terminated`, an
interrupt. On the way out the run is closed once: KILLED for Ctrl-C or SIGTERM, PRUNED when a
tuner's pruner stopped it after an epoch (``sink.RunPruned``), FAILED (with the traceback) for any
other error, FINISHED otherwise. If another worker took the run over (this process was paused past
its heartbeat), every write is refused with :class:`RunFencedError`; the heartbeat thread notices
first, :meth:`ClaimedRun.check` stops training at the next step, and nothing more is written for
the run.

Order matters for a new run: the registry is opened (and proven writable) by the caller, and the
data and model are built before a run row exists, so a bad registry, missing data or an impossible
device request costs no epoch of work and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from imloss_cli.errors import Terminated
from imloss_cli.files import UnsafePathError, child_path, write_atomically
from imloss_cli.recipe import Recipe, config_hash, run_fingerprint, validate_recorded
from imloss_cli.registry import (
    FAILED,
    FINISHED,
    KILLED,
    PRUNED,
    Claim,
    NewRun,
    Registry,
    RegistryError,
    RunFencedError,
    RunInfo,
)
from imloss_cli.train.distributed import DistEnv, process_group
from imloss_cli.train.environment import code_version, environment, git_state
from imloss_cli.train.loop import Trainer
from imloss_cli.train.placement import resolve_device
from imloss_cli.train.sink import Callbacks, EpochRecord, LocalRun, RunPruned, RunSink, RunStart

HEARTBEAT_S = 30.0
"""Seconds between a training run's heartbeats (``--heartbeat``); LOST after a few missed ones."""


@dataclass(frozen=True)
class RunResult:
    run_id: str
    seed: int
    last: EpochRecord | None
    checkpoint_dir: Path | None


@dataclass(frozen=True)
class HeldRun:
    """A run claimed by the ``--nproc`` launcher: rank 0 writes into it with this attempt's token."""

    run_id: str
    attempt: int


# ------------------------------------------------------------------------------------ the claimed run


@dataclass
class ClaimedRun:
    """A run this process holds at ``attempt``: a :class:`~imloss_cli.train.sink.RunSink` whose every
    write is fenced by that token."""

    registry: Registry
    run_id: str
    attempt: int
    checkpoint_dir: Path | None
    _fenced: RunFencedError | None = field(default=None, repr=False)

    @property
    def checkpoint_tag(self) -> str:
        return f"attempt-{self.attempt}"

    def store_epoch(self, record: EpochRecord) -> None:
        """Store one epoch's metrics and layer statistics (RunFencedError when taken over)."""
        layers = [(s.index, s.name, s.as_dict()) for s in record.layers]
        self.registry.log_epoch(self.run_id, record.epoch, record.metrics, layers, attempt=self.attempt)

    def fenced(self) -> contextlib.AbstractContextManager[None]:
        """Hold the run while this attempt is current (promoting a checkpoint happens inside)."""
        return self.registry.fenced(self.run_id, attempt=self.attempt)

    def check(self) -> None:
        """Raise :class:`RunFencedError` if the heartbeat found the run taken over."""
        if self._fenced is not None:
            raise self._fenced

    def beat(self) -> None:
        """One heartbeat; remembers a takeover for :meth:`check` instead of raising it."""
        try:
            self.registry.heartbeat(self.run_id, attempt=self.attempt)
        except RunFencedError as e:
            self._fenced = e

    def close(self, error: BaseException) -> None:
        """End the run after ``error``: KILLED for an interrupt, PRUNED when a tuner's pruner stopped it
        (:class:`~imloss_cli.train.sink.RunPruned`), FAILED otherwise (never after a takeover)."""
        if isinstance(error, RunFencedError):
            return
        fields: dict[str, Any]
        if isinstance(error, KeyboardInterrupt):
            status, fields = KILLED, {"error_type": "KeyboardInterrupt", "error_message": "interrupted"}
        elif isinstance(error, RunPruned):  # an outcome, not a failure: the reason, no traceback
            status, fields = PRUNED, {"error_type": type(error).__name__, "error_message": str(error)}
        else:
            status = FAILED
            fields = {
                "error_type": type(error).__name__,
                "error_message": str(error),
                "traceback": traceback.format_exc(),
            }
        # A takeover or a broken database while closing must not hide the error that ended the run.
        with contextlib.suppress(RegistryError):
            self.registry.finish_run(self.run_id, status, attempt=self.attempt, **fields)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread for the duration (elsewhere: a no-op)."""

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
def heartbeat(run: ClaimedRun, interval: float) -> Iterator[None]:
    """Refresh the run's heartbeat from a background thread every ``interval`` seconds.

    Epochs can last hours; the beat shows every machine that the run is alive in between. A beat
    that fails (the database briefly unreachable) is retried at the next interval; a beat that
    finds the run taken over stops beating and leaves the news for :meth:`ClaimedRun.check`.
    """
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(RegistryError):
                run.beat()
            if run._fenced is not None:
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{run.run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def claimed_run(
    registry: Registry,
    run_id: str,
    *,
    how: str,
    heartbeat_s: float,
    device: torch.device,
    checkpoint_dir: Path | None,
    argv: list[str],
) -> Iterator[ClaimedRun]:
    """Claim ``run_id`` for this process and hold it for the body; close it once on the way out.

    Args:
        how: how this attempt starts, recorded in the run's attempts ("fresh", "resumed from ...").
        heartbeat_s: seconds between heartbeats.
        device: the device this attempt trains on (recorded in its environment).
        checkpoint_dir: where this attempt's checkpoints go (created now), if anywhere.
        argv: the command line, recorded with the attempt.

    Raises:
        RunClaimedError: another live process holds the run. RegistryError: it cannot be claimed.
        RunFencedError: the run was taken over while the body ran (nothing more was written).
        Whatever the body raised, after the run was closed as KILLED, PRUNED or FAILED.
    """
    git = git_state()
    claim = Claim(
        how=how, environment=environment(device), argv=argv, git_commit=git.commit, git_dirty=git.dirty,
        checkpoint_dir=checkpoint_dir, heartbeat_s=heartbeat_s,
    )  # fmt: skip
    attempt = registry.claim_run(run_id, claim)
    run = ClaimedRun(registry, run_id, attempt, checkpoint_dir)
    with sigterm_as_interrupt(), heartbeat(run, heartbeat_s):
        try:
            if checkpoint_dir is not None:
                checkpoint_dir.mkdir(parents=True, exist_ok=True)
                if git.dirty:
                    write_atomically(checkpoint_dir / "code.diff", git.diff)
            yield run
        except BaseException as e:
            run.close(e)
            raise
    registry.finish_run(run_id, FINISHED, attempt=attempt)


# ------------------------------------------------------------------------------------ ways to train


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


def new_run(recipe: Recipe, *, argv: list[str], kind: str, version: str | None = None,
            reproduces: str | None = None) -> NewRun:  # fmt: skip
    """The registry's record of a run of ``recipe`` (its seed set) as it is queued.

    ``version`` is the code version (``environment.code_version``); None: read from git now.
    """
    version = version or code_version(git_state())
    seed = recipe.train.seed or 0
    return NewRun(
        name=recipe.name, recipe=recipe.model_dump(mode="json"), config_hash=config_hash(recipe),
        fingerprint=run_fingerprint(recipe, seed, version), seed=seed, code_version=version, kind=kind, argv=argv,
        reproduces=reproduces,
    )  # fmt: skip


def train_run(
    registry: Registry,
    recipe: Recipe,
    *,
    argv: list[str],
    callbacks: Callbacks = Callbacks(),
    heartbeat_s: float = HEARTBEAT_S,
    reproduces: str | None = None,
) -> RunResult:
    """Train ``recipe`` as a new run recorded in ``registry``, in this process.

    Args:
        recipe: the resolved recipe (a missing seed is drawn and recorded).
        argv: the command line, recorded with the run.
        callbacks: progress hooks for a front end.
        heartbeat_s: seconds between heartbeats while the run trains.
        reproduces: the id of a recorded run this one trains again (``imloss reproduce``).

    Raises:
        RegistryError, DataError, TrainingError: before any row is written (except divergence).
        KeyboardInterrupt: after the run was recorded as KILLED.
        RunFencedError: another worker took the run over; nothing more was written.
    """
    recipe = resolve_seed(recipe)
    trainer = Trainer(recipe, recipe.train.seed or 0, callbacks=callbacks)
    run_id = registry.queue_run(new_run(recipe, argv=argv, kind="train", reproduces=reproduces))
    with claimed_run(
        registry, run_id, how="fresh", heartbeat_s=heartbeat_s, device=trainer.device,
        checkpoint_dir=run_dir(recipe, run_id), argv=argv,
    ) as run:  # fmt: skip
        return _fit(trainer, run, run_id)


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
    recipe = validate_recorded(info.recipe, f"run {info.id}")
    checkpoint_dir, how = _checkpoint_plan(info, recipe)
    with claimed_run(
        registry, info.id, how=how, heartbeat_s=heartbeat_s, device=resolve_device(recipe.train.device),
        checkpoint_dir=checkpoint_dir, argv=argv,
    ) as claimed:  # fmt: skip
        trainer = Trainer(recipe, info.seed, callbacks=callbacks)
        if checkpoint_dir is not None and (checkpoint_dir / "last.pt").is_file():
            trainer.resume(checkpoint_dir / "last.pt")
        return _fit(trainer, claimed, info.id)


def train_rank(registry: Registry, recipe: Recipe, held: HeldRun, *, callbacks: Callbacks = Callbacks()) -> None:
    """One process of ``imloss train --nproc N``, started by torchrun (``train.launch``).

    Every rank trains its share of each batch; rank 0 writes the epochs and checkpoints into the
    launcher's run with the launcher's attempt token (the launcher beats and ends it), the other
    ranks write nothing.
    """
    env = DistEnv.from_environ()
    with process_group(env, resolve_device(recipe.train.device, env)):
        recipe = resolve_seed(recipe)
        trainer = Trainer(recipe, recipe.train.seed or 0, dist=env, callbacks=callbacks)
        main = env is None or env.is_main
        sink: RunSink = (
            ClaimedRun(registry, held.run_id, held.attempt, run_dir(recipe, held.run_id)) if main else LocalRun()
        )
        _fit(trainer, sink, held.run_id)


def run_dir(recipe: Recipe, run_id: str) -> Path | None:
    """Where a run keeps its checkpoints: OUTPUT_DIR/<run id>, a folder of its own (None without checkpoints).

    Only ever this path, built from the recipe and the run's checked id: never the folder a registry
    row records, which anyone who can write the registry could point anywhere.

    Raises:
        UnsafePathError: the id is not a plain name, or the folder is a symbolic link (writes and
            deletions there would land elsewhere).
    """
    if not recipe.train.checkpoint:
        return None
    folder = child_path(Path(recipe.train.output_dir), run_id, "run id")
    if folder.is_symlink():
        raise UnsafePathError(f"run {run_id}: its checkpoint folder {folder} is a symbolic link; remove it")
    return folder


def _checkpoint_plan(info: RunInfo, recipe: Recipe) -> tuple[Path | None, str]:
    """Where this attempt keeps its checkpoints, and how it starts (recorded in the run's attempts)."""
    folder = run_dir(recipe, info.id)
    if folder is None:
        return None, "fresh" if info.started_at is None else "restarted: checkpoints are off"
    if (folder / "last.pt").is_file():
        return folder, f"resumed from {folder / 'last.pt'}"
    if info.started_at is None:
        return folder, "fresh"
    if info.checkpoint_dir and Path(info.checkpoint_dir) != folder:
        return folder, f"restarted: its checkpoints were recorded in {info.checkpoint_dir}, not in {folder} here"
    return folder, "restarted: no checkpoint had been written"


def _fit(trainer: Trainer, run: RunSink, run_id: str) -> RunResult:
    """Tell the front end the run starts, then train it to the end through ``run``."""
    on_start = trainer.callbacks.on_start
    if on_start is not None:
        train = trainer.recipe.train
        on_start(RunStart(run_id, trainer.seed, str(trainer.device), train.epochs, trainer.steps_per_epoch(),
                          trainer.start_epoch))  # fmt: skip
    last: EpochRecord | None = None
    with contextlib.closing(trainer.fit(run)) as epochs:
        for record in epochs:
            last = record
    return RunResult(run_id, trainer.seed, last, run.checkpoint_dir)
