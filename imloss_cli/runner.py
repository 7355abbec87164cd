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
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from imloss_cli.engine import EpochRecord, StepCallback, Trainer
from imloss_cli.environment import code_version, environment, git_state
from imloss_cli.recipe import Recipe, config_hash, run_fingerprint
from imloss_cli.registry import Registry


@dataclass(frozen=True)
class RunStart:
    run_id: str
    seed: int
    device: str
    epochs: int
    steps_per_epoch: int


@dataclass(frozen=True)
class RunResult:
    run_id: str
    seed: int
    last: EpochRecord
    checkpoint_dir: Path | None


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the run is closed as KILLED like Ctrl-C."""


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
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
    """The recipe with ``train.seed`` filled in (drawn when absent), as it is recorded."""
    if recipe.train.seed is not None:
        return recipe
    return recipe.with_overrides({"train.seed": secrets.randbelow(2**31)})


def train_run(
    recipe: Recipe,
    *,
    registry_url: str,
    argv: list[str],
    on_start: Callable[[RunStart], None] | None = None,
    on_step: StepCallback | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> RunResult:
    """Train ``recipe`` and record it in the registry at ``registry_url``.

    Returns:
        The run id, seed, last epoch's record and checkpoint directory.

    Raises:
        RegistryError, DataError, TrainingError: before any row is written (except divergence).
        KeyboardInterrupt: after the run was recorded as KILLED.
    """
    registry = Registry(registry_url)
    recipe = resolve_seed(recipe)
    seed = recipe.train.seed
    assert seed is not None
    trainer = Trainer(recipe, seed, on_step=on_step)
    git = git_state()
    version = code_version(git)
    run_id = registry.create_run(
        name=recipe.name,
        recipe=recipe.model_dump(mode="json"),
        config_hash=config_hash(recipe),
        fingerprint=run_fingerprint(recipe, seed, version),
        seed=seed,
        code_version=version,
        argv=argv,
        environment=environment(trainer.device),
        git_commit=git.commit,
        git_dirty=git.dirty,
    )
    checkpoint_dir = Path(recipe.train.output_dir) / run_id if recipe.train.checkpoint else None
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        registry.set_checkpoint_dir(run_id, str(checkpoint_dir))
        if git.dirty:
            (checkpoint_dir / "code.diff").write_text(git.diff)
    trainer.checkpoint_dir = checkpoint_dir
    if on_start is not None:
        on_start(RunStart(run_id, seed, str(trainer.device), recipe.train.epochs, trainer.steps_per_epoch()))
    last: EpochRecord | None = None
    with _sigterm_as_exception():
        try:
            for record in trainer.fit():
                registry.log_epoch(run_id, record.epoch, record.metrics, [(s.index, s.name, s.as_dict()) for s in record.layers])
                last = record
                if on_epoch is not None:
                    on_epoch(record)
        except KeyboardInterrupt:
            registry.finish_run(run_id, "KILLED", error_type="KeyboardInterrupt", error_message="interrupted")
            raise
        except BaseException as e:
            registry.finish_run(run_id, "FAILED", error_type=type(e).__name__, error_message=str(e), traceback=traceback.format_exc())
            raise
    registry.finish_run(run_id, "FINISHED")
    assert last is not None
    return RunResult(run_id, seed, last, checkpoint_dir)
