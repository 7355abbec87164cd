"""A study as one registry group that any number of workers share: :func:`plan_study`, :func:`run_study`.

The group's key is the study's identity (``space.study_key``: base configuration and seed, space,
objectives, constraints, pruner, baseline), its ``axes`` record the spec and its ``base_recipe``
the recipe, so ``imloss tune --group ID`` joins a study with nothing else given. Every trial is a
run of kind "tune" in the group, named ``<recipe name> trial N`` and found by its fingerprint
(``<key>:trial-N``); its Optuna trial carries the run's id (``imloss_run_id``). So ``runs``,
``show``, ``report``, ``export`` and ``reproduce`` take trials as they take any run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from imloss_cli.ablate.jobs import run_workers
from imloss_cli.recipe import Recipe, config_hash, validate_recipe
from imloss_cli.registry import DIVERGED, FAILED, FINISHED, INVALID, KILLED, LOST, PRUNED, SKIPPED, Registry
from imloss_cli.train.environment import code_version, git_state

from .errors import TuneError
from .space import StudySpec, check_study, study_key
from .storage import make_pruner, open_study, require_optuna, where
from .worker import StudyContext, StudyWorker, TrialOutcome, TuneOptions


@dataclass(frozen=True)
class StudyPlan:
    """A study checked against its base recipe before anything is written."""

    base: Recipe
    spec: StudySpec
    key: str


@dataclass(frozen=True)
class TuneResult:
    group_id: str
    trials: int  # asked for
    outcomes: list[TrialOutcome]  # every trial of the study, in trial order
    storage: str  # where Optuna's record lives, and the command that opens it

    @property
    def failed(self) -> list[TrialOutcome]:
        """Trials without a result, to be retried by the next command (a diverged one is a result)."""
        return [o for o in self.outcomes if o.status in (FAILED, KILLED, LOST)]

    @property
    def complete(self) -> bool:
        """The study has all its trials, each with a result (so its report is final)."""
        results = (FINISHED, SKIPPED, PRUNED, DIVERGED, INVALID)
        return len(self.outcomes) >= self.trials and all(o.status in results for o in self.outcomes)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        return out


def plan_study(base: Recipe, spec: StudySpec) -> StudyPlan:
    """Check ``spec`` against ``base`` (see ``space.check_study``).

    Raises:
        RecipeError: every problem at once; nothing is written.
    """
    check_study(base, spec)
    return StudyPlan(base, spec, study_key(base, spec))


def run_study(
    plan: StudyPlan | None,
    *,
    registry: Registry,
    argv: list[str],
    options: TuneOptions,
    group: str | None = None,
) -> TuneResult:
    """Create the study's group (or join ``group``), then work on it as one worker among any number.

    Args:
        plan: the checked study (:func:`plan_study`); None with ``group``.
        registry: where the group and its runs are recorded; Optuna's study lives beside it.
        argv: the command line, recorded with the group and each run.
        options: how this worker works (see :class:`~.worker.TuneOptions`).
        group: join this existing study (group id or prefix) instead.

    Raises:
        TuneError: Optuna is missing, the registry cannot hold a study, or ``group`` is no study.
        RegistryError: no such group, or the registry fails.
        KeyboardInterrupt: the current trial was recorded as KILLED; its Optuna trial waits for a rerun.
    """
    require_optuna()
    started_at = datetime.now(UTC)
    if group is not None:
        info = registry.get_group(group)
        if not info.axes.get("objectives") or info.key is None:
            raise TuneError(f"group {info.id} ({info.name}) is not a study of imloss tune")
        base = validate_recipe(info.base_recipe["recipe"], f"group {info.id}")
        plan = StudyPlan(base, StudySpec.from_record(info.axes), info.key)
        group_id = info.id
    elif plan is not None:
        name = f"{plan.base.name}: tune " + " x ".join(p.field.rsplit(".", 1)[-1] for p in plan.spec.params)
        base_record = {"config_hash": config_hash(plan.base), "recipe": plan.base.model_dump(mode="json")}
        group_id = registry.claim_group(plan.key, name, base_record, plan.spec.record(), argv)
    else:
        raise ValueError("run_study needs a plan, or a group to join")
    pruner = make_pruner(plan.spec.pruner, plan.base.train.epochs)
    study = open_study(registry, group_id, plan.spec.objectives, pruner=pruner)
    context = StudyContext(group_id, plan.key, plan.base, plan.spec, study, code_version(git_state()))
    worker = StudyWorker(registry, context, options, argv, started_at)
    if options.jobs > 1:
        log_dir = Path(plan.base.train.output_dir) / f"study-{group_id}"
        study_options = ["--trials", str(options.trials), "--seed", str(options.seed)]
        codes = run_workers(
            "tune", group_id, options.jobs, registry_env=registry.child_environment(),
            options=[*study_options, "--heartbeat", str(options.heartbeat_s)],
            log_dir=log_dir, poll_s=worker.poll_s, on_poll=worker.report_new,
        )  # fmt: skip
        for slot, code in enumerate(codes):
            # A trial failing is reported as its outcome (exit 1); anything else is the worker's own failure.
            if code not in (0, 1) and options.on_job_failed is not None:
                options.on_job_failed(log_dir / f"worker-{slot}.log", code)
    worker.work()
    return TuneResult(group_id, options.trials, worker.outcomes(), where(registry))
