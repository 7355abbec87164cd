"""Which runs a report compares: the selection (group, recipe, or all), and its configurations.

Runs are pooled by ``config_hash``; a configuration's label names the recipe fields that vary
between configurations (or, when none does, the recipe name and hash).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pandas as pd

from imloss_cli.recipe import NON_SEMANTIC_FIELDS, read_recorded
from imloss_cli.registry import FINISHED, Registry, RegistryError, RunInfo

from .errors import ReportError
from .text import _value_text

CONFIG_COLUMN = "config"  # label column used when no recipe field varies between rows
SHOWN_IDS = 5  # run ids listed in one warning before "..."


def select_runs(
    registry: Registry, *, group: str | Sequence[str] | None, last: bool, recipe_name: str | None
) -> tuple[str, str, list[RunInfo]]:
    """(title, "in ..." phrase for messages, member runs of any status).

    ``group``: one group, or several (their runs compared in one table: the paper's main and
    comparison groups, say).
    """
    groups = [group] if isinstance(group, str) else list(group or [])
    if groups and last:
        raise ReportError("give either a group or last, not both")
    try:
        infos = [registry.get_group(g) for g in groups]
    except RegistryError as exc:
        raise ReportError(str(exc)) from exc
    if not infos:
        # Without any choice the latest group is the natural subject (what `ablate` just ran);
        # a recipe name alone means "across the whole registry".
        latest = registry.latest_group() if last or recipe_name is None else None
        if last and latest is None:
            raise ReportError("the registry has no ablation groups")
        infos = [latest] if latest is not None else []
    if infos:
        members = [r for info in infos for r in registry.list_runs(group_id=info.id)]
        title = ", ".join(f"group {info.id} ({info.name})" for info in infos)
        where = "in group" + ("s " if len(infos) > 1 else " ") + ", ".join(info.id for info in infos)
    else:
        members = registry.list_runs()
        title, where = "all finished runs", "in the registry"
    if recipe_name is not None:
        members = [r for r in members if r.recipe.get("name") == recipe_name]
        title = f"recipe '{recipe_name}', " + ("all finished runs" if not infos else title)
        where = f"of recipe '{recipe_name}' {where}"
    return title, where, members


def finished_runs(members: Sequence[RunInfo], where: str) -> tuple[list[RunInfo], list[str]]:
    """The FINISHED members, and a warning naming the others (left out).

    Raises:
        ReportError: no member has finished.
    """
    finished = [r for r in members if r.status == FINISHED]
    unfinished, detail = count_unfinished(members)
    if not finished:
        raise ReportError(f"no finished runs {where}" + (f" ({unfinished} unfinished: {detail})" if unfinished else ""))
    warnings = []
    if unfinished:
        one = unfinished == 1
        warnings.append(
            f"{unfinished} run{'' if one else 's'} {where} {'is' if one else 'are'} not finished ({detail}) and "
            f"{'is' if one else 'are'} left out"
        )
    # A reproduction trains the same recipe and seed again: pooled, its seed would count twice.
    ids = {r.id for r in finished}
    again = [r for r in finished if r.reproduces in ids]
    if again:
        pairs = ", ".join(f"{r.id} reproduces {r.reproduces}" for r in again[:SHOWN_IDS])
        warnings.append(f"{len(again)} reproduced run(s) left out of the means, which count each seed once: {pairs}")
        finished = [r for r in finished if r.reproduces not in ids]
    return finished, warnings


def count_unfinished(members: Sequence[RunInfo]) -> tuple[int, str]:
    """How many runs are not FINISHED, and "1 FAILED, 1 RUNNING" (display status, so LOST shows)."""
    counts = Counter(r.display_status for r in members if r.status != FINISHED)
    return sum(counts.values()), ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def configurations(runs: Sequence[RunInfo]) -> tuple[pd.DataFrame, list[str]]:
    """One row per config_hash (sorted by the varying fields) and the varying field names.

    Columns: config_hash, the varying fields, config (the row label).
    """
    first: dict[str, RunInfo] = {}
    for run in reversed(runs):  # list_runs is newest first: the oldest run stands for its config
        first.setdefault(run.config_hash, run)
    hashes = list(first)
    flat = pd.json_normalize([read_recorded(first[h].recipe) for h in hashes], sep=".")
    # Non-semantic fields and sections (a section such as [paper] flattens to paper.row, paper.top1).
    flat = flat.drop(
        columns=[c for c in flat.columns if any(c == f or c.startswith(f + ".") for f in NON_SEMANTIC_FIELDS)]
    )
    for column in flat.columns:  # lists (data.mean, data.std) become hashable tuples
        if flat[column].map(lambda v: isinstance(v, list)).any():
            flat[column] = flat[column].map(lambda v: tuple(v) if isinstance(v, list) else v)
    varying = [c for c in flat.columns if flat[c].nunique(dropna=False) > 1]
    configs = flat[varying].copy()
    configs.insert(0, "config_hash", hashes)
    if varying:
        try:
            configs = configs.sort_values(varying, na_position="last", kind="stable")
        except TypeError:  # a field holding values of different types in different recipes
            configs = configs.sort_values(varying, key=lambda s: s.astype(str), kind="stable")
        configs["config"] = [
            ", ".join(f"{f}={_value_text(v)}" for f, v in zip(varying, row))
            for row in configs[varying].itertuples(index=False)
        ]
    else:
        names = [first[h].recipe.get("name", "?") for h in configs["config_hash"]]
        configs["config"] = [f"{n} ({h})" for n, h in zip(names, configs["config_hash"])]
    return configs.reset_index(drop=True), varying


def runs_frame(runs: Sequence[RunInfo], configs: pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "run_id": [r.id for r in runs],
            "config_hash": [r.config_hash for r in runs],
            "seed": [r.seed for r in runs],
            "code_version": [r.code_version for r in runs],
            "git_dirty": pd.Series([r.git_dirty for r in runs], dtype=object),
            "k_schedule": [schedule_text(r.recipe) for r in runs],
            "host": [r.host for r in runs],
            "duration_s": [r.duration.total_seconds() if r.duration is not None else float("nan") for r in runs],
        }
    )
    order = {h: i for i, h in enumerate(configs["config_hash"])}
    frame["config"] = frame["config_hash"].map(dict(zip(configs["config_hash"], configs["config"])))
    frame = frame.assign(_row=frame["config_hash"].map(order)).sort_values(["_row", "seed", "run_id"])
    return frame.drop(columns="_row")[
        ["run_id", "config_hash", "config", "seed", "code_version", "git_dirty", "k_schedule", "host", "duration_s"]
    ]


def provenance_warnings(runs: pd.DataFrame) -> list[str]:
    warnings = []
    versions = runs.groupby("config", sort=False)["code_version"].unique()
    for label, values in versions.items():
        if len(values) > 1:
            warnings.append(f"row {label} mixes code versions {', '.join(sorted(values))}")
    dirty = runs.loc[runs["git_dirty"].eq(True), "run_id"].tolist()
    if dirty:
        one = len(dirty) == 1
        warnings.append(
            f"{len(dirty)} run{'' if one else 's'} come{'s' if one else ''} from a dirty "
            f"working tree (uncommitted changes): {ids_text(dirty)}"
        )
    return warnings


def schedule_text(recipe: dict[str, Any]) -> str:
    if (recipe.get("model") or {}).get("neuron") == "relu":
        return "none (ReLU twin)"
    surrogate = recipe.get("surrogate") or {}
    if surrogate.get("schedule") == "fixed":
        return f"fixed K={surrogate.get('k_fixed')}"
    if surrogate.get("schedule") == "guo":
        return f"authors' surrogate K={surrogate.get('k_fixed')}"
    if surrogate.get("schedule") == "esg":
        return f"ESG K {surrogate.get('k_min')}→{surrogate.get('k_max')}"
    return str(surrogate.get("schedule", "unknown schedule"))


def ids_text(run_ids: Sequence[str]) -> str:
    shown = ", ".join(run_ids[:SHOWN_IDS])
    return shown + (f", … ({len(run_ids) - SHOWN_IDS} more)" if len(run_ids) > SHOWN_IDS else "")
