"""Each configuration against a baseline: intervals, paired or Welch tests, Holm, and what to conclude.

``compare_configurations`` adds, per compared column c (the report's metric and the efficiency
columns), to every row of the report's table: ``c_ci_low``, ``c_ci_high`` (the 95% t-interval of
the mean over seeds), ``c_values`` and ``seeds`` (the per-seed values); and to every row but the
baseline: ``delta_c`` with ``delta_c_ci_low``/``delta_c_ci_high``, ``p_c``, ``p_adj_c`` (Holm over
the rows), ``test_c`` ("paired, n = 5") and ``significant_c``. All in the stored units; the formats
scale them (accuracies to percent). The formulas are in ``report.stats``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from .errors import ReportError
from .stats import ALPHA, POWER, compare, detectable_difference, holm, mean_interval, pooled_sd
from .text import _scale, _value_text


@dataclass(frozen=True)
class Baseline:
    """The row every other configuration is compared with, and how it was chosen."""

    row: int
    label: str
    how: str  # "given" (--baseline), "default" (the table's first row) or "study" (its baseline trial)

    @property
    def reason(self) -> str:
        """How the row was chosen, in words."""
        return {
            "given": "chosen with --baseline",
            "default": "the smallest ablated values",
            "study": "the recipe's own values: the study's baseline trial",
        }[self.how]


def choose_baseline(
    table: pd.DataFrame, varying: list[str], wanted: Sequence[str] | None, study_row: int | None = None
) -> Baseline:
    """The row ``wanted`` names (``["loss.im_weight=0", ...]``); else ``study_row`` (a study's baseline
    trial); else the first row (smallest ablated values).

    Raises:
        ReportError: a key that is not an ablated field, a value no row has, or a choice that
            matches several rows (name another axis too).
    """
    labels = table["config"].tolist() if "config" in table else [str(i) for i in range(len(table))]
    if not wanted:
        return (
            Baseline(0, labels[0], "default") if study_row is None else Baseline(study_row, labels[study_row], "study")
        )
    keep = pd.Series(True, index=table.index)
    for item in wanted:
        key, eq, value = item.partition("=")
        if not eq or key not in varying:
            raise ReportError(
                f"--baseline {item!r}: give FIELD=VALUE with one of the compared fields: {', '.join(varying) or 'none'}"
            )
        shown = table[key].map(_value_text)
        match = shown == value
        if not match.any():  # 0 for 0.0, 2 for 2.0: compare numbers as numbers
            with contextlib.suppress(ValueError):
                match = pd.to_numeric(table[key], errors="coerce") == float(value)
        if not match.any():
            raise ReportError(f"--baseline {item!r}: no configuration has it; {key} is one of {', '.join(shown)}")
        keep &= match
    rows = list(keep[keep].index)
    if len(rows) != 1:
        found = "none" if not rows else ", ".join(labels[r] for r in rows)
        raise ReportError(f"--baseline {' '.join(wanted)} names {len(rows)} configurations ({found}); name one")
    return Baseline(rows[0], labels[rows[0]], "given")


def compare_configurations(
    table: pd.DataFrame, runs: pd.DataFrame, columns: Sequence[str], baseline: Baseline
) -> dict[str, int]:
    """Add the interval and comparison columns (module docstring) to ``table``, in place.

    Args:
        table: one row per configuration, with ``config_hash``.
        runs: one row per finished run: ``config_hash``, ``seed`` and the ``columns`` values.
        columns: the compared columns.
        baseline: the row the others are compared with.

    Returns:
        Per column, how many rows differ significantly from the baseline after Holm's adjustment.
    """
    hashes = table["config_hash"].tolist()
    significant: dict[str, int] = {}
    table["seeds"] = [sorted(runs.loc[runs["config_hash"] == h, "seed"].astype(int).tolist()) for h in hashes]
    for c in columns:
        per_seed = [_by_seed(runs, h, c) for h in hashes]
        intervals = [mean_interval(list(v.values())) for v in per_seed]
        table[f"{c}_ci_low"] = [i.low for i in intervals]
        table[f"{c}_ci_high"] = [i.high for i in intervals]
        table[f"{c}_values"] = [[v[s] for s in sorted(v)] for v in per_seed]
        comparisons = [
            None if r == baseline.row else compare(per_seed[baseline.row], per_seed[r]) for r in range(len(hashes))
        ]
        others = [r for r in range(len(hashes)) if r != baseline.row]
        adjusted = dict(zip(others, holm([comparisons[r].p for r in others])))  # type: ignore[union-attr]
        nan = math.nan
        table[f"delta_{c}"] = [nan if k is None else k.delta for k in comparisons]
        table[f"delta_{c}_ci_low"] = [nan if k is None else k.low for k in comparisons]
        table[f"delta_{c}_ci_high"] = [nan if k is None else k.high for k in comparisons]
        table[f"p_{c}"] = [nan if k is None else k.p for k in comparisons]
        table[f"p_adj_{c}"] = [adjusted.get(r, nan) for r in range(len(hashes))]
        table[f"test_{c}"] = ["baseline" if k is None else k.described for k in comparisons]
        table[f"significant_{c}"] = [bool(adjusted.get(r, nan) < ALPHA) for r in range(len(hashes))]
        significant[c] = int(table[f"significant_{c}"].sum())
    return significant


def _by_seed(runs: pd.DataFrame, config_hash: str, column: str) -> dict[int, float]:
    """{seed: value} of one configuration (a seed logged twice counts once, as its mean)."""
    rows = runs[(runs["config_hash"] == config_hash)].dropna(subset=[column])
    return {int(s): float(v) for s, v in rows.groupby("seed")[column].mean().items()}


def conclusion(
    table: pd.DataFrame, metric: str, baseline: Baseline, selection_rule: str, significant: dict[str, int]
) -> list[str]:
    """The lines under the table: what was tested, what not to conclude, and (nothing significant) the
    smallest difference these seeds could have found."""
    others = len(table) - 1
    if others < 1:
        return [f"One configuration: nothing is compared. {metric}: mean and 95% t-interval over seeds."]
    scale, digits, unit = _scale(metric)
    unit_text = {"%": " pp", "": ""}.get(unit, f" {unit}")
    lines = [
        f"Tested: every configuration against the baseline {baseline.label} "
        f"({baseline.reason}), on {metric} "
        f"at {selection_rule}: a paired t-test by seed where both rows have the same seeds, Welch's t-test "
        f"otherwise; intervals are 95% Student's t; p-values adjusted for {others} comparison"
        f"{'s' if others > 1 else ''} (Holm), significant below {ALPHA}.",
        "Not to conclude: the selection rule applies to every row alike, so it can lift all means without "
        "favouring one; a difference that is not significant is not shown to be zero, only not shown to differ "
        "from the seeds' noise.",
    ]
    if significant.get(metric, 0) == 0:
        groups = [v for v in table[f"{metric}_values"] if len(v) >= 2]
        n = min((len(v) for v in groups), default=0)
        sd = pooled_sd(groups)
        mdd = detectable_difference(sd, n, alpha=ALPHA / others, power=POWER)
        if math.isnan(mdd):
            lines.append("No difference is significant, and with fewer than 2 seeds per row none could be; add seeds.")
        else:
            lines.append(
                f"No difference in {metric} is significant. With n = {n} seeds a row and the pooled std of "
                f"{sd * scale:.{digits}f}{unit_text}, a difference needs about {mdd * scale:.{digits}f}{unit_text} to "
                f"be found with {POWER:.0%} power (two-sample t at {ALPHA}/{others}); add seeds to see smaller ones."
            )
    return lines
