"""The paper's figure beside our numbers, and whether our runs are the paper's setting at all.

A run of a paper row (``recipes/paper/``) carries the row's label and printed top-1 in its recipe.
Its configuration gets the figure, our delta in percentage points, and the ways its recorded
recipe differs from the row's file (fewer epochs, another network, ...): a budget run is then
never read as a reproduction.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from imloss_cli.recipe import Recipe, RecipeError
from imloss_cli.recipe.rows import deviations, paper_rows
from imloss_cli.registry import RunInfo

from .errors import ReportError
from .text import _is_accuracy


def add_paper_columns(table: pd.DataFrame, runs: Sequence[RunInfo], metric: str, *, required: bool) -> list[str]:
    """Add ``paper_row`` (the row's label), ``paper_top1``, ``delta_pp`` (our mean - the paper's, in
    percentage points), ``paper_in_ci`` (whether the paper's figure lies inside our 95% interval of the
    mean; None without one) and ``paper_deviation`` ("" for the paper's setting) where runs carry a figure.
    The table must hold the metric's interval (``<metric>_ci_low``, ``report.compare``).

    Returns:
        One warning per configuration whose runs are not the paper's setting.

    Raises:
        ReportError: ``required`` and no run carries a paper figure, or the metric is not an accuracy.
    """
    carrying: dict[str, RunInfo] = {}
    for run in runs:
        if run.recipe.get("paper"):
            carrying.setdefault(run.config_hash, run)
    if required and not carrying:
        raise ReportError("no run here carries a paper figure: train the rows of recipes/paper/ (imloss paper)")
    if required and not _is_accuracy(metric):
        raise ReportError(f"the paper prints top-1 accuracy: compare test_acc (or another *_acc), not {metric!r}")
    if not carrying or not _is_accuracy(metric):
        return []
    rows = _rows_by_label()
    labels = {h: r.recipe["paper"]["row"] for h, r in carrying.items()}
    differs = {
        h: "; ".join(deviations(r.recipe, rows[labels[h]]))
        if labels[h] in rows
        else "unknown: no recipes/paper/ row with this label in this checkout"
        for h, r in carrying.items()
    }
    hashes = table["config_hash"]
    table["paper_row"] = hashes.map(labels)
    table["paper_top1"] = hashes.map({h: r.recipe["paper"]["top1"] for h, r in carrying.items()}).astype("float64")
    table["delta_pp"] = table[f"{metric}_mean"] * 100.0 - table["paper_top1"]
    low, high, top1 = table[f"{metric}_ci_low"] * 100.0, table[f"{metric}_ci_high"] * 100.0, table["paper_top1"]
    table["paper_in_ci"] = [
        None if pd.isna(p) or pd.isna(lo) else bool(lo <= p <= hi) for p, lo, hi in zip(top1, low, high)
    ]
    table["paper_deviation"] = hashes.map(differs)
    return [
        f"{labels[h]}: not the paper's setting ({text}), so its delta compares another run with the paper's figure"
        for h, text in differs.items()
        if text
    ]


def _rows_by_label() -> dict[str, Recipe]:
    """The paper rows of this checkout by their label; {} when there are none to read."""
    try:
        rows = paper_rows()
    except RecipeError:
        return {}
    return {row.recipe.paper.row: row.recipe for row in rows.values() if row.recipe.paper is not None}
