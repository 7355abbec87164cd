"""The paper's rows: ``recipes/paper/*.toml``, one complete recipe per row of Guo et al.'s tables.

Each file's ``[paper]`` section carries the row's label and the top-1 % the paper prints (outside
the config hash). Read here without torch, so that reports can compare a run with the row it
claims to reproduce (:func:`deviations`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imloss_cli import SOURCE_ROOT

from .errors import RecipeError
from .files import load_recipe, validate_recorded
from .sections import NON_SEMANTIC_FIELDS, PAPER_TABLES, Recipe

PAPER_DIR = SOURCE_ROOT / "recipes" / "paper"


@dataclass(frozen=True)
class PaperRow:
    name: str  # the file's stem, what `imloss paper ROW` takes
    recipe: Recipe  # its [paper] section is set

    @property
    def table(self) -> str:
        assert self.recipe.paper is not None
        return self.recipe.paper.table


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
        raise RecipeError([f"unknown paper row {n!r}; known rows: {', '.join(rows)}" for n in unknown])
    return [rows[n] for n in names] if names else list(rows.values())


def deviations(recorded: dict[str, Any], row: Recipe) -> list[str]:
    """How a run's recorded recipe differs from its paper row in what the run computes, as
    ``"train.epochs 1 (paper: 300)"``; [] for a run of the row as the paper ran it.

    Fields that name or place a run (``NON_SEMANTIC_FIELDS``) and the seed do not count. A recipe
    recorded by an older imloss is read with today's defaults for the fields it lacks.
    """
    ours = _flat(validate_recorded(recorded).model_dump(mode="json"))
    theirs = _flat(row.model_dump(mode="json"))
    ignored = (*NON_SEMANTIC_FIELDS, "train.seed")
    return [
        f"{key} {_text(ours.get(key))} (paper: {_text(theirs.get(key))})"
        for key in sorted(set(ours) | set(theirs))
        if not any(key == f or key.startswith(f + ".") for f in ignored) and ours.get(key) != theirs.get(key)
    ]


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _text(value: Any) -> str:
    return "none" if value is None else str(value)
