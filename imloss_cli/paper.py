"""The paper's tables as runnable rows: ``recipes/paper/*.toml``, one file per row of Guo et al.

Each file is a complete recipe whose ``[paper]`` section carries the row's label and the top-1 %
the paper prints (outside the config hash). :func:`run_paper` queues the chosen rows, times seeds,
as one registry group per table, so that rerunning the command resumes it; rows whose data is not
on this machine are listed with the message that says how to get it, and the others go on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imloss_cli import data as data_mod
from imloss_cli.ablate.grid import SEED_KEY, Trial
from imloss_cli.ablate.group import AblationResult, WorkOptions, work_on_group
from imloss_cli.recipe import PAPER_TABLES, Recipe, RecipeError, canonical_json, load_recipe, run_fingerprint
from imloss_cli.registry import Registry
from imloss_cli.train.environment import SOURCE_ROOT, code_version, git_state
from imloss_cli.train.run import run_fields

PAPER_DIR = SOURCE_ROOT / "recipes" / "paper"
ROW_AXIS = "paper.row"


@dataclass(frozen=True)
class PaperRow:
    name: str  # the file's stem, what `imloss paper ROW` takes
    recipe: Recipe  # its [paper] section is set

    @property
    def table(self) -> str:
        assert self.recipe.paper is not None
        return self.recipe.paper.table


@dataclass(frozen=True)
class PaperResult:
    groups: dict[str, AblationResult]  # table -> its group's outcome (absent: every row of it lacked data)
    missing: dict[str, str] = field(default_factory=dict)  # row -> how to get its data
    planned: dict[str, list[Trial]] = field(default_factory=dict)  # dry run: table -> trials

    @property
    def failed(self) -> bool:
        return any(r.failed for r in self.groups.values())


def paper_rows(directory: Path = PAPER_DIR) -> dict[str, PaperRow]:
    """Every row recipe under ``directory``, by name, in table order (main first) then file name.

    Raises:
        RecipeError: the folder is missing, or a file is not a valid recipe with a [paper] section.
    """
    if not directory.is_dir():
        raise RecipeError([f"no paper recipes at {directory}: run imloss from a checkout of the project"])
    rows = {}
    for path in sorted(directory.glob("*.toml")):
        recipe = load_recipe(path)
        if recipe.paper is None:
            raise RecipeError([f"{path}: a paper row needs a [paper] section (table, row, top1)"])
        rows[path.stem] = PaperRow(path.stem, recipe)
    return dict(sorted(rows.items(), key=lambda item: PAPER_TABLES.index(item[1].table)))


def select_rows(names: Sequence[str], rows: dict[str, PaperRow]) -> list[PaperRow]:
    """The named rows (all of them when ``names`` is empty).

    Raises:
        RecipeError: an unknown name (the message lists the known ones).
    """
    unknown = [n for n in names if n not in rows]
    if unknown:
        raise RecipeError([f"unknown paper row {n!r}; known rows: {', '.join(rows)}" for n in unknown], "paper")
    return [rows[n] for n in names] if names else list(rows.values())


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
    names: Sequence[str],
    *,
    registry_url: str,
    argv: list[str],
    epochs: int | None = None,
    seeds: int = 1,
    overrides: dict[str, Any] | None = None,
    dry_run: bool = False,
    work: WorkOptions = WorkOptions(),
    on_missing: Callable[[str, str], None] | None = None,
) -> PaperResult:
    """Queue and train the chosen rows (default: every row), one group per table, seeds 0..seeds-1.

    Args:
        names: row names (file stems under recipes/paper/); empty: all.
        epochs: train every row for this many epochs instead of its own (recorded in each recipe).
        overrides: further ``--set`` values for every row.
        dry_run: plan only: nothing is checked or written.
        work: how this worker trains the groups (``jobs``, heartbeat, progress callbacks).
        on_missing: called with (row, message) for each row whose data is not on this machine.

    Raises:
        RecipeError: an unknown row, or an override that makes a row invalid.
    """
    started_at = datetime.now(timezone.utc)
    changes = {**(overrides or {}), **({"train.epochs": epochs} if epochs is not None else {})}
    chosen = select_rows(names, paper_rows())
    version = code_version(git_state())
    tables: dict[str, list[Trial]] = {}
    for row in chosen:
        for seed in range(seeds):
            recipe = row.recipe.with_overrides({**changes, SEED_KEY: seed})
            fingerprint = run_fingerprint(recipe, seed, version)
            tables.setdefault(row.table, []).append(Trial({ROW_AXIS: row.name, SEED_KEY: seed}, recipe, fingerprint))
    if dry_run:
        return PaperResult({}, planned=tables)
    registry = Registry(registry_url)
    missing: dict[str, str] = {}
    checked: dict[str, str | None] = {}
    groups = {}
    for table, trials in tables.items():
        key_blob = json.dumps({"table": table, "rows": [t.values for t in trials], "changes": changes}, sort_keys=True)
        axes = {ROW_AXIS: list(dict.fromkeys(t.values[ROW_AXIS] for t in trials)), SEED_KEY: list(range(seeds))}
        group_id = registry.claim_group(
            hashlib.sha256(key_blob.encode()).hexdigest()[:32], f"paper: {table} table", {"table": table}, axes, argv
        )
        ready = []
        for trial in trials:
            row = trial.values[ROW_AXIS]
            problem = missing.get(row) or _missing_data(trial.recipe, checked)
            if problem is None:
                ready.append(trial)
            elif row not in missing:
                missing[row] = problem
                if on_missing is not None:
                    on_missing(row, problem)
        if not ready:
            continue
        registry.queue_runs(group_id, [run_fields(t.recipe, argv=argv, kind="ablate", version=version) for t in ready])
        groups[table] = work_on_group(registry, group_id, started_at, registry_url=registry_url, argv=argv, work=work)
    return PaperResult(groups, missing)
