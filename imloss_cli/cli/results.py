"""The commands that take recorded runs further: ``imloss export`` and ``imloss reproduce``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from imloss_cli.cli.common import DEFAULT_REGISTRY, HeartbeatOpt, RegistryOpt, RunArg, console, given, open_registry
from imloss_cli.cli.errors import fail, warn


def export(
    runs: Annotated[list[str] | None, typer.Argument(help="run ids or prefixes (--nir: one run)")] = None,
    nir_file: Annotated[Path | None, typer.Option("--nir", help="write the run's network to this NIR file")] = None,
    checkpoint: Annotated[str, typer.Option(help="--nir: the checkpoint to export, best or last")] = "best",
    check: Annotated[bool, typer.Option("--check", help="--nir: run the file back and compare with imloss")] = False,
    images: Annotated[int, typer.Option(min=1, help="--check: how many test images")] = 8,
    mlflow: Annotated[
        str | None, typer.Option("--mlflow", help="MLflow tracking URI, e.g. sqlite:///mlflow.db (MLflow's default)")
    ] = None,
    experiment: Annotated[str, typer.Option(help="--mlflow: the experiment the runs go to")] = "imloss",
    tensorboard: Annotated[
        Path | None, typer.Option("--tensorboard", help="write event files under this folder")
    ] = None,
    group: Annotated[str | None, typer.Option(help="--mlflow/--tensorboard: the runs of this group")] = None,
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    """Export recorded runs: a trained network as NIR, runs into MLflow or TensorBoard.

    Without RUN or --group, --mlflow and --tensorboard export every run of the registry; exporting
    again adds only what is new.

    Example: imloss export 3fa2c1 --nir net.nir --check
    """
    from imloss_cli.cli.views import agreement_lines

    targets = [t for t in (nir_file, mlflow, tensorboard) if t is not None]
    if len(targets) != 1:
        fail("give one of --nir FILE, --mlflow URI or --tensorboard DIR")
    with open_registry(registry, create=False, write=False) as reg:
        if nir_file is not None:
            from imloss_cli.export.to_nir import export_nir

            if len(runs or []) != 1 or group is not None:
                fail("--nir exports one run: imloss export RUN --nir FILE")
            done = export_nir(
                reg, (runs or [])[0], nir_file, checkpoint=checkpoint, check_images=images if check else 0
            )
            console.print(f"wrote {done.path}: {done.nodes} NIR nodes of run {done.run_id} ({done.checkpoint})")
            if done.agreement is not None:
                for line in agreement_lines(done.agreement):
                    console.print(line, highlight=False)
                if done.agreement.layers_equal != done.agreement.layers:
                    raise typer.Exit(1)
            return
        from imloss_cli.export.tracking import export_mlflow, export_tensorboard, select_runs

        chosen = select_runs(reg, runs or [], group)
        if mlflow is not None:
            results = export_mlflow(reg, chosen, mlflow, experiment)
            for r in results:
                how = "new" if r.created else "found by its tag"
                console.print(f"run {r.run_id} -> MLflow run {r.target} ({how}): {r.added} metric points added")
        else:
            assert tensorboard is not None
            results = export_tensorboard(reg, chosen, tensorboard)
            for r in results:
                console.print(f"run {r.run_id} -> {r.target}: {r.added} scalars")


def reproduce(
    run: RunArg,
    tolerance: Annotated[float, typer.Option(min=0.0, help="largest |difference| that still agrees (0: exact)")] = 0.0,
    heartbeat: HeartbeatOpt = None,
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    """Train a recorded run again from its stored recipe and seed, and compare every epoch's numbers.

    Exit 0 when every metric and layer statistic agrees (within --tolerance), 1 otherwise.

    Example: imloss reproduce 3fa2c1
    """
    from imloss_cli.cli.views import TrainDisplay, differences_table
    from imloss_cli.train.reproduce import reproduce_run

    with open_registry(registry, create=False) as reg, TrainDisplay(console) as ui:
        result = reproduce_run(
            reg, run, argv=sys.argv, callbacks=ui.callbacks(), tolerance=tolerance, on_warning=warn,
            **given(heartbeat_s=heartbeat),
        )  # fmt: skip
    console.print(differences_table(result.differences, title=f"run {result.run_id} against run {result.original}"))
    if result.first_difference is None:
        console.print(f"[bold green]reproduced[/]  run {result.run_id} agrees with run {result.original} "
                      f"(every difference <= {result.tolerance:g})", highlight=False)  # fmt: skip
        return
    epoch, metric, value = result.first_difference
    fail(f"run {result.run_id} differs from run {result.original}: first at epoch {epoch}, {metric} "
         f"(|difference| {value:g} > {result.tolerance:g})", code=1)  # fmt: skip
