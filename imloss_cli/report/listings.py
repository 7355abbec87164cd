"""Listings of recorded runs: what ``imloss runs`` and ``imloss show`` display. No torch here."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from imloss_cli.recipe import read_recorded
from imloss_cli.registry import Registry, RunInfo

from .text import subset_notes

# Recipe fields a researcher scans a run list by.
KEY_FIELDS = {
    "arch": ("model", "arch"),
    "neuron": ("model", "neuron"),
    "T": ("model", "timesteps"),
    "lambda": ("loss", "im_weight"),
    "K": ("surrogate", "schedule"),
}


@dataclass(frozen=True)
class RunDetails:
    run: RunInfo
    epochs: pd.DataFrame  # one row per epoch, one column per metric, and the attempt that wrote it
    layers: pd.DataFrame  # last epoch: one row per layer, one column per statistic
    reproduced_by: list[str]  # the runs that train this one again (imloss reproduce)
    subsets: list[str]  # "test_acc on 512 of 10,000 images ...": accuracies of a capped evaluation


def _duration(run: RunInfo) -> str:
    d = run.duration
    if d is None:
        return ""
    seconds = int(d.total_seconds())
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def runs_overview(
    registry: Registry, *, status: str | None = None, group: str | None = None, limit: int | None = 20
) -> pd.DataFrame:
    """One row per run, newest first: id, name, status, group, key recipe fields, accuracy, duration."""
    group_id = registry.get_group(group).id if group else None
    runs = registry.list_runs(status=status, group_id=group_id, limit=limit)
    rows = []
    metrics = registry.epoch_metrics([r.id for r in runs])
    acc = metrics[metrics.name == "test_acc"].sort_values("epoch").groupby("run_id").value
    best, last = acc.max(), acc.last()
    for r in runs:
        row = {"id": r.id, "name": r.name, "status": r.display_status, "group": r.group_id or ""}
        for label, (section, field) in KEY_FIELDS.items():
            part = read_recorded(r.recipe).get(section)  # a row is input: a section may be missing or not a table
            row[label] = part.get(field) if isinstance(part, dict) else None
        row |= {"seed": r.seed, "best_acc": best.get(r.id), "last_acc": last.get(r.id), "duration": _duration(r)}
        rows.append(row)
    return pd.DataFrame(
        rows, columns=["id", "name", "status", "group", *KEY_FIELDS, "seed", "best_acc", "last_acc", "duration"]
    )


def run_details(registry: Registry, run: str) -> RunDetails:
    """A run (id or unique prefix) with its per-epoch table and last epoch's layer statistics."""
    info = registry.get_run(run)
    metrics = registry.epoch_metrics([info.id])
    epochs = metrics.pivot(index="epoch", columns="name", values="value") if len(metrics) else pd.DataFrame()
    if len(epochs):  # which attempt wrote each epoch: a takeover shows as the attempt changing
        attempts = registry.epoch_attempts(info.id)
        epochs["attempt"] = pd.array([attempts.get(int(e)) for e in epochs.index], dtype="Int64")
    stats = registry.layer_stats([info.id], last_epoch_only=True)
    layers = (
        stats.pivot_table(index=["layer_index", "layer"], columns="stat", values="value").reset_index(
            level=0, drop=True
        )
        if len(stats)
        else pd.DataFrame()
    )
    return RunDetails(info, epochs, layers, registry.reproductions_of(info.id), subset_notes(epochs))
