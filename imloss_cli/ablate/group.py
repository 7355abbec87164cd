"""An ablation as one registry group: plan the grid, queue every trial, train the unfinished ones.

Every trial is queued before any trains, so the group's plan is in the registry from the start.
A trial whose fingerprint (configuration + seed + code version) already FINISHED is skipped, and an
unfinished one is resumed, so rerunning the same command picks the group up where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imloss_cli.ablate.grid import SEED_KEY, GridSpec, Trial, plan_trials
from imloss_cli.ablate.jobs import Job, run_jobs
from imloss_cli.recipe import Recipe, config_hash, validate_recipe
from imloss_cli.registry import FAILED, FINISHED, KILLED, PLANNED, QUEUED, SKIPPED, Registry, RegistryError, RunInfo
from imloss_cli.train.environment import code_version, git_state
from imloss_cli.train.run import Callbacks, queue_run, resume_run


def latest_train_recipe(registry_url: str, overrides: dict[str, Any]) -> tuple[str, Recipe]:
    """The recipe of the most recent ``imloss train`` run, with overrides applied.

    Raises:
        RegistryError: the registry holds no train run.
    """
    run = Registry(registry_url).latest_run(kind="train")
    if run is None:
        raise RegistryError(f"no train run in the registry {registry_url}; give a recipe: imloss ablate RECIPE ...")
    return run.id, validate_recipe(run.recipe, f"run {run.id}").with_overrides(overrides)


@dataclass(frozen=True)
class TrialOutcome:
    trial: Trial
    run_id: str | None
    status: str  # FINISHED, FAILED, KILLED, SKIPPED (finished before) or PLANNED (dry run)
    test_acc: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class AblationResult:
    group_id: str | None
    outcomes: list[TrialOutcome]

    @property
    def failed(self) -> list[TrialOutcome]:
        return [o for o in self.outcomes if o.status in (FAILED, KILLED)]


@dataclass(frozen=True)
class _Queued:
    trial: Trial
    run_id: str
    finished_before: bool


def find_or_create_group(
    registry: Registry, base: Recipe, axes: dict[str, Sequence[Any]], seeds: Sequence[int], argv: list[str]
) -> str:
    """The group of an identical earlier command (same base configuration, axes and seeds), or a new one."""
    axes_record = {**{k: list(v) for k, v in axes.items()}, SEED_KEY: list(seeds)}
    base_record = {"config_hash": config_hash(base), "recipe": base.model_dump(mode="json")}
    for group in registry.list_groups():
        if group.axes == axes_record and group.base_recipe.get("config_hash") == base_record["config_hash"]:
            return group.id
    name = f"{base.name}: " + " x ".join(k.rsplit(".", 1)[-1] for k in axes_record)
    return registry.create_group(name, base_record, axes_record, argv)


def _members_by_fingerprint(registry: Registry, group_id: str) -> dict[str, RunInfo]:
    """The group's newest run of each fingerprint (one read of the group for all trials)."""
    members: dict[str, RunInfo] = {}
    for run in registry.list_runs(group_id=group_id):  # newest first
        members.setdefault(run.fingerprint, run)
    return members


def run_ablation(
    base: Recipe,
    spec: GridSpec,
    *,
    registry_url: str,
    argv: list[str],
    fail_fast: bool = False,
    dry_run: bool = False,
    jobs: int = 1,
    on_trial: Callable[[int, int, Trial, str], Callbacks] | None = None,
    on_outcome: Callable[[TrialOutcome], None] | None = None,
) -> AblationResult:
    """Plan, queue and train the grid.

    Args:
        base: the recipe every trial starts from.
        spec: the axes (dotted field -> values) and seeds; no seeds: the base recipe's seed, or 0.
        registry_url: where the group and its runs are recorded.
        argv: the command line, recorded with the group and each run.
        fail_fast: stop at the first failed trial (otherwise report it and go on).
        dry_run: only plan; nothing is written.
        jobs: trials trained at once, each in its own process (1: one after another in this process).
        on_trial: called as (number, total, trial, run_id) before a trial trains; returns its callbacks.
        on_outcome: called with each trial's outcome as soon as it is known.

    Raises:
        RecipeError: the grid is empty or has invalid combinations (nothing written).
        KeyboardInterrupt: the current trial was recorded as KILLED; the rest stay QUEUED.
    """
    seeds = spec.seeds if spec.seeds is not None else [base.train.seed or 0]
    version = code_version(git_state())
    trials = plan_trials(base, spec.axes, seeds, version)
    if dry_run:
        return AblationResult(None, [TrialOutcome(t, None, PLANNED) for t in trials])
    registry = Registry(registry_url)
    group_id = find_or_create_group(registry, base, spec.axes, seeds, argv)
    members = _members_by_fingerprint(registry, group_id)
    queue = []
    for trial in trials:
        run = members.get(trial.fingerprint)
        if run is None:
            run_id = queue_run(registry, trial.recipe, argv=argv, kind="ablate", group_id=group_id, version=version)
            queue.append(_Queued(trial, run_id, False))
        else:
            queue.append(_Queued(trial, run.id, run.status == FINISHED))
    if jobs > 1:
        return AblationResult(group_id, _run_parallel(registry, queue, jobs, registry_url, fail_fast, on_outcome))
    outcomes = []
    for number, item in enumerate(queue, start=1):
        if item.finished_before:
            outcome = TrialOutcome(item.trial, item.run_id, SKIPPED)
        else:
            callbacks = on_trial(number, len(queue), item.trial, item.run_id) if on_trial else Callbacks()
            outcome = _train_trial(registry, item, registry_url, argv, callbacks)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        if fail_fast and outcome.status == FAILED:
            break
    return AblationResult(group_id, outcomes)


def _train_trial(
    registry: Registry, item: _Queued, registry_url: str, argv: list[str], callbacks: Callbacks
) -> TrialOutcome:
    try:
        result = resume_run(item.run_id, registry_url=registry_url, argv=argv, callbacks=callbacks)
    except Exception as e:  # the group goes on; a trial that failed before it started is closed here
        if registry.get_run(item.run_id).status == QUEUED:
            registry.finish_run(item.run_id, FAILED, error_type=type(e).__name__, error_message=str(e))
        return TrialOutcome(item.trial, item.run_id, FAILED, error=f"{type(e).__name__}: {e}")
    acc = result.last.metrics["test_acc"] if result.last is not None else None
    return TrialOutcome(item.trial, item.run_id, FINISHED, test_acc=acc)


def _recorded_outcome(registry: Registry, item: _Queued, exit_code: int, log: Path) -> TrialOutcome:
    """The outcome of a trial trained in another process, as the registry recorded it."""
    run = registry.get_run(item.run_id)
    if run.status == FINISHED:
        metrics = registry.epoch_metrics([run.id], names=["test_acc"])
        acc = metrics.sort_values("epoch").value
        return TrialOutcome(item.trial, run.id, FINISHED, test_acc=float(acc.iloc[-1]) if len(acc) else None)
    status = FAILED if run.status == QUEUED else run.display_status
    error = run.error_message or (f"exit code {exit_code}; see {log}" if status == FAILED else None)
    return TrialOutcome(item.trial, run.id, status, error=error)


def _run_parallel(
    registry: Registry,
    queue: list[_Queued],
    jobs: int,
    registry_url: str,
    fail_fast: bool,
    on_outcome: Callable[[TrialOutcome], None] | None,
) -> list[TrialOutcome]:
    outcomes: dict[int, TrialOutcome] = {}
    todo: list[Job] = []
    index_of: dict[str, int] = {}
    for i, item in enumerate(queue):
        if item.finished_before:
            outcomes[i] = TrialOutcome(item.trial, item.run_id, SKIPPED)
            if on_outcome is not None:
                on_outcome(outcomes[i])
        else:
            index_of[item.run_id] = i
            todo.append(Job(item.run_id, Path(item.trial.recipe.train.output_dir) / item.run_id / "train.log"))

    def done(job: Job, code: int) -> bool:
        i = index_of[job.run_id]
        outcomes[i] = _recorded_outcome(registry, queue[i], code, job.log)
        if on_outcome is not None:
            on_outcome(outcomes[i])
        return not (fail_fast and outcomes[i].status == FAILED)

    run_jobs(todo, jobs, registry_url, done)
    return [outcomes[i] for i in sorted(outcomes)]
