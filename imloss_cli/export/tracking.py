"""Recorded runs into the tools a lab already reads: MLflow (``--mlflow URI``) and TensorBoard (``--tensorboard DIR``).

MLflow: one MLflow run per imloss run, in one experiment, found again by its tag ``imloss_run_id``,
so exporting twice adds nothing and duplicates nothing (only what the MLflow run lacks is logged).
Params are the flattened recipe (``loss.im_weight`` ...) and the seed; metrics every epoch metric
(step = epoch) and every layer statistic as ``layer/<layer>/<stat>``; tags the imloss run id, the
config hash, the git commit and the status. ``sqlite:///mlflow.db`` needs no server.

TensorBoard: one folder of event files per run (``DIR/<run id>/``), scalars per epoch under
``metrics/<name>`` and each layer's entropy and firing rate under ``layers/<layer>/<stat>``; a run
exported again replaces its own folder whole.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from imloss_cli.export.problems import ExportError
from imloss_cli.export.to_nir import require
from imloss_cli.files import child_path
from imloss_cli.registry import FAILED, FINISHED, KILLED, PRUNED, Registry, RunInfo

# The ended imloss statuses; a pruned study trial was stopped early, which MLflow calls KILLED.
MLFLOW_STATUS = {FINISHED: "FINISHED", FAILED: "FAILED", KILLED: "KILLED", PRUNED: "KILLED"}
TENSORBOARD_LAYER_STATS = ("entropy", "firing_rate")


@dataclass(frozen=True)
class Exported:
    run_id: str
    target: str  # the MLflow run id, or the TensorBoard folder
    added: int  # metric points (MLflow) or scalars (TensorBoard) written now
    created: bool  # the MLflow run is new (False: found by its tag and completed)


def select_runs(registry: Registry, runs: Iterable[str], group: str | None) -> list[RunInfo]:
    """The runs named (ids or prefixes), or the runs of ``group``, or else every run, oldest first."""
    runs = list(runs)
    if runs and group:
        raise ExportError("give runs or --group, not both")
    if runs:
        return [registry.get_run(r) for r in runs]
    group_id = registry.get_group(group).id if group else None
    return list(reversed(registry.list_runs(group_id=group_id)))


def _points(registry: Registry, run: RunInfo) -> pd.DataFrame:
    """key, step, value of every epoch metric and layer statistic of a run."""
    metrics = registry.epoch_metrics([run.id]).rename(columns={"name": "key"})
    layers = registry.layer_stats([run.id])
    layers = layers.assign(key="layer/" + layers["layer"] + "/" + layers["stat"])
    frame = pd.concat([metrics[["key", "epoch", "value"]], layers[["key", "epoch", "value"]]], ignore_index=True)
    return frame.dropna(subset=["value"]).rename(columns={"epoch": "step"})


def _params(recipe: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in recipe.items():
        if isinstance(value, dict):
            out |= _params(value, f"{prefix}{key}.")
        elif value is not None:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return out


def export_mlflow(registry: Registry, runs: list[RunInfo], uri: str, experiment: str = "imloss") -> list[Exported]:
    """Each run as an MLflow run in ``experiment`` at tracking ``uri`` (found by tag, or created)."""
    require("mlflow", "alembic", extra="mlflow")
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its table creation notes are not ours to print
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    results = []
    for run in runs:
        # The id was checked against its format (12 hex digits) when the row was read: no quote can end the string.
        hits = client.search_runs([experiment_id], filter_string=f"tags.imloss_run_id = '{run.id}'", max_results=2)
        created = not hits
        start = int((run.started_at or run.created_at).timestamp() * 1000)
        mlflow_run = (
            hits[0]
            if hits
            else client.create_run(experiment_id, start_time=start, tags={"imloss_run_id": run.id}, run_name=run.name)
        )
        mlflow_id = mlflow_run.info.run_id
        have_params = set(client.get_run(mlflow_id).data.params)
        params = {"seed": str(run.seed), **_params(run.recipe)}
        new_params = [Param(k, v) for k, v in params.items() if k not in have_params]
        tags = {"imloss_run_id": run.id, "imloss_config_hash": run.config_hash, "imloss_status": run.display_status,
                "imloss_git_commit": run.git_commit or "", "imloss_group": run.group_id or ""}  # fmt: skip
        points = _points(registry, run)
        have = set()
        if not created:  # what the MLflow run holds already: (key, step)
            for key in points["key"].unique():
                have |= {(key, m.step) for m in client.get_metric_history(mlflow_id, key)}
        new_metrics = [
            Metric(key, float(value), start, int(step))
            for key, step, value in points.itertuples(index=False)
            if (key, int(step)) not in have
        ]
        for i in range(0, max(len(new_params), 1), 100):
            client.log_batch(mlflow_id, params=new_params[i : i + 100])
        for i in range(0, len(new_metrics), 1000):
            client.log_batch(mlflow_id, metrics=new_metrics[i : i + 1000])
        client.log_batch(mlflow_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if run.status in MLFLOW_STATUS and client.get_run(mlflow_id).info.status != MLFLOW_STATUS[run.status]:
            end = int((run.ended_at or run.created_at).timestamp() * 1000)
            client.set_terminated(mlflow_id, status=MLFLOW_STATUS[run.status], end_time=end)
        results.append(Exported(run.id, mlflow_id, len(new_metrics), created))
    return results


def export_tensorboard(registry: Registry, runs: list[RunInfo], directory: Path) -> list[Exported]:
    """Each run's epochs as TensorBoard event files in ``directory/<run id>/`` (written anew)."""
    require("tensorboard", extra="tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    results = []
    directory.mkdir(parents=True, exist_ok=True)
    for run in runs:
        target = child_path(directory, run.id, "run id")  # the id was checked when the row was read; once more
        tmp = Path(tempfile.mkdtemp(prefix=f".{run.id}.", dir=directory))
        metrics = registry.epoch_metrics([run.id])
        layers = registry.layer_stats([run.id], stats=list(TENSORBOARD_LAYER_STATS))
        start = (run.started_at or run.created_at).timestamp()
        scalars = 0
        writer = SummaryWriter(log_dir=str(tmp))
        try:
            for name, epoch, value in metrics[["name", "epoch", "value"]].itertuples(index=False):
                writer.add_scalar(f"metrics/{name}", value, int(epoch), walltime=start + int(epoch))
                scalars += 1
            for layer, stat, epoch, value in layers[["layer", "stat", "epoch", "value"]].itertuples(index=False):
                writer.add_scalar(f"layers/{layer}/{stat}", value, int(epoch), walltime=start + int(epoch))
                scalars += 1
        finally:
            writer.close()
        if target.is_symlink():  # a link planted at the run's name goes, never what it points to
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        tmp.replace(target)
        results.append(Exported(run.id, str(target), scalars, True))
    return results
