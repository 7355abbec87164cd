"""One worker of a study: resume what is unfinished, ask Optuna for the next trial, train it as a registry run, tell.

A study is two records: its group in the registry (the runs: what trained, how far, with what
result) and its Optuna study (what was asked and what was told). The registry is the truth about
runs; every step below reads it afresh, so any number of workers, on one machine (``--jobs``) or
several, share a study as they share an ablation. A worker loops over:

1. **tell**: a run of the group that ended as FINISHED, PRUNED or diverged while Optuna still has
   its trial RUNNING (its worker died between the two, or ``imloss resume`` finished it) is told
   now. Optuna's storage refuses to finish a trial twice, so two workers telling at once tell once.
2. **train**: the next claimable run (QUEUED, LOST, or KILLED or FAILED, not diverged, before this
   worker started) is claimed and trained through ``train.lifecycle.resume_run``, exactly as an
   ablation's trial: heartbeat, fencing, resumed from its last checkpoint. Then it is told.
3. **ask**: holding the group's lock (``Registry.queue_planned``), a trial whose asker died before
   its run was queued gets its run; otherwise, while the study has fewer than ``--trials`` trials,
   Optuna is asked for the next one (the enqueued baseline first) and its run is queued in the
   same turn, so no two workers ever ask the last trial twice. Step 2 then trains it, here or in
   whichever worker claims it first.
4. **wait** for trials running elsewhere (a dead worker's trial turns LOST and step 2 takes it
   over), or return (``--no-wait``).

A diverged run is a result of its values (Optuna: FAIL, never retried); any other failure is the
machine's, and, as in ``ablate``, the run is retried by the next command while its trial waits.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from imloss_cli.recipe import Recipe, RecipeError
from imloss_cli.registry import (
    DIVERGED,
    FAILED,
    FINISHED,
    INVALID,
    KILLED,
    LOST,
    PRUNED,
    QUEUED,
    RUNNING,
    SKIPPED,
    NewRun,
    Registry,
    RegistryError,
    RunClaimedError,
    RunFencedError,
    RunInfo,
)
from imloss_cli.train.lifecycle import HEARTBEAT_S, new_run, resume_run
from imloss_cli.train.sink import Callbacks, EpochRecord, RunPruned

from .front import selected_epochs, trial_status
from .space import StudySpec, recipe_values, trial_fingerprint, trial_number
from .storage import EPOCH_ATTR, FAILURE_ATTR, RUN_ATTR, SEED_ATTR, make_sampler, sampler_seed, suggest


@dataclass(frozen=True)
class TrialOutcome:
    """Where a study's trial stands, as a front end shows it."""

    number: int
    run_id: str | None
    status: str  # a run status, or SKIPPED (told before this command), DIVERGED, INVALID
    params: dict[str, Any]
    values: dict[str, float] = dataclasses.field(default_factory=dict)  # the objectives at the selected epoch
    error: str | None = None
    elsewhere: str | None = None  # "HOST (pid PID)" of the worker that holds or trained it, if not this one

    @property
    def label(self) -> str:
        return " ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in self.params.items())


@dataclass(frozen=True)
class TuneOptions:
    """How a worker works on a study, and what it tells a front end.

    Attributes:
        trials: the study's trials in total (rerunning with more continues it).
        seed: the study's sampler seed: trial N is sampled with ``storage.sampler_seed(seed, N)``.
        jobs: worker processes on this machine (1: this process trains).
        wait: when nothing is left to claim or ask, wait for the trials running elsewhere.
        heartbeat_s: seconds between the heartbeats of a trial this worker trains.
        on_trial: called as (trial number, trials, label, run id) before a trial trains here; returns its callbacks.
        on_outcome: called with each trial's outcome as soon as it is known.
        on_wait: called with the trials running elsewhere whenever that set changes while waiting.
        on_taken_over: a trial this worker trained was taken over (it had been paused past its heartbeat).
        on_job_failed: a ``--jobs`` worker ended in an error of its own: its log and exit code.
    """

    trials: int
    seed: int = 0
    jobs: int = 1
    wait: bool = True
    heartbeat_s: float = HEARTBEAT_S
    on_trial: Callable[[int, int, str, str], Callbacks] | None = None
    on_outcome: Callable[[TrialOutcome], None] | None = None
    on_wait: Callable[[list[TrialOutcome]], None] | None = None
    on_taken_over: Callable[[RunFencedError], None] | None = None
    on_job_failed: Callable[[Path, int], None] | None = None


@dataclass(frozen=True)
class StudyContext:
    """What every worker of one study shares: the group, its base recipe and spec, the Optuna study."""

    group_id: str
    key: str
    base: Recipe
    spec: StudySpec
    study: optuna.Study
    version: str  # the code version recorded with each run it queues


class StudyWorker:
    """One worker's loop over a study (see the module docstring)."""

    def __init__(
        self, registry: Registry, context: StudyContext, options: TuneOptions, argv: list[str], started_at: datetime
    ) -> None:
        self.registry, self.context, self.options = registry, context, options
        self.study, self.spec = context.study, context.spec
        self.argv, self.started_at = argv, started_at
        self.poll_s = min(5.0, options.heartbeat_s)
        self.here: dict[str, TrialOutcome] = {}  # runs trained by this worker
        self.lost_here: set[str] = set()  # runs taken over from this worker
        self.reported: set[int] = set()  # trial numbers whose outcome was reported

    # ------------------------------------------------------------------------------- the loop

    def work(self) -> None:
        """Tell, train, ask until nothing is left; then, with ``options.wait``, until nothing runs elsewhere."""
        shown: set[str] = set()
        while True:
            runs = self.runs()
            self._tell_ended(runs)
            todo = [r for r in runs if self._claimable(r)]
            if todo:
                self._train(todo[0])
                continue
            if self._ask():
                continue
            self.report_new(runs)
            elsewhere = [r for r in runs if r.display_status == RUNNING and r.id not in self.here]
            if not elsewhere or not self.options.wait:
                return
            if self.options.on_wait is not None and {r.id for r in elsewhere} != shown:
                shown = {r.id for r in elsewhere}
                self.options.on_wait([self._outcome(r) for r in elsewhere])
            time.sleep(self.poll_s)

    def runs(self) -> list[RunInfo]:
        """The study's runs in trial order."""
        runs = self.registry.list_runs(group_id=self.context.group_id)
        return sorted(runs, key=lambda r: trial_number(r.fingerprint) or 0)

    def _claimable(self, run: RunInfo) -> bool:
        if run.id in self.here or run.id in self.lost_here:
            return False
        if run.display_status in (QUEUED, LOST):
            return True
        # Stopped before this command began, and not by its own values: rerunning the study retries it.
        ended_before = run.ended_at is not None and run.ended_at < self.started_at
        return ended_before and trial_status(run) in (KILLED, FAILED)

    # ------------------------------------------------------------------------------- train

    def _train(self, run: RunInfo) -> None:
        number = _number(run)
        frozen = self._trials().get(number)
        on_trial = self.options.on_trial
        label = _outcome_label(run, self.spec)
        callbacks = on_trial(number, self.options.trials, label, run.id) if on_trial else Callbacks()
        if frozen is not None and frozen.state == TrialState.RUNNING and self.spec.pruner != "none":
            callbacks = dataclasses.replace(callbacks, on_epoch=self._pruning(run, frozen, callbacks.on_epoch))
        try:
            resume_run(self.registry, run.id, argv=self.argv, callbacks=callbacks, heartbeat_s=self.options.heartbeat_s)
        except RunClaimedError:  # another worker claimed it between our read and our claim
            return
        except RunFencedError as e:  # paused past the heartbeat here, taken over there: the study goes on
            self.lost_here.add(run.id)
            if self.options.on_taken_over is not None:
                self.options.on_taken_over(e)
            return
        except RegistryError:  # the registry itself fails: no trial can be recorded
            raise
        except RunPruned:
            pass
        except Exception:  # closed as FAILED by its lifecycle (DivergedError: the values' own result)
            pass
        ended = self.registry.get_run(run.id)
        self._tell_ended([ended])
        outcome = self._outcome(ended, here=True)
        self.here[run.id] = outcome
        self._report(outcome)

    def _pruning(
        self, run: RunInfo, frozen: FrozenTrial, then: Callable[[EpochRecord], None] | None
    ) -> Callable[[EpochRecord], None]:
        """``on_epoch`` that reports the objective to the pruner and stops the run when it says so."""
        trial = optuna.Trial(self.study, frozen._trial_id)
        metric = self.spec.objectives[0].metric
        # Epochs an earlier attempt stored but did not report (it died in between) are reported now.
        logged = self.registry.epoch_metrics([run.id], names=[metric])
        for epoch, value in zip(logged["epoch"], logged["value"]):
            if int(epoch) not in frozen.intermediate_values and math.isfinite(value):
                trial.report(float(value), int(epoch))

        def on_epoch(record: EpochRecord) -> None:
            if then is not None:
                then(record)
            value = record.metrics.get(metric)
            if value is None or not math.isfinite(value):
                return
            trial.report(float(value), record.epoch)
            if trial.should_prune():
                raise RunPruned(
                    f"pruned after epoch {record.epoch} by the {self.spec.pruner} pruner ({metric} {value:.4g})"
                )

        return on_epoch

    # ------------------------------------------------------------------------------- tell

    def _trials(self) -> dict[int, FrozenTrial]:
        return {t.number: t for t in self.study.get_trials(deepcopy=False)}

    def _tell_ended(self, runs: list[RunInfo]) -> None:
        """Tell Optuna every run of ``runs`` that has a result while its trial is still RUNNING."""
        ended = [r for r in runs if trial_status(r) in (FINISHED, PRUNED, DIVERGED)]
        if not ended:
            return
        trials = self._trials()
        for run in ended:
            frozen = trials.get(_number(run))
            if frozen is not None and frozen.state == TrialState.RUNNING:
                self._tell(run, frozen)

    def _tell(self, run: RunInfo, frozen: FrozenTrial) -> None:
        trial = optuna.Trial(self.study, frozen._trial_id)
        try:
            if RUN_ATTR not in frozen.user_attrs:
                trial.set_user_attr(RUN_ATTR, run.id)
            if run.status == PRUNED:
                self.study.tell(frozen.number, state=TrialState.PRUNED, skip_if_finished=True)
                return
            if run.status == FAILED:  # diverged
                trial.set_user_attr(FAILURE_ATTR, run.error_message or "failed")
                self.study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
                return
            row = self._selected(run.id)
            values = [row.get(o.metric, math.nan) for o in self.spec.objectives] if row else []
            if not values or not all(math.isfinite(v) for v in values):
                trial.set_user_attr(FAILURE_ATTR, f"no finite {', '.join(self.spec.metrics)} at any epoch")
                self.study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
                return
            trial.set_user_attr(EPOCH_ATTR, int(row["epoch"]))
            for c in self.spec.constraints:
                if c.text not in frozen.constraints:
                    value = row.get(c.metric, math.nan)
                    trial.set_constraint(c.text, c.violation(value) if math.isfinite(value) else math.inf)
            self.study.tell(frozen.number, values, skip_if_finished=True)
        except UpdateFinishedTrialError:  # another worker told it a moment ago: told once
            return

    def _selected(self, run_id: str) -> dict[str, float] | None:
        """The run's numbers at its selected epoch (``front.selected_epochs``), or None."""
        frame = selected_epochs(self.registry.epoch_metrics([run_id], names=self.spec.metrics), self.spec.metrics)
        return None if frame.empty else {k: float(v) for k, v in frame.iloc[0].drop("run_id").items()}

    # ------------------------------------------------------------------------------- ask

    def _ask(self) -> bool:
        """Give an orphaned trial its run, or ask Optuna for the next trial and queue its run, in one turn
        holding the group's lock. False: the study has all its trials."""
        asked: list[int] = []

        def plan(known: Any) -> list[NewRun]:
            trials = self.study.get_trials(deepcopy=False)
            key = self.context.key
            orphans = [
                t for t in trials if t.state == TrialState.RUNNING and trial_fingerprint(key, t.number) not in known
            ]
            if orphans:  # its asker died between the ask and the queue: the values it drew are kept
                trial = optuna.Trial(self.study, orphans[0]._trial_id)
            else:
                waiting = any(t.state == TrialState.WAITING for t in trials)
                if len(trials) >= self.options.trials and not waiting:
                    return []
                if self.spec.baseline and not trials:
                    self.study.enqueue_trial(recipe_values(self.context.base, self.spec))
                trial = self.study.ask()  # values are drawn lazily, by the sampler set next
            seed = sampler_seed(self.options.seed, trial.number)
            self.study.sampler = make_sampler(seed)
            if SEED_ATTR not in trial.user_attrs:
                trial.set_user_attr(SEED_ATTR, seed)
            asked.append(trial.number)
            new = self._new_run(trial)
            return [] if new is None else [new]

        self.registry.queue_planned(self.context.group_id, plan)
        return bool(asked)

    def _new_run(self, trial: optuna.Trial) -> NewRun | None:
        """The registry's run of a trial: the base recipe with the trial's values (None: they make no recipe)."""
        base, number = self.context.base, trial.number
        params = {p.field: suggest(trial, p) for p in self.spec.params}
        try:
            recipe = base.with_overrides({"train.seed": base.train.seed or 0, **params})
        except RecipeError as e:
            reason = "; ".join(e.problems)
            trial.set_user_attr(FAILURE_ATTR, f"no valid recipe: {reason}")
            self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            self._report(TrialOutcome(number, None, INVALID, params, error=reason))
            return None
        run = new_run(recipe, argv=self.argv, kind="tune", version=self.context.version)
        return dataclasses.replace(
            run, name=f"{recipe.name} trial {number}", fingerprint=trial_fingerprint(self.context.key, number)
        )

    # ------------------------------------------------------------------------------- outcomes

    def report_new(self, runs: list[RunInfo] | None = None) -> None:
        """Report the trials that ended (anywhere) since the last call."""
        for run in runs if runs is not None else self.runs():
            if run.is_terminal and _number(run) not in self.reported:
                self._report(self._outcome(run))

    def _report(self, outcome: TrialOutcome) -> None:
        self.reported.add(outcome.number)
        if self.options.on_outcome is not None:
            self.options.on_outcome(outcome)

    def outcomes(self) -> list[TrialOutcome]:
        """Every trial of the study, in trial order (a trial without run: INVALID, or being queued)."""
        runs = {_number(r): r for r in self.runs()}
        out = []
        for number, frozen in sorted(self._trials().items()):
            if number in runs:
                out.append(self.here.get(runs[number].id) or self._outcome(runs[number]))
            elif frozen.state == TrialState.FAIL:
                out.append(
                    TrialOutcome(number, None, INVALID, dict(frozen.params), error=frozen.user_attrs.get(FAILURE_ATTR))
                )
            else:
                out.append(TrialOutcome(number, None, QUEUED, dict(frozen.params)))
        return out

    def _outcome(self, run: RunInfo, *, here: bool = False) -> TrialOutcome:
        status = trial_status(run)
        if status in (FINISHED, PRUNED) and not here and run.ended_at is not None and run.ended_at < self.started_at:
            status = SKIPPED
        values = {}
        if run.status == FINISHED:
            row = self._selected(run.id) or {}
            values = {o.metric: row[o.metric] for o in self.spec.objectives if o.metric in row}
        error = run.error_message if status in (FAILED, DIVERGED, KILLED, PRUNED) else None
        where = None if here else f"{run.host} (pid {run.pid})"
        params = _params(run, self.spec)
        return TrialOutcome(_number(run), run.id, status, params, values, error=error, elsewhere=where)


def _number(run: RunInfo) -> int:
    number = trial_number(run.fingerprint)
    if number is None:
        raise RegistryError(f"run {run.id} is in a study's group but is no trial of it (fingerprint {run.fingerprint})")
    return number


def _params(run: RunInfo, spec: StudySpec) -> dict[str, Any]:
    out = {}
    for p in spec.params:
        node: Any = run.recipe
        for part in p.field.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[p.field] = node
    return out


def _outcome_label(run: RunInfo, spec: StudySpec) -> str:
    return TrialOutcome(0, run.id, run.status, _params(run, spec)).label


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
