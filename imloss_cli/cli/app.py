"""The ``imloss`` commands: each parses, calls one library function and renders.

Library modules are imported inside the commands, so ``imloss report`` or ``imloss runs`` never
import torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from imloss_cli.cli.bench import bench
from imloss_cli.cli.common import (
    DEFAULT_REGISTRY,
    HeartbeatOpt,
    RecipeArg,
    RegistryOpt,
    RunArg,
    SetOpt,
    console,
    energy_help,
    given,
    load,
    open_registry,
    overrides_of,
)
from imloss_cli.cli.errors import App, RecipeCommand, fail, note, warn
from imloss_cli.cli.results import export, reproduce
from imloss_cli.cli.tune import tune
from imloss_cli.files import write_atomically
from imloss_cli.recipe import Recipe, to_toml

app = App(
    help="Train spiking neural networks with IM-Loss and ESG, run ablations, compare runs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command(cls=RecipeCommand)
def validate(recipe: RecipeArg = None, set_: SetOpt = None) -> None:
    """Check a recipe without running anything and print it fully resolved.

    Example: imloss validate recipes/cifar10.toml --set model.timesteps=4
    """
    from imloss_cli.export import export_problems

    loaded = load(recipe, set_)
    for problem in export_problems(loaded):
        warn(f"will not export to NIR: {problem}")
    console.print(to_toml(loaded), highlight=False, markup=False)


@app.command(cls=RecipeCommand)
def train(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    seed: Annotated[int | None, typer.Option(help="overrides train.seed")] = None,
    device: Annotated[str | None, typer.Option(help="overrides train.device: auto, cpu, cuda")] = None,
    name: Annotated[str | None, typer.Option(help="overrides the recipe's name")] = None,
    deterministic: Annotated[
        bool | None, typer.Option("--deterministic", help="bit-exact CUDA (train.deterministic)")
    ] = None,
    keep_last: Annotated[
        int | None, typer.Option("--keep-last", help="epoch checkpoints to keep (train.keep_last)")
    ] = None,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="processes (GPUs) on this machine, via torchrun")] = 1,
    run_id: Annotated[str | None, typer.Option("--run-id", hidden=True)] = None,
    attempt: Annotated[int | None, typer.Option("--attempt", hidden=True)] = None,
    heartbeat: HeartbeatOpt = None,
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    """Train one spiking network and record it in the registry.

    Example: imloss train recipes/digits.toml --set loss.im_weight=0
    """
    from imloss_cli.cli.views import TrainDisplay
    from imloss_cli.train.distributed import DistEnv, rank_batch_size
    from imloss_cli.train.launch import launch_distributed
    from imloss_cli.train.lifecycle import HeldRun, train_rank, train_run

    r = load(
        recipe, set_, **{"train.seed": seed, "train.device": device, "name": name,
                         "train.deterministic": deterministic, "train.keep_last": keep_last},
    )  # fmt: skip
    if run_id is not None and attempt is not None:  # one process of a --nproc job, started by torchrun
        env = DistEnv.from_environ()
        quiet = env is not None and not env.is_main
        with open_registry(registry, create=False, write=False) as reg, TrainDisplay(console, quiet=quiet) as ui:
            train_rank(reg, r, HeldRun(run_id, attempt), callbacks=ui.callbacks())
        return
    if nproc > 1:
        rank_batch_size(r.data.batch_size, nproc)  # before the registry: the first thing to fix
        with open_registry(registry) as reg:
            launched = launch_distributed(reg, r, nproc, argv=sys.argv, **given(heartbeat_s=heartbeat))
        console.print(f"[bold green]done[/]  run {launched} ({nproc} processes)")
        return
    with open_registry(registry) as reg, TrainDisplay(console) as ui:
        result = train_run(reg, r, argv=sys.argv, callbacks=ui.callbacks(), **given(heartbeat_s=heartbeat))
    if result.last is not None:
        m = result.last.metrics
        console.print(f"[bold green]done[/]  test accuracy {m['test_acc']:.4f}  run {result.run_id}")


@app.command()
def resume(
    run: RunArg,
    heartbeat: HeartbeatOpt = None,
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    """Continue a KILLED, FAILED or LOST run from its last checkpoint, in the same registry row.

    Example: imloss resume 3fa2c1
    """
    from imloss_cli.cli.views import TrainDisplay
    from imloss_cli.train.lifecycle import resume_run

    with open_registry(registry, create=False) as reg, TrainDisplay(console) as ui:
        result = resume_run(reg, run, argv=sys.argv, callbacks=ui.callbacks(), **given(heartbeat_s=heartbeat))
    acc = f"test accuracy {result.last.metrics['test_acc']:.4f}  " if result.last else ""
    console.print(f"[bold green]done[/]  {acc}run {result.run_id}")


@app.command(cls=RecipeCommand)
def ablate(
    recipe: Annotated[
        Path | None,
        typer.Argument(help="TOML recipe; omitted: the recipe of the last `imloss train` run", show_default=False),
    ] = None,
    im_weight: Annotated[str | None, typer.Option("--im-weight", help="loss.im_weight values, e.g. 0,1,2")] = None,
    surrogate: Annotated[str | None, typer.Option(help="surrogate.schedule values: esg,fixed")] = None,
    timesteps: Annotated[str | None, typer.Option(help="model.timesteps values, e.g. 2,4")] = None,
    grid: Annotated[list[str] | None, typer.Option("--grid", help="any field: KEY=V1,V2 (repeatable)")] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", help="seeds 0..N-1")] = None,
    seed: Annotated[str | None, typer.Option("--seed", help="explicit seeds, e.g. 0,1,2")] = None,
    set_: SetOpt = None,
    group: Annotated[str | None, typer.Option(help="join this existing group (id or prefix) as a worker")] = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="stop at the first failed trial")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the trials, run nothing")] = False,
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="worker processes on this machine")] = 1,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait for trials running elsewhere")] = True,
    heartbeat: HeartbeatOpt = None,
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    """Run a grid of trials (cartesian product x seeds) as one ablation group; rerun to resume it.

    Without RECIPE, the recipe of the most recent `imloss train` run is ablated. The same command
    on several machines (one registry URL) splits the grid: each worker claims the next trial.

    Example: imloss ablate recipes/digits.toml --im-weight 0,1,2 --seeds 2
    """
    from imloss_cli.ablate import GridSpec, plan_ablation, run_ablation
    from imloss_cli.cli.views import AblationView

    overrides = overrides_of(set_)
    joining = group is not None  # a worker of an existing group: the group holds recipe and axes
    spec = None if joining else GridSpec.from_options(im_weight, surrogate, timesteps, grid or [], seeds, seed)
    # A recipe file is planned before the registry is opened: a bad grid writes nothing.
    plan = plan_ablation(load(recipe, set_), spec) if recipe is not None and not joining else None
    if plan is not None and dry_run:
        AblationView(console).summary(plan.dry_run, "")
        return
    # Joining a group or reusing the last run's recipe reads the registry: it must exist.
    with open_registry(registry, create=plan is not None, write=not dry_run) as reg:
        if plan is None and not joining:
            plan = plan_ablation(_latest_train_recipe(reg, overrides), spec)
            if dry_run:
                AblationView(console).summary(plan.dry_run, "")
                return
        with AblationView(console) as view:
            work = view.work_options(fail_fast=fail_fast, jobs=jobs, wait=wait, **given(heartbeat_s=heartbeat))
            result = run_ablation(plan, registry=reg, argv=sys.argv, group=group, work=work)
        view.summary(result, _group_table(reg, result.group_id) if result.complete else "")
    raise typer.Exit(1 if result.failed else 0)


def _latest_train_recipe(registry: Any, overrides: dict[str, Any]) -> Recipe:
    """The recipe of the registry's most recent train run (ablate without RECIPE), overrides applied."""
    from imloss_cli.ablate import latest_train_recipe

    base_run, base = latest_train_recipe(registry, overrides)
    console.print(f"no recipe given: ablating the recipe of run {base_run}, the most recent train run", highlight=False)
    return base


def _group_table(registry: Any, group_id: str | None) -> str:
    """The group's report as markdown, or why there is none yet (no finished trial)."""
    from imloss_cli.report import ReportError, build_report, render

    if group_id is None:
        return ""
    try:
        return render(build_report(registry, group=group_id), "markdown")
    except ReportError as e:
        return f"no summary table: {e}"


app.command(cls=RecipeCommand)(tune)


@app.command(cls=RecipeCommand)
def paper(
    rows: Annotated[list[str] | None, typer.Argument(help="rows (recipes/paper/ file names); default: all")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="train every row this many epochs (recorded)")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="seeds 0..N-1 per row")] = 1,
    set_: SetOpt = None,
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="worker processes on this machine")] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the trials, run nothing")] = False,
    heartbeat: HeartbeatOpt = None,
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    """Reproduce Guo et al.'s tables: queue the rows as one ablation group per table and train them.

    Rows whose data is missing are listed with how to get it; the others go on. Rerun to resume.

    Example: imloss paper cifar10-resnet19-t2 --epochs 10 --seeds 3
    """
    from imloss_cli.cli.views import AblationView
    from imloss_cli.paper import missing_data, plan_paper, run_paper

    plan = plan_paper(rows or [], epochs=epochs, seeds=seeds, overrides=overrides_of(set_))
    missing = missing_data(plan)
    view = AblationView(console)
    for row, message in missing.items():
        view.missing(row, message)
    if dry_run:
        view.paper_plan(plan, missing)
        return
    if len(missing) == len(plan.rows):  # nothing to train: no group is created
        fail(f"no row has its data on this machine ({', '.join(missing)}); put it where the lines above say")
    with open_registry(registry) as reg, view:
        work = view.work_options(jobs=jobs, **given(heartbeat_s=heartbeat))
        result = run_paper(plan, registry=reg, argv=sys.argv, missing=missing, work=work)
        tables = {t: _group_table(reg, r.group_id) if r.complete else "" for t, r in result.groups.items()}
    view.paper_summary(result, tables)
    raise typer.Exit(1 if result.failed else 0)


@app.command()
def models() -> None:
    """List every architecture: parameters, FLOPs per image per time step, hidden spiking layers, source.

    Example: imloss models
    """
    from imloss_cli.cli.views import model_table
    from imloss_cli.snn.catalog import model_rows

    console.print(model_table(model_rows()))


@app.command()
def runs(
    status: Annotated[
        str | None, typer.Option(help="QUEUED, RUNNING, FINISHED, FAILED, KILLED, PRUNED or LOST")
    ] = None,
    group: Annotated[str | None, typer.Option(help="ablation group id or prefix")] = None,
    limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 20,
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    """List recorded runs: id, status, key recipe fields, best/last test accuracy, duration.

    Example: imloss runs --status FINISHED --limit 10
    """
    from imloss_cli.cli.views import frame_table
    from imloss_cli.report import runs_overview

    with open_registry(registry, create=False, write=False) as reg:
        frame = runs_overview(reg, status=status and status.upper(), group=group, limit=limit)
        where = reg.url  # as it may be shown: the password hidden
    console.print(frame_table(frame.set_index("id"), title=f"{len(frame)} runs in {where}"))


@app.command()
def show(
    run: RunArg,
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    """Print a run's resolved recipe, environment, per-epoch table and last layer statistics.

    Example: imloss show 3fa2c1
    """
    from imloss_cli.cli.views import render_details
    from imloss_cli.report import run_details

    with open_registry(registry, create=False, write=False) as reg:
        render_details(console, run_details(reg, run))


@app.command()
def report(
    group: Annotated[
        list[str] | None, typer.Option(help="ablation group id or prefix (repeat it to compare several groups)")
    ] = None,
    last: Annotated[bool, typer.Option("--last", help="the most recent ablation group")] = False,
    recipe_name: Annotated[
        str | None, typer.Option("--recipe", help="finished runs of the recipe with this name")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="markdown, csv, latex, json or html")] = "markdown",
    metric: Annotated[str, typer.Option(help="metric to compare")] = "test_acc",
    select: Annotated[
        str | None,
        typer.Option(
            help="best: best test epoch (optimistic); best-val: best validation epoch; last: the last "
            "(default: best-val for a study of imloss tune, best otherwise)"
        ),
    ] = None,
    output: Annotated[Path | None, typer.Option(help="write to this file instead of stdout")] = None,
    plots: Annotated[Path | None, typer.Option(help="also write the PNG figures into this directory")] = None,
    e_mac: Annotated[float | None, typer.Option("--e-mac", help=energy_help("e_mac_pj"), show_default=False)] = None,
    e_ac: Annotated[float | None, typer.Option("--e-ac", help=energy_help("e_ac_pj"), show_default=False)] = None,
    paper: Annotated[bool, typer.Option("--paper", help="the paper's figure and our delta (pp) per row")] = False,
    baseline: Annotated[
        list[str] | None,
        typer.Option(help="the row the others are compared with: FIELD=VALUE (repeatable); default: the first row"),
    ] = None,
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    """Compare runs: one row per configuration (seeds pooled), mean and 95% interval, each row against a baseline.

    Every row but the baseline gets its difference with a 95% interval and a p-value (paired by seed,
    else Welch; Holm-adjusted) and a plain-words verdict; per-layer entropy and SOPs follow.

    Default: the latest ablation group (or all finished runs), as markdown on stdout. Runs that
    counted operations get SOPs and energy per image (E = MACs * E_MAC + SOPs * E_AC). The html
    format is one self-contained page (tables, figures, runs) to open in a browser or mail.

    Example: imloss report --format html --output report.html --e-mac 3.1 --e-ac 0.1
    """
    from imloss_cli.report import FORMATS, build_report, energy_constants, render, write_plots

    if fmt not in FORMATS:  # before the registry: a typo in the format is the first thing to fix
        fail(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    energy = energy_constants(e_mac, e_ac)
    with open_registry(registry, create=False, write=False) as reg:
        rep = build_report(
            reg, group=group, last=last, recipe_name=recipe_name, metric=metric, select=select, energy=energy,
            paper=paper, baseline=baseline,
        )  # fmt: skip
        text = render(rep, fmt, reg)
        for warning in rep.warnings:
            warn(warning)
        if output is None:
            console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            write_atomically(output, text)
            note(f"wrote {output}")
        if plots is not None:  # stdout holds only the report: a JSON or CSV report stays parseable
            for path in write_plots(rep, reg, plots):
                note(f"wrote {path}")


# Registered last, so that --help lists the commands in the order a user meets them.
app.command()(export)
app.command()(reproduce)
app.command()(bench)
