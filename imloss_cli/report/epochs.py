"""Which epoch of each run a report reads: the best by the metric, the last, or the best on held-out data.

Only what the report needs is read: the compared metric, mean_entropy and the operation counts of
all selected runs in one call, and the layer statistics once per distinct selected epoch.
"""

from __future__ import annotations

import pandas as pd

from imloss_cli.registry import Registry

from .errors import ReportError
from .selection import ids_text
from .text import SCORED_SETS

SELECTIONS: tuple[str, ...] = ("best", "last", "best-val")
VAL_METRIC = "val_acc"  # what best-val selects on: accuracy on the held-out part of the training set
ENTROPY_METRIC = "mean_entropy"  # logged per epoch by the engine: mean over hidden layers
COUNTS = ("sops", "macs")  # operations per image, logged per epoch; the energy is recomputed from them
ENERGY = "energy_uj"
LAYER_STATS = ("entropy", "firing_rate", "sops_per_image")  # the layer tables


def scored_columns(metric: str) -> tuple[str, str] | None:
    """The metrics that say how many images ``metric`` was scored on, and of how many (a test_ or val_ metric)."""
    return SCORED_SETS.get(metric.split("_", 1)[0])


def chosen_epochs(registry: Registry, run_ids: list[str], metric: str, select: str) -> pd.DataFrame:
    """Per run: the selected epoch, the metric there, and mean_entropy, sops, macs and the metric's
    scored images (``scored_columns``) there.

    Raises:
        ReportError: no run logged the metric, or best-val over runs without a validation set.
    """
    # Only the metrics the report uses: a fraction of the rows of a typical run.
    chooser = [VAL_METRIC] if select == "best-val" else []
    scored = list(scored_columns(metric) or ())
    names = list(dict.fromkeys([metric, ENTROPY_METRIC, *COUNTS, *chooser, *scored]))
    metrics = registry.epoch_metrics(run_ids, names=names)
    if not (metrics["name"] == metric).any():
        known = sorted(registry.epoch_metrics(run_ids)["name"].unique())
        raise ReportError(
            f"unknown metric {metric!r}; known: " + (", ".join(known) or "none (the selected runs logged no epochs)")
        )
    if select == "best-val":
        without = sorted(set(run_ids) - set(metrics.loc[metrics["name"] == VAL_METRIC, "run_id"]))
        if without:
            raise ReportError(
                f"--select best-val needs runs trained with data.val_fraction > 0; {ids_text(without)} "
                f"logged no {VAL_METRIC}"
            )
    return choose_epochs(metrics, metric, select, also=scored)


def choose_epochs(metrics: pd.DataFrame, metric: str, select: str, also: list[str] | None = None) -> pd.DataFrame:
    """Per run: the selected epoch, the metric there, and mean_entropy, sops and macs there (NaN if not logged)."""
    rows = metrics.loc[metrics["name"] == metric, ["run_id", "epoch", "value"]]
    if select == "last":
        rows = rows.sort_values(["run_id", "epoch"]).drop_duplicates("run_id", keep="last")
    elif select == "best-val":  # the epoch of the best validation accuracy (ties: the earliest), the metric there
        val = metrics.loc[metrics["name"] == VAL_METRIC, ["run_id", "epoch", "value"]].dropna(subset=["value"])
        best = val.sort_values(["run_id", "value", "epoch"], ascending=[True, False, True]).drop_duplicates("run_id")
        rows = best[["run_id", "epoch"]].merge(rows, on=["run_id", "epoch"], how="left")
    else:
        # Ties go to the earliest epoch: the stable sort keeps epoch order within equal values.
        rows = (
            rows.dropna(subset=["value"])
            .sort_values(["run_id", "value", "epoch"], ascending=[True, not higher_is_better(metric), True])
            .drop_duplicates("run_id", keep="first")
        )
    rows = rows.rename(columns={"value": metric})
    for name in (ENTROPY_METRIC, *COUNTS, *(also or [])):
        if name == metric:
            continue
        values = metrics.loc[metrics["name"] == name, ["run_id", "epoch", "value"]]
        rows = rows.merge(values.rename(columns={"value": name}), on=["run_id", "epoch"], how="left")
    return rows


def read_layer_values(registry: Registry, chosen: pd.DataFrame) -> pd.DataFrame:
    """run_id, layer_index, layer, stat, value: each run's ``LAYER_STATS`` at its selected epoch.

    The registry can filter layer statistics by one epoch for many runs, so runs are batched by
    their selected epoch: at most one query per distinct epoch, never a run's other epochs.
    """
    frames = [
        registry.layer_stats(list(ids), epoch=int(epoch), stats=list(LAYER_STATS))
        for epoch, ids in chosen.groupby("epoch")["run_id"]
    ]
    columns = ["run_id", "layer_index", "layer", "stat", "value"]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c == "value" else object) for c in columns})
    stats = pd.concat(frames, ignore_index=True)
    return stats[columns]


def higher_is_better(metric: str) -> bool:
    return not ("loss" in metric or metric in ("im", *COUNTS, ENERGY))
