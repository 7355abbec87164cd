"""A study's numbers from the registry, and its Pareto front: pandas and numpy only.

The worker tells Optuna these numbers and the report draws the front from the same function, so the
two can only disagree if Optuna was told something else (the report checks it against
``study.best_trials``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from imloss_cli.registry import DIVERGED, FAILED, RunInfo
from imloss_cli.train.errors import DivergedError

from .space import SELECTOR, Constraint, Objective


def trial_status(run: RunInfo) -> str:
    """A trial's status from its run: the displayed status, DIVERGED for a run whose loss diverged
    (a result of its values: told to Optuna as FAIL, never retried)."""
    return DIVERGED if run.status == FAILED and run.error_type == DivergedError.__name__ else run.display_status


def selected_epochs(metrics: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Per run, the epoch of its best :data:`~.space.SELECTOR` (ties: the earliest) and ``names`` there.

    Args:
        metrics: epoch metrics in long format (``Registry.epoch_metrics``: run_id, epoch, name, value).
        names: the metrics to read at that epoch.

    Returns:
        run_id, epoch and one column per name (NaN where the epoch did not log it); runs that
        logged no validation accuracy have no row.
    """
    val = metrics.loc[metrics["name"] == SELECTOR, ["run_id", "epoch", "value"]].dropna(subset=["value"])
    best = val.sort_values(["run_id", "value", "epoch"], ascending=[True, False, True]).drop_duplicates("run_id")
    rows = best[["run_id", "epoch"]].reset_index(drop=True)
    for name in dict.fromkeys(names):
        values = metrics.loc[metrics["name"] == name, ["run_id", "epoch", "value"]].rename(columns={"value": name})
        rows = rows.merge(values, on=["run_id", "epoch"], how="left")
    return rows


def violations(values: pd.DataFrame, constraints: Sequence[Constraint]) -> pd.DataFrame:
    """One column per constraint (its text): Optuna's constraint value, feasible when <= 0."""
    return pd.DataFrame({c.text: c.violation(values[c.metric]) for c in constraints}, index=values.index)


def feasible(values: pd.DataFrame, constraints: Sequence[Constraint]) -> pd.Series:
    """Whether each row meets every constraint (a missing value meets none)."""
    table = violations(values, constraints)
    return (table <= 0).all(axis=1) if len(constraints) else pd.Series(True, index=values.index)


def pareto_mask(points: np.ndarray, maximize: Sequence[bool], eligible: np.ndarray | None = None) -> np.ndarray:
    """Which rows of ``points`` (n trials x k objectives) no other eligible row dominates.

    Row j dominates row i when it is at least as good in every objective and better in one. Only
    eligible rows (finished, feasible, every value finite) are on the front or dominate; equal
    points are all on it, as in Optuna. O(n^2 k): studies have hundreds of trials, not millions.
    """
    signs = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)
    loss = np.asarray(points, dtype=float).reshape(len(points), len(signs)) * signs  # minimise every column
    ok = np.isfinite(loss).all(axis=1)
    if eligible is not None:
        ok &= np.asarray(eligible, dtype=bool)
    better_or_equal = (loss[None, :, :] <= loss[:, None, :]).all(axis=2)  # [i, j]: j is no worse than i
    strictly = (loss[None, :, :] < loss[:, None, :]).any(axis=2)
    dominated = (better_or_equal & strictly & ok[None, :]).any(axis=1)
    return ok & ~dominated


def front_of(values: pd.DataFrame, objectives: Sequence[Objective], eligible: pd.Series) -> pd.Series:
    """:func:`pareto_mask` over the objective columns of ``values``, as a boolean Series."""
    points = values[[o.metric for o in objectives]].to_numpy(dtype=float)
    mask = pareto_mask(points, [o.maximize for o in objectives], eligible.to_numpy(dtype=bool))
    return pd.Series(mask, index=values.index)
