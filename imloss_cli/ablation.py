"""Ablation grids: the cartesian product of a few recipe fields, times seeds, as one registry group.

Every trial is queued before any trains, so the group's plan is in the registry from the start.
A trial whose fingerprint (configuration + seed + code version) already FINISHED is skipped, and an
unfinished one is resumed, so rerunning the same command picks the group up where it stopped.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from imloss_cli.jobs import Job, run_jobs
from imloss_cli.recipe import Recipe, RecipeError, config_hash, parse_value, validate_recipe
from imloss_cli.registry import Registry, RegistryError
from imloss_cli.runner import Callbacks, queue_run, resume_run, run_identity

SEED_KEY = "train.seed"
# The ablate command's named axes and the recipe fields they sweep.
NAMED_AXES = {"im_weight": "loss.im_weight", "surrogate": "surrogate.schedule", "timesteps": "model.timesteps"}


def split_values(text: str) -> list[Any]:
    """'0,1,2' -> [0, 1, 2]; 'esg,fixed' -> ['esg', 'fixed'] (each item read as a TOML value)."""
    return [parse_value(item.strip()) for item in text.split(",") if item.strip()]


@dataclass(frozen=True)
class GridSpec:
    """The axes of an ablation (dotted field -> values) and its seeds (None: the recipe's own)."""

    axes: dict[str, list[Any]]
    seeds: list[int] | None

    @classmethod
    def from_options(
        cls,
        im_weight: str | None,
        surrogate: str | None,
        timesteps: str | None,
        grid: list[str],
        seeds: int | None,
        seed: str | None,
    ) -> GridSpec:
        """Read the ablate command's options.

        Raises:
            RecipeError: a malformed --grid item, no axis at all, or both --seeds and --seed.
        """
        axes: dict[str, list[Any]] = {}
        for name, text in (("im_weight", im_weight), ("surrogate", surrogate), ("timesteps", timesteps)):
            if text is not None:
                axes[NAMED_AXES[name]] = split_values(text)
        problems = []
        for item in grid:
            key, sep, values = item.partition("=")
            if not sep or not key.strip():
                problems.append(f"--grid {item!r}: expected KEY=V1,V2, e.g. loss.im_target=membrane,rate")
            else:
                axes[key.strip()] = split_values(values)
        if not axes:
            problems.append("no axis to ablate: give --im-weight, --surrogate, --timesteps or --grid KEY=V1,V2")
        if seeds is not None and seed is not None:
            problems.append("give either --seeds N or --seed A,B,..., not both")
        if seeds is not None and seeds < 1:
            problems.append(f"--seeds: must be at least 1, got {seeds}")
        seed_list = list(range(seeds)) if seeds is not None else None if seed is None else split_values(seed)
        if seed_list is not None and not all(isinstance(s, int) and s >= 0 for s in seed_list):
            problems.append(f"--seed: seeds are non-negative integers, got {seed!r}")
        if problems:
            raise RecipeError(problems, "ablate")
        return cls(axes, seed_list)


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
class Trial:
    values: dict[str, Any]  # axis -> value, seed included
    recipe: Recipe
    fingerprint: str

    @property
    def label(self) -> str:
        return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.values.items())


@dataclass(frozen=True)
class TrialOutcome:
    trial: Trial
    run_id: str | None
    status: str  # FINISHED, SKIPPED (finished before), FAILED, KILLED, PLANNED (dry run)
    test_acc: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class AblationResult:
    group_id: str | None
    outcomes: list[TrialOutcome]

    @property
    def failed(self) -> list[TrialOutcome]:
        return [o for o in self.outcomes if o.status in ("FAILED", "KILLED")]


def plan_trials(base: Recipe, axes: dict[str, Sequence[Any]], seeds: Sequence[int]) -> list[Trial]:
    """Every combination of the axis values (in the order given), seeds varying fastest.

    Raises:
        RecipeError: an empty axis or seed list, or a combination that is not a valid recipe
            (all problems of all trials at once).
    """
    empty = [f"{k}: no values given" for k, v in axes.items() if len(v) == 0]
    if not seeds:
        empty.append("seeds: no seeds given")
    if empty:
        raise RecipeError(empty, "ablation")
    grid = {**axes, SEED_KEY: list(seeds)}
    trials, problems = [], []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        try:
            recipe = base.with_overrides(values)
        except RecipeError as e:
            problems += [p for p in e.problems if p not in problems]
            continue
        trials.append(Trial(values, recipe, run_identity(recipe)[1]))
    if problems:
        raise RecipeError(problems, "ablation")
    return trials


def find_or_create_group(registry: Registry, base: Recipe, axes: dict[str, Sequence[Any]], seeds: Sequence[int], argv: list[str]) -> str:
    """The group of an identical earlier command (same base configuration, axes and seeds), or a new one."""
    axes_record = {**{k: list(v) for k, v in axes.items()}, SEED_KEY: list(seeds)}
    base_record = {"config_hash": config_hash(base), "recipe": base.model_dump(mode="json")}
    for group in registry.list_groups():
        if group.axes == axes_record and group.base_recipe.get("config_hash") == base_record["config_hash"]:
            return group.id
    name = f"{base.name}: " + " x ".join(k.rsplit(".", 1)[-1] for k in axes_record)
    return registry.create_group(name, base_record, axes_record, argv)


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
    """Plan, queue and train the grid; trials run one after another in this process.

    Args:
        base: the recipe every trial starts from.
        spec: the axes (dotted field -> values) and seeds; no seeds: the base recipe's seed, or 0.
        registry_url: where the group and its runs are recorded.
        argv: the command line, recorded with the group and each run.
        fail_fast: stop at the first failed trial (otherwise report it and go on).
        dry_run: only plan; nothing is written.
        jobs: trials trained at once, each in its own process (1: in this process).
        on_trial: called as (number, total, trial, run_id) before a trial trains; returns its callbacks.
        on_outcome: called with each trial's outcome as soon as it is known.

    Raises:
        RecipeError: the grid is empty or has invalid combinations (nothing written).
        KeyboardInterrupt: the current trial was recorded as KILLED; the rest stay QUEUED.
    """
    axes = spec.axes
    seeds = spec.seeds if spec.seeds is not None else [base.train.seed or 0]
    trials = plan_trials(base, axes, seeds)
    if dry_run:
        return AblationResult(None, [TrialOutcome(t, None, "PLANNED") for t in trials])
    registry = Registry(registry_url)
    group_id = find_or_create_group(registry, base, axes, seeds, argv)
    members = {r.fingerprint: r for r in reversed(registry.list_runs(group_id=group_id))}
    queue: list[tuple[Trial, str, bool]] = []  # (trial, run id, finished before)
    for trial in trials:
        done = registry.find_run_by_fingerprint(trial.fingerprint, group_id=group_id)
        if done is not None and done.status == "FINISHED":
            queue.append((trial, done.id, True))
            continue
        existing = members.get(trial.fingerprint)
        run_id = existing.id if existing is not None else queue_run(registry, trial.recipe, argv=argv, kind="ablate", group_id=group_id)
        queue.append((trial, run_id, False))

    if jobs > 1:
        return AblationResult(group_id, _run_parallel(registry, queue, jobs, registry_url, fail_fast, on_outcome))
    outcomes = []
    for number, (trial, run_id, finished) in enumerate(queue, start=1):
        if finished:
            outcome = TrialOutcome(trial, run_id, "SKIPPED")
        else:
            callbacks = on_trial(number, len(queue), trial, run_id) if on_trial else Callbacks()
            outcome = _train_trial(registry, trial, run_id, registry_url, argv, callbacks)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        if fail_fast and outcome.status == "FAILED":
            break
    return AblationResult(group_id, outcomes)


def _train_trial(
    registry: Registry, trial: Trial, run_id: str, registry_url: str, argv: list[str], callbacks: Callbacks
) -> TrialOutcome:
    try:
        result = resume_run(run_id, registry_url=registry_url, argv=argv, callbacks=callbacks)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # the group goes on; a trial that failed before it started is closed here
        message = f"{type(e).__name__}: {e}"
        if registry.get_run(run_id).status == "QUEUED":
            registry.finish_run(run_id, "FAILED", error_type=type(e).__name__, error_message=str(e))
        return TrialOutcome(trial, run_id, "FAILED", error=message)
    acc = result.last.metrics["test_acc"] if result.last is not None else None
    return TrialOutcome(trial, run_id, "FINISHED", test_acc=acc)


def _finished_outcome(registry: Registry, trial: Trial, run_id: str) -> TrialOutcome:
    """The outcome of a trial as the registry recorded it (for trials trained in other processes)."""
    run = registry.get_run(run_id)
    if run.status != "FINISHED":
        return TrialOutcome(trial, run_id, run.display_status if run.status != "QUEUED" else "FAILED", error=run.error_message)
    metrics = registry.epoch_metrics([run_id])
    acc = metrics[metrics.name == "test_acc"].sort_values("epoch").value
    return TrialOutcome(trial, run_id, "FINISHED", test_acc=float(acc.iloc[-1]) if len(acc) else None)


def _run_parallel(
    registry: Registry,
    queue: list[tuple[Trial, str, bool]],
    jobs: int,
    registry_url: str,
    fail_fast: bool,
    on_outcome: Callable[[TrialOutcome], None] | None,
) -> list[TrialOutcome]:
    outcomes: dict[int, TrialOutcome] = {}
    todo: list[Job] = []
    index_of: dict[str, int] = {}
    for i, (trial, run_id, finished) in enumerate(queue):
        if finished:
            outcomes[i] = TrialOutcome(trial, run_id, "SKIPPED")
            if on_outcome is not None:
                on_outcome(outcomes[i])
        else:
            index_of[run_id] = i
            todo.append(Job(run_id, Path(trial.recipe.train.output_dir) / run_id / "train.log"))

    def done(job: Job, code: int) -> bool:
        i = index_of[job.run_id]
        outcome = _finished_outcome(registry, queue[i][0], job.run_id)
        if outcome.status == "FAILED" and outcome.error is None:
            outcome = TrialOutcome(outcome.trial, job.run_id, "FAILED", error=f"exit code {code}; see {job.log}")
        outcomes[i] = outcome
        if on_outcome is not None:
            on_outcome(outcome)
        return not (fail_fast and outcome.status == "FAILED")

    run_jobs(todo, jobs, registry_url, done)
    return [outcomes[i] for i in sorted(outcomes)]
