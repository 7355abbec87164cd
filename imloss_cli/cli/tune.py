"""``imloss tune``: the command, and its view of a study's progress (no torch or Optuna at import)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from imloss_cli.cli.common import (
    DEFAULT_REGISTRY,
    HeartbeatOpt,
    RecipeArg,
    RegistryOpt,
    SetOpt,
    console,
    given,
    load,
    open_registry,
)
from imloss_cli.cli.views import WorkerView
from imloss_cli.registry import DIVERGED, FAILED, FINISHED, INVALID, KILLED, LOST, PRUNED, SKIPPED

if TYPE_CHECKING:
    from imloss_cli.train.sink import Callbacks
    from imloss_cli.tune.study import TuneResult
    from imloss_cli.tune.worker import TrialOutcome, TuneOptions


def tune(
    recipe: RecipeArg = None,
    space: Annotated[
        list[str] | None,
        typer.Option(
            "--space", help="a recipe field and its values: KEY=float(a,b), log(a,b), int(a,b) or choice(x,y,...)"
        ),
    ] = None,
    objective: Annotated[
        list[str] | None, typer.Option("--objective", help="METRIC:max or METRIC:min, e.g. val_acc:max (repeatable)")
    ] = None,
    constraint: Annotated[
        list[str] | None, typer.Option("--constraint", help="METRIC<=X or METRIC>=X, e.g. energy_uj<=0.2 (repeatable)")
    ] = None,
    trials: Annotated[
        int | None, typer.Option("--trials", help="the study's trials in total (required); rerun with more to continue")
    ] = None,
    pruner: Annotated[str, typer.Option(help="median, hyperband or none (single-objective studies)")] = "none",
    baseline: Annotated[bool, typer.Option("--baseline", help="trial 0 trains the recipe's own values")] = False,
    seed: Annotated[
        int, typer.Option(min=0, help="the sampler's seed: trial N samples with a seed of (seed, N), recorded")
    ] = 0,
    set_: SetOpt = None,
    group: Annotated[str | None, typer.Option(help="join this existing study (group id or prefix)")] = None,
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="worker processes on this machine")] = 1,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait for trials running elsewhere")] = True,
    heartbeat: HeartbeatOpt = None,
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    """Search recipe fields for accuracy against energy (Optuna), every trial a recorded run.

    Trials select on the validation split (data.val_fraction > 0). The same command on several
    machines (one registry) shares the study; rerun it to resume or continue it.

    Example: imloss tune recipes/digits.toml --set data.val_fraction=0.2 --space loss.im_weight=float(0,4) --space optim.lr=log(0.01,0.3) --objective val_acc:max --objective energy_uj:min --trials 12
    """
    from imloss_cli.cli.errors import fail
    from imloss_cli.tune.space import StudySpec
    from imloss_cli.tune.storage import require_optuna

    if trials is None or trials < 1:
        fail("--trials: how many trials the study has in total, at least 1, e.g. --trials 20")
    plan = None
    if group is None:  # checked before the registry is opened: a bad space writes nothing
        from imloss_cli.tune.study import plan_study

        spec = StudySpec.from_options(space or [], objective or [], constraint or [], pruner, baseline)
        plan = plan_study(load(recipe, set_), spec)
    require_optuna()
    from imloss_cli.tune.study import run_study

    with open_registry(registry, create=plan is not None) as reg:
        with TuneView(console) as view:
            options = view.options(trials=trials, seed=seed, jobs=jobs, wait=wait, **given(heartbeat_s=heartbeat))
            result = run_study(plan, registry=reg, argv=sys.argv, options=options, group=group)
        view.summary(result, _study_report(reg, result.group_id) if result.complete else "")
    raise typer.Exit(1 if result.failed else 0)


def _study_report(registry: Any, group_id: str) -> str:
    """The study's front and importances as markdown, or why there is none yet."""
    from imloss_cli.report import ReportError, build_report, render_study

    try:
        return render_study(build_report(registry, group=group_id, select="best-val"))
    except ReportError as e:
        return f"no report: {e}"


class TuneView(WorkerView):
    """Progress of a study: a header per trial trained here, its epochs, each trial's outcome, a summary.
    Labels, hosts and errors come from the registry: printed as text, never as markup."""

    def options(self, **options: Any) -> TuneOptions:
        """The worker's options with this view's progress hooks."""
        from imloss_cli.tune.worker import TuneOptions

        return TuneOptions(
            on_trial=self.trial, on_outcome=self.outcome, on_wait=self.waiting, on_taken_over=self.taken_over,
            on_job_failed=self.job_failed, **options,
        )  # fmt: skip

    def trial(self, number: int, total: int, label: str, run_id: str) -> Callbacks:
        self.console.print(
            f"[bold]trial {number}[/] ({total} in the study)  {escape(label)}  run {escape(run_id)}", highlight=False
        )
        return self.display.callbacks()

    def outcome(self, o: TrialOutcome) -> None:
        where = f" on {escape(o.elsewhere)}" if o.elsewhere else ""
        head = f"trial {o.number}  {escape(o.label)}"
        values = "  ".join(f"{escape(k)} {v:.4g}" for k, v in o.values.items())
        error = escape(str(o.error))
        if o.status in (FAILED, KILLED, LOST):
            self.console.print(
                f"[bold red]{o.status}[/]{where}  {head}  run {escape(str(o.run_id))}: {error}", highlight=False,
                soft_wrap=True,
            )  # fmt: skip
        elif o.status in (DIVERGED, INVALID):
            self.console.print(f"[yellow]{o.status.lower()}[/]{where}  {head}: {error}", highlight=False)
        elif o.status == PRUNED:
            self.console.print(f"[yellow]pruned[/]{where}  {head}: {error}", highlight=False)
        elif o.status == SKIPPED:
            self.console.print(f"[dim]told before[/]  {head}  {values}", highlight=False)
        elif o.status == FINISHED:
            self.console.print(f"[green]finished[/]{where}  {head}  {values}", highlight=False)

    def waiting(self, running: list[TrialOutcome]) -> None:
        self.console.print(f"waiting for {len(running)} trial(s) running elsewhere:", highlight=False)
        for o in running:
            self.console.print(
                f"  trial {o.number}  {o.label}  run {o.run_id}  on {o.elsewhere}", highlight=False, markup=False
            )

    def summary(self, result: TuneResult, report: str) -> None:
        """The outcome counts, the study's report (its front) and where Optuna's record lives."""
        counts = ", ".join(f"{n} {'told before' if s == SKIPPED else s.lower()}" for s, n in result.counts.items())
        self.console.print(
            f"study {result.group_id}: {len(result.outcomes)} of {result.trials} trials ({counts})", highlight=False
        )
        if report:
            self.console.print(report, markup=False, highlight=False)
        self.console.print(
            f"the whole report, the front's figure included: imloss report --group {result.group_id} --format html "
            f"--output study.html\nOptuna's record: {result.storage}",
            markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
