"""``imloss reproduce RUN``: train a recorded run again from what the registry holds, and compare.

The stored resolved recipe (its seed included) is trained as a new run that names the original
(``reproduces``), so no recipe file is needed. Every epoch's data order and augmentation derive from
(seed, epoch) and the model's initialisation from the seed, so on CPU the same code gives the same
numbers bit for bit; a GPU gives them within the tolerance its kernels allow. The comparison is every
per-epoch metric and every layer statistic (the timings left out), each by its largest absolute
difference over the epochs; a metric or epoch that one run has and the other not differs by infinity.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from imloss_cli.recipe import validate_recorded
from imloss_cli.registry import FINISHED, Registry, RunInfo
from imloss_cli.train.environment import code_version, git_state
from imloss_cli.train.errors import TrainingError
from imloss_cli.train.lifecycle import HEARTBEAT_S, train_run
from imloss_cli.train.sink import Callbacks

TIMINGS = frozenset({"train_seconds", "epoch_seconds"})
"""Metrics that measure the machine, not the training: left out of the comparison."""


@dataclass(frozen=True)
class Reproduction:
    original: str
    run_id: str
    differences: dict[str, float]  # per metric (and "layer/stat"), the largest |difference| over the epochs
    first_difference: tuple[int, str, float] | None  # (epoch, metric, |difference|) past the tolerance
    tolerance: float
    warnings: list[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return self.first_difference is None


def provenance_warnings(info: RunInfo) -> list[str]:
    """Why the same recipe and seed may still give other numbers here: another code version, a dirty tree."""
    git = git_state()
    now = code_version(git)
    warnings = []
    if now != info.code_version:
        warnings.append(f"run {info.id} was trained by code version {info.code_version}; this is {now}")
    if info.git_dirty:
        warnings.append(
            f"run {info.id} was trained from a dirty working tree (its diff: code.diff beside its checkpoints)"
        )
    if git.dirty:
        warnings.append("this working tree has uncommitted changes")
    return warnings


def reproduce_run(
    registry: Registry,
    run: str,
    *,
    argv: list[str],
    callbacks: Callbacks = Callbacks(),
    tolerance: float = 0.0,
    heartbeat_s: float = HEARTBEAT_S,
    on_warning: Callable[[str], None] | None = None,
) -> Reproduction:
    """Train run ``run``'s recorded recipe and seed as a new run that names it, then compare the two.

    Raises:
        TrainingError: the run has not finished (there is nothing whole to compare with).
        RegistryError: no such run.
    """
    info = registry.get_run(run)
    if info.status != FINISHED:
        raise TrainingError(f"run {info.id} is {info.display_status}; reproduce a FINISHED run")
    recipe = validate_recorded(info.recipe, f"run {info.id}")
    warnings = provenance_warnings(info)
    if on_warning is not None:
        for w in warnings:
            on_warning(w)
    result = train_run(registry, recipe, argv=argv, callbacks=callbacks, heartbeat_s=heartbeat_s, reproduces=info.id)
    differences, first = compare_runs(registry, info.id, result.run_id, tolerance)
    return Reproduction(info.id, result.run_id, differences, first, tolerance, warnings)


def compare_runs(
    registry: Registry, original: str, again: str, tolerance: float
) -> tuple[dict[str, float], tuple[int, str, float] | None]:
    """Per metric the largest |difference| between two runs' epochs, and the first (epoch, metric) past
    ``tolerance`` (epochs in order, metrics by name within an epoch)."""
    tables = [_values(registry, run_id) for run_id in (original, again)]
    joined = (
        tables[0].rename(columns={"value": "value_a"}).join(tables[1].rename(columns={"value": "value_b"}), how="outer")
    )
    diff = (joined["value_a"] - joined["value_b"]).abs()
    # a value that one run has and the other not (or NaN on one side only) differs without bound
    one_sided = joined["value_a"].isna() != joined["value_b"].isna()
    diff = diff.where(~one_sided, math.inf).fillna(0.0)
    per_metric = diff.groupby(level="metric").max()
    past = diff[diff > tolerance]
    first = None
    if len(past):
        (epoch, metric), value = next(iter(past.sort_index().items()))
        first = (int(epoch), str(metric), float(value))
    return {str(k): float(v) for k, v in per_metric.items()}, first


def _values(registry: Registry, run_id: str) -> pd.DataFrame:
    """One run's epoch metrics and layer statistics, indexed by (epoch, metric)."""
    metrics = registry.epoch_metrics([run_id])
    metrics = metrics[~metrics["name"].isin(TIMINGS)].rename(columns={"name": "metric"})
    layers = registry.layer_stats([run_id])
    layers = layers.assign(metric="layer " + layers["layer"] + " " + layers["stat"])
    frame = pd.concat([metrics[["epoch", "metric", "value"]], layers[["epoch", "metric", "value"]]])
    return frame.set_index(["epoch", "metric"])
