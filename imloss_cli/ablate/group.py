"""An ablation as one registry group that any number of workers share.

The first worker plans the grid, claims the group (its unique key) and queues every trial in one
transaction; a worker that starts at the same moment, or later on another machine, finds the same
group and the same rows. Then every worker takes the next claimable trial (QUEUED, LOST, or
FAILED/KILLED before this worker started), claims it with the registry's compare-and-set and
trains it; a trial another live worker holds is left to it. When nothing is left to claim, a worker
waits for the trials running elsewhere, so it can report the complete group. Rerunning the command
therefore trains nothing twice: finished trials are skipped, unfinished ones resumed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imloss_cli.ablate.grid import SEED_KEY, GridSpec, Trial, plan_trials
from imloss_cli.ablate.jobs import run_workers
from imloss_cli.recipe import Recipe, config_hash, validate_recorded
from imloss_cli.registry import (
    FAILED,
    FINISHED,
    KILLED,
    LOST,
    PLANNED,
    QUEUED,
    RUNNING,
    SKIPPED,
    GroupInfo,
    Registry,
    RegistryError,
    RunClaimedError,
    RunFencedError,
    RunInfo,
)
from imloss_cli.train.environment import code_version, git_state
from imloss_cli.train.lifecycle import HEARTBEAT_S, new_run, resume_run
from imloss_cli.train.sink import Callbacks


def latest_train_recipe(registry: Registry, overrides: dict[str, Any]) -> tuple[str, Recipe]:
    """The recipe of the most recent ``imloss train`` run, with overrides applied.

    Raises:
        RegistryError: the registry holds no train run.
    """
    run = registry.latest_run(kind="train")
    if run is None:
        raise RegistryError(f"no train run in the registry {registry.url}; give a recipe: imloss ablate RECIPE ...")
    return run.id, validate_recorded(run.recipe, f"run {run.id}").with_overrides(overrides)


@dataclass(frozen=True)
class TrialOutcome:
    trial: Trial
    run_id: str | None
    status: str  # FINISHED, FAILED, KILLED, LOST, RUNNING (elsewhere), SKIPPED or PLANNED (dry run)
    test_acc: float | None = None
    error: str | None = None
    elsewhere: str | None = None  # "HOST (pid PID)" of the worker that holds or trained it, if not this one


@dataclass(frozen=True)
class AblationResult:
    group_id: str | None
    outcomes: list[TrialOutcome]

    @property
    def failed(self) -> list[TrialOutcome]:
        return [o for o in self.outcomes if o.status in (FAILED, KILLED, LOST)]

    @property
    def complete(self) -> bool:
        """Every trial has ended (so the group's report is final)."""
        return self.group_id is not None and all(o.status not in (RUNNING, QUEUED) for o in self.outcomes)


def group_key(base: Recipe, axes_record: dict[str, list[Any]]) -> str:
    """What makes two ablate commands the same ablation: the base configuration, the axes and seeds."""
    blob = json.dumps({"config_hash": config_hash(base), "axes": axes_record}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def claim_group(
    registry: Registry, base: Recipe, axes: dict[str, Sequence[Any]], seeds: Sequence[int], argv: list[str]
) -> str:
    """The group of this base recipe, axes and seeds: found by its unique key, or created now."""
    axes_record = {**{k: list(v) for k, v in axes.items()}, SEED_KEY: list(seeds)}
    base_record = {"config_hash": config_hash(base), "recipe": base.model_dump(mode="json")}
    name = f"{base.name}: " + " x ".join(k.rsplit(".", 1)[-1] for k in axes_record)
    return registry.claim_group(group_key(base, axes_record), name, base_record, axes_record, argv)


@dataclass(frozen=True)
class WorkOptions:
    """How a worker works on a group, and what it tells a front end.

    Attributes:
        fail_fast: claim no further trial after one failed here.
        jobs: worker processes on this machine (1: this process trains).
        wait: when nothing is left to claim, wait for the trials running elsewhere.
        heartbeat_s: seconds between the heartbeats of a trial this worker trains.
        on_trial: called as (number, total, trial, run_id) before a trial trains here; returns its callbacks.
        on_outcome: called with each trial's outcome as soon as it is known.
        on_wait: called with the trials running elsewhere whenever that set changes while waiting.
        on_taken_over: called when a trial this worker trained was taken over by another worker
            (this one had been paused past its heartbeat); the worker goes on with the grid.
        on_job_failed: called with the log and exit code of a ``--jobs`` worker that ended in an
            error of its own (not a failed trial); this worker trains what it left.
    """

    fail_fast: bool = False
    jobs: int = 1
    wait: bool = True
    heartbeat_s: float = HEARTBEAT_S
    on_trial: Callable[[int, int, Trial, str], Callbacks] | None = None
    on_outcome: Callable[[TrialOutcome], None] | None = None
    on_wait: Callable[[list[TrialOutcome]], None] | None = None
    on_taken_over: Callable[[RunFencedError], None] | None = None
    on_job_failed: Callable[[Path, int], None] | None = None


@dataclass(frozen=True)
class AblationPlan:
    """An ablation's trials, planned from a base recipe and a grid before anything is written."""

    base: Recipe
    axes: dict[str, list[Any]]
    seeds: list[int]
    version: str  # the code version every trial's fingerprint holds
    trials: list[Trial]

    @property
    def dry_run(self) -> AblationResult:
        """What ``--dry-run`` shows: every trial, nothing recorded."""
        return AblationResult(None, [TrialOutcome(t, None, PLANNED) for t in self.trials])


def plan_ablation(base: Recipe, spec: GridSpec) -> AblationPlan:
    """The trials of ``spec`` over ``base``; no seeds given: the base recipe's seed, or 0.

    Raises:
        RecipeError: the grid is empty or has invalid combinations (nothing is written).
    """
    seeds = spec.seeds if spec.seeds is not None else [base.train.seed or 0]
    version = code_version(git_state())
    axes = {k: list(v) for k, v in spec.axes.items()}
    return AblationPlan(base, axes, list(seeds), version, plan_trials(base, spec.axes, seeds, version))


def run_ablation(
    plan: AblationPlan | None,
    *,
    registry: Registry,
    argv: list[str],
    group: str | None = None,
    work: WorkOptions = WorkOptions(),
) -> AblationResult:
    """Queue the planned grid as a group (or join ``group``), then work on it as one worker among any number.

    Args:
        plan: the trials (:func:`plan_ablation`); None with ``group``.
        registry: where the group and its runs are recorded.
        argv: the command line, recorded with the group and each run.
        group: join this existing group (id or prefix) instead of queueing a plan.
        work: how this worker works (see :class:`WorkOptions`).

    Raises:
        RegistryError: no such group.
        KeyboardInterrupt: the current trial was recorded as KILLED; the rest stay as they are.
    """
    started_at = datetime.now(UTC)
    if group is not None:
        group_id = registry.get_group(group).id
    elif plan is not None:
        group_id = claim_group(registry, plan.base, plan.axes, plan.seeds, argv)
        # One transaction for the whole grid: workers queueing it at once end with one row per trial.
        registry.queue_runs(group_id, [new_run(t.recipe, argv=argv, kind="ablate", version=plan.version)
                                       for t in plan.trials])  # fmt: skip
    else:
        raise ValueError("run_ablation needs a plan, or a group to join")
    return work_on_group(registry, group_id, started_at, argv=argv, work=work)


def work_on_group(
    registry: Registry,
    group_id: str,
    started_at: datetime,
    *,
    argv: list[str],
    work: WorkOptions = WorkOptions(),
) -> AblationResult:
    """Work on a queued group as one worker (with ``work.jobs - 1`` more on this machine)."""
    info = registry.get_group(group_id)
    worker = _Worker(registry, info, started_at, argv, work)
    if work.jobs > 1:
        options = ["--heartbeat", str(work.heartbeat_s), *(["--fail-fast"] if work.fail_fast else [])]
        first = registry.list_runs(group_id=group_id)[-1]
        log_dir = Path(validate_recorded(first.recipe).train.output_dir) / f"group-{group_id}"
        codes = run_workers(
            "ablate", group_id, work.jobs, registry_env=registry.child_environment(), options=options, log_dir=log_dir,
            poll_s=worker.poll_s, on_poll=worker.report_new,
        )  # fmt: skip
        for slot, code in enumerate(codes):
            # A trial failing is reported as its outcome (exit 1); anything else is the worker's own failure.
            if code not in (0, 1) and work.on_job_failed is not None:
                work.on_job_failed(log_dir / f"worker-{slot}.log", code)
    worker.work()
    return AblationResult(group_id, worker.outcomes())


class _Worker:
    """One worker's view of a group: what it trained, and the outcome of every trial."""

    def __init__(
        self,
        registry: Registry,
        group: GroupInfo,
        started_at: datetime,
        argv: list[str],
        options: WorkOptions,
    ) -> None:
        self.registry, self.group, self.started_at = registry, group, started_at
        self.argv, self.options = argv, options
        self.poll_s = min(5.0, options.heartbeat_s)
        self.here: dict[str, TrialOutcome] = {}  # trials this worker trained
        self.lost_here: set[str] = set()  # trials taken over from this worker: another holds them now
        self.reported: set[str] = set()

    def runs(self) -> list[RunInfo]:
        return list(reversed(self.registry.list_runs(group_id=self.group.id)))  # plan order

    def work(self) -> None:
        """Claim and train until nothing is left; then, if ``options.wait``, until nothing runs elsewhere."""
        fail_fast, wait, on_wait = self.options.fail_fast, self.options.wait, self.options.on_wait
        shown: set[str] = set()
        while True:
            runs = self.runs()
            failed_here = any(o.status == FAILED for o in self.here.values())
            todo = [r for r in runs if self._claimable(r)] if not (fail_fast and failed_here) else []
            if todo:
                self._train(todo[0], runs)
                continue
            self.report_new(runs)
            elsewhere = [r for r in runs if r.display_status == RUNNING and r.id not in self.here]
            if not elsewhere or not wait:
                return
            if on_wait is not None and {r.id for r in elsewhere} != shown:
                shown = {r.id for r in elsewhere}
                on_wait([self._outcome(r) for r in elsewhere])
            time.sleep(self.poll_s)

    def _claimable(self, run: RunInfo) -> bool:
        if run.id in self.here or run.id in self.lost_here:  # tried by this worker in this command
            return False
        if run.display_status in (QUEUED, LOST):
            return True
        # Failed or killed before this command began: rerunning the ablation retries it.
        ended_before = run.ended_at is not None and run.ended_at < self.started_at
        return run.status in (FAILED, KILLED) and ended_before

    def _train(self, run: RunInfo, runs: list[RunInfo]) -> None:
        trial = self._trial(run)
        number = [r.id for r in runs].index(run.id) + 1
        on_trial = self.options.on_trial
        callbacks = on_trial(number, len(runs), trial, run.id) if on_trial else Callbacks()
        try:
            result = resume_run(
                self.registry, run.id, argv=self.argv, callbacks=callbacks, heartbeat_s=self.options.heartbeat_s
            )
        except RunClaimedError:  # another worker claimed it between our read and our claim
            return
        except RunFencedError as e:  # paused past the heartbeat here, taken over there: the grid goes on
            self.lost_here.add(run.id)
            if self.options.on_taken_over is not None:
                self.options.on_taken_over(e)
            return
        except RegistryError:  # the registry itself fails: no trial can be recorded, so no worker goes on
            raise
        except Exception as e:
            # The run was closed as FAILED by its lifecycle (or, failing before its claim, left as it
            # was, and not retried by this worker); the group goes on.
            outcome = TrialOutcome(trial, run.id, FAILED, error=f"{type(e).__name__}: {e}")
        else:
            acc = result.last.metrics["test_acc"] if result.last is not None else None
            outcome = TrialOutcome(trial, run.id, FINISHED, test_acc=acc)
        self.here[run.id] = outcome
        self._report(outcome)

    def report_new(self, runs: list[RunInfo] | None = None) -> None:
        """Report the trials that ended (anywhere) since the last call."""
        for run in runs if runs is not None else self.runs():
            if run.is_terminal and run.id not in self.reported:
                self._report(self._outcome(run))

    def _report(self, outcome: TrialOutcome) -> None:
        if outcome.run_id is not None:
            self.reported.add(outcome.run_id)
        if self.options.on_outcome is not None:
            self.options.on_outcome(outcome)

    def outcomes(self) -> list[TrialOutcome]:
        return [self._outcome(r) for r in self.runs()]

    def _outcome(self, run: RunInfo) -> TrialOutcome:
        if run.id in self.here:
            return self.here[run.id]
        trial = self._trial(run)
        status = run.display_status
        if status == FINISHED and run.ended_at is not None and run.ended_at < self.started_at:
            return TrialOutcome(trial, run.id, SKIPPED)
        acc = None
        if status == FINISHED:
            values = self.registry.epoch_metrics([run.id], names=["test_acc"]).sort_values("epoch").value
            acc = float(values.iloc[-1]) if len(values) else None
        where = f"{run.host} (pid {run.pid})"
        return TrialOutcome(trial, run.id, status, test_acc=acc, error=run.error_message, elsewhere=where)

    def _trial(self, run: RunInfo) -> Trial:
        values = {axis: _dotted(run.recipe, axis) for axis in self.group.axes}
        return Trial(values, validate_recorded(run.recipe, f"run {run.id}"), run.fingerprint)


def _dotted(data: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        data = data.get(part, {}) if isinstance(data, dict) else {}
    return None if data == {} else data
