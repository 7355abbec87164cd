"""How a study's section reads: tables for people, numbers for machines, and the front's figure.

``formats`` and ``html`` render the tables given here with their own table writers (so escaping is
theirs); ``plots`` draws :func:`pareto_figure` beside the report's other figures. Accuracies are in
percent, as everywhere in the report, and their machine columns say so (``val_acc_pct``).
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from imloss_cli.registry import FINISHED

from .study import StudyReport
from .text import _header, _is_accuracy, _scale

ENERGY = "energy_uj"


def display_tables(study: StudyReport) -> list[tuple[str, pd.DataFrame]]:
    """(caption, table of text) in reading order: the front, the importances (where any), every trial."""
    spec = study.spec
    goals = ", ".join(o.text for o in spec.objectives) + "".join(f"; {c.text}" for c in spec.constraints)
    front = study.front
    caption = (
        f"Pareto front of study {study.group_id} ({goals}): {len(front)} of "
        f"{int((study.trials['status'] == FINISHED).sum())} finished trials, each at its best-validation epoch, "
        "with the numbers its run logged and Optuna was told (test_acc there: the test set only scores them)"
    )
    tables = [(caption, _shown(study, front, ["trial", "run_id", "epoch"], _metrics(study, with_test=True)))]
    if not study.importances.empty:
        importances = study.importances.map(lambda v: f"{v:.3f}").reset_index()
        tables.append(("Parameter importance (fANOVA, per objective; sums to 1)", importances))
    columns = ["trial", "run_id", "status", "epoch"]
    extra = [*_metrics(study, with_test=False), *(["feasible"] if spec.constraints else []), "on_front"]
    tables.append((f"Every trial of the study ({len(study.trials)})", _shown(study, study.trials, columns, extra)))
    return tables


def notes(study: StudyReport) -> list[str]:
    return list(study.notes)


def machine_trials(study: StudyReport) -> pd.DataFrame:
    """One row per trial with its numbers (CSV and JSON): accuracies in percent, columns suffixed ``_pct``."""
    t = study.trials
    columns = ["trial", "run_id", "status", *study.params, "epoch", *_metrics(study, with_test=True)]
    columns += [c.text for c in study.spec.constraints] + ["feasible", "on_front", "baseline", "sampler_seed"]
    table = t[[c for c in dict.fromkeys(columns) if c in t.columns]].copy()
    renames = {}
    for column in table.columns:
        if _is_accuracy(column):
            table[column] = table[column] * 100.0
            renames[column] = f"{column}_pct"
    return table.rename(columns=renames)


def payload(study: StudyReport) -> dict[str, Any]:
    """The study in a JSON report: its spec, the front, every trial, importances, notes."""
    trials = machine_trials(study)

    def records(frame: pd.DataFrame) -> Any:
        return json.loads(frame.to_json(orient="records", double_precision=15))

    return {
        "group": study.group_id,
        **study.spec.record(),
        "selection": "each trial's best-validation epoch (val_acc; ties: the earliest)",
        "front": records(trials[trials["on_front"]].set_index("trial").loc[study.front["trial"]].reset_index()),
        "trials": records(trials),
        "importances": {c: study.importances[c].to_dict() for c in study.importances.columns},
        "notes": notes(study),
    }


def pareto_figure(fig: Any, study: StudyReport) -> Any:
    """The first objective against the second (or, alone, against energy), every finished trial a
    point: infeasible ones grey crosses, the front in red joined by its attainment line, the baseline
    a star."""
    spec = study.spec
    y_goal = spec.objectives[0]
    x_goal = spec.objectives[1] if len(spec.objectives) > 1 else None
    x_metric = x_goal.metric if x_goal is not None else ENERGY
    (x_scale, _, _), (y_scale, _, _) = _scale(x_metric), _scale(y_goal.metric)
    t = study.trials[study.trials["status"] == FINISHED]
    x, y = t[x_metric] * x_scale, t[y_goal.metric] * y_scale
    ax = fig.add_subplot()
    ok = t["feasible"].to_numpy(dtype=bool)
    ax.scatter(x[ok], y[ok], color="tab:blue", alpha=0.6, label="trial")
    if (~ok).any():
        ax.scatter(x[~ok], y[~ok], color="0.6", marker="x", label="infeasible (a constraint failed)")
    front = study.front.sort_values(x_metric)
    fx, fy = front[x_metric] * x_scale, front[y_goal.metric] * y_scale
    # The attainment line: a step at each front point, on the side its neighbours dominate.
    style = "steps-post" if x_goal is None or not x_goal.maximize else "steps-pre"
    ax.plot(fx, fy, color="tab:red", marker="o", drawstyle=style if len(spec.objectives) == 2 else "default",
            linestyle="-" if len(spec.objectives) == 2 else "none", label="Pareto front")  # fmt: skip
    base = t[t["baseline"]]
    if len(base):
        ax.scatter(base[x_metric] * x_scale, base[y_goal.metric] * y_scale, marker="*", s=220, color="black",
                   zorder=5, label="baseline (the recipe's own values)")  # fmt: skip
    for trial, xi, yi in zip(front["trial"], fx, fy):
        ax.annotate(str(trial), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    more = f" (front over all {len(spec.objectives)} objectives)" if len(spec.objectives) > 2 else ""
    ax.set_xlabel(_header(x_metric) + ("" if x_goal is not None else " (not an objective)"))
    ax.set_ylabel(_header(y_goal.metric))
    ax.set_title(f"study {study.group_id}: {len(front)} of {len(t)} finished trials on the front{more}")
    if len(t) == 0:
        ax.text(0.5, 0.5, "no finished trial", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _metrics(study: StudyReport, *, with_test: bool) -> list[str]:
    names = [*(o.metric for o in study.spec.objectives), *(c.metric for c in study.spec.constraints)]
    return list(dict.fromkeys([*names, *(["test_acc", ENERGY] if with_test else [])]))


def _shown(study: StudyReport, rows: pd.DataFrame, head: list[str], metrics: list[str]) -> pd.DataFrame:
    """Rows as text: trial (marked when it is the baseline), run, the searched values, the numbers."""
    out = pd.DataFrame(index=rows.index)
    for column in head:
        if column == "trial":
            out["trial"] = [f"{n} (baseline)" if b else str(n) for n, b in zip(rows["trial"], rows["baseline"])]
        elif column == "run_id":
            out["run"] = rows["run_id"].map(lambda v: "–" if pd.isna(v) else str(v))
        else:
            out[column] = rows[column].map(lambda v: "–" if pd.isna(v) else str(v))
    for field in study.params:
        out[field] = rows[field].map(_value)
    for name in metrics:
        if name in ("feasible", "on_front"):
            out[name.replace("_", " ")] = rows[name].map(lambda v: "yes" if v is True or v == 1 else "")
        else:
            out[_header(name)] = [_number(v, name) for v in rows[name]]
    return out.reset_index(drop=True)


def _number(value: Any, metric: str) -> str:
    scale, digits, _ = _scale(metric)
    return "–" if pd.isna(value) else f"{value * scale:.{digits}f}"


def _value(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
