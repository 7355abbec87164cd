"""The paper's tables as runnable rows: ``recipes/paper/*.toml``, one file per row of Guo et al.

Each file is a complete recipe whose ``[paper]`` section carries the row's label and the top-1 %
the paper prints (outside the config hash). :func:`run_paper` queues the chosen rows, times seeds,
as one registry group per table, so that rerunning the command resumes it; rows whose data is not
on this machine are listed with the message that says how to get it, and the others go on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from imloss_cli import data as data_mod
from imloss_cli.ablate.grid import SEED_KEY, Trial
from imloss_cli.ablate.group import AblationResult, WorkOptions, work_on_group
from imloss_cli.recipe import Recipe, canonical_json, run_fingerprint
from imloss_cli.recipe.rows import paper_rows, select_rows
from imloss_cli.registry import Registry
from imloss_cli.train.environment import code_version, git_state
from imloss_cli.train.lifecycle import new_run

ROW_AXIS = "paper.row"


@dataclass(frozen=True)
class PaperPlan:
    """The chosen rows as trials, one list per table, planned before anything is checked or written."""

    tables: dict[str, list[Trial]]  # table -> its trials, rows in file order, seeds 0..seeds-1
    changes: dict[str, Any]  # what every row was changed by (--epochs, --set), part of each group's key
    seeds: int
    version: str  # the code version every trial's fingerprint holds

    @property
    def rows(self) -> list[str]:
        return list(dict.fromkeys(self.row(t) for trials in self.tables.values() for t in trials))

    @staticmethod
    def row(trial: Trial) -> str:
        """The paper row a trial belongs to."""
        return str(trial.values[ROW_AXIS])


@dataclass(frozen=True)
class PaperResult:
    groups: dict[str, AblationResult]  # table -> its group's outcome (absent: every row of it lacked data)
    missing: dict[str, str] = field(default_factory=dict)  # row -> how to get its data

    @property
    def failed(self) -> bool:
        return any(r.failed for r in self.groups.values())


def plan_paper(
    names: Sequence[str], *, epochs: int | None = None, seeds: int = 1, overrides: dict[str, Any] | None = None
) -> PaperPlan:
    """The chosen rows (default: every row) times seeds 0..seeds-1, one list of trials per table.

    Args:
        names: row names (file stems under recipes/paper/); empty: all.
        epochs: train every row for this many epochs instead of its own (recorded in each recipe).
        overrides: further ``--set`` values for every row.

    Raises:
        RecipeError: an unknown row, or an override that makes a row invalid.
    """
    changes = {**(overrides or {}), **({"train.epochs": epochs} if epochs is not None else {})}
    version = code_version(git_state())
    tables: dict[str, list[Trial]] = {}
    for row in select_rows(names, paper_rows()):
        for seed in range(seeds):
            recipe = row.recipe.with_overrides({**changes, SEED_KEY: seed})
            fingerprint = run_fingerprint(recipe, seed, version)
            tables.setdefault(row.table, []).append(Trial({ROW_AXIS: row.name, SEED_KEY: seed}, recipe, fingerprint))
    return PaperPlan(tables, changes, seeds, version)


def missing_data(plan: PaperPlan) -> dict[str, str]:
    """``{row: why its data cannot be loaded here}`` for the planned rows whose data is not on this machine.

    Each distinct data setting is loaded once, as a run would load it (an event cache is built).
    """
    checked: dict[str, str | None] = {}
    missing: dict[str, str] = {}
    for trials in plan.tables.values():
        for trial in trials:
            row = trial.values[ROW_AXIS]
            problem = missing.get(row) or _missing_data(trial.recipe, checked)
            if problem is not None:
                missing[row] = problem
    return missing


def _missing_data(recipe: Recipe, checked: dict[str, str | None]) -> str | None:
    """Why this row's data cannot be loaded here (the data package's own message), or None."""
    key = canonical_json(recipe) if recipe.data.dataset == "cifar10dvs" else recipe.data.model_dump_json()
    if key not in checked:
        try:
            data_mod.build_datasets(recipe.data, timesteps=recipe.model.timesteps)
            checked[key] = None
        except data_mod.DataError as e:
            checked[key] = str(e)
    return checked[key]


def run_paper(
    plan: PaperPlan,
    *,
    registry: Registry,
    argv: list[str],
    missing: dict[str, str],
    work: WorkOptions = WorkOptions(),
) -> PaperResult:
    """Queue and train the planned rows whose data is here, one registry group per table.

    Args:
        plan: the rows and seeds (:func:`plan_paper`).
        registry: where the groups are recorded.
        argv: the command line, recorded with each group and run.
        missing: rows left out for want of data (:func:`missing_data`).
        work: how this worker trains the groups (``jobs``, heartbeat, progress callbacks).
    """
    started_at = datetime.now(UTC)
    groups = {}
    for table, trials in plan.tables.items():
        ready = [t for t in trials if t.values[ROW_AXIS] not in missing]
        if not ready:
            continue
        key = {"table": table, "rows": [t.values for t in trials], "changes": plan.changes}
        key_blob = json.dumps(key, sort_keys=True)
        axes = {ROW_AXIS: list(dict.fromkeys(t.values[ROW_AXIS] for t in trials)), SEED_KEY: list(range(plan.seeds))}
        group_id = registry.claim_group(
            hashlib.sha256(key_blob.encode()).hexdigest()[:32], f"paper: {table} table", {"table": table}, axes, argv
        )
        registry.queue_runs(
            group_id, [new_run(t.recipe, argv=argv, kind="ablate", version=plan.version) for t in ready]
        )
        groups[table] = work_on_group(registry, group_id, started_at, argv=argv, work=work)
    return PaperResult(groups, missing)
