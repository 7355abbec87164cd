"""Recipes on disk and on the command line: TOML in and out, ``--set`` overrides, canonical JSON, hashes."""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from .errors import RecipeError
from .sections import NON_SEMANTIC_FIELDS, Recipe, set_path, validate_recipe


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["loss.im_weight=0", "data.root=/x"]`` into a dict; values are read as TOML.

    A value that is not valid TOML (``data.root=/tmp/x``) is taken as a plain string.

    Raises:
        RecipeError: an item without '=' or with an empty key.
    """
    out: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. loss.im_weight=0")
            continue
        out[key] = parse_value(raw.strip())
    if problems:
        raise RecipeError(problems)
    return out


def parse_value(raw: str) -> Any:
    """A command-line value read as TOML (0 -> int, 0.5 -> float, [1, 2] -> list), else a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def load_recipe(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read a TOML recipe (None: the embedded digits default), apply overrides, validate.

    Raises:
        RecipeError: unreadable file, TOML syntax error, or any invalid field (all listed).
    """
    source = str(path) if path is not None else "<default recipe>"
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecipeError([f"recipe file not found: {p}{_did_you_mean_file(p)}"]) from None
        except (OSError, UnicodeDecodeError) as e:
            raise RecipeError([f"cannot read recipe {p}: {e}"]) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise RecipeError([f"TOML syntax error: {e}"], source) from None
    problems = []
    for key, value in (overrides or {}).items():
        try:
            set_path(data, key, value)
        except RecipeError as e:
            problems.extend(e.problems)
    if problems:
        raise RecipeError(problems, source)
    return validate_recipe(data, source)


def _did_you_mean_file(path: Path) -> str:
    """ "; did you mean recipes/NAME.toml?" when the user named a recipe by its name alone."""
    for candidate in (Path("recipes") / f"{path.name}.toml", Path("recipes") / path.name, path.with_suffix(".toml")):
        if candidate != path and candidate.is_file():
            return f"; did you mean {candidate}?"
    return ""


def sets_nothing(path: str | Path) -> bool:
    """Whether a readable recipe file sets no field at all (it would train the embedded default)."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8")) == {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False  # load_recipe reports those


def read_recorded(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A recipe as an earlier imloss recorded it (a run's, a checkpoint's), in today's names, so that a
    recorded run keeps the meaning it was trained with: whatever reads a recorded recipe reads it
    through this (or :func:`validate_recorded`).

    Recordings are complete (every field their imloss had). One without ``neuron.plif_tau`` predates
    Fang et al.'s PLIF: its ``model.neuron = "plif"`` was the learnable leak on imloss's charge, today
    ``"lif-learned-leak"``, whose w was weight-decayed then (``optim.plif_weight_decay = true``).
    """
    data = copy.deepcopy(dict(recorded))
    model, neuron, optim = data.get("model"), data.get("neuron"), data.get("optim")
    if (
        isinstance(model, dict)
        and model.get("neuron") == "plif"
        and isinstance(neuron, dict)
        and "plif_tau" not in neuron
    ):
        data["model"] = {**model, "neuron": "lif-learned-leak"}
        data["optim"] = {**(optim if isinstance(optim, dict) else {}), "plif_weight_decay": True}
    return data


def validate_recorded(recorded: Mapping[str, Any], source: str | None = None) -> Recipe:
    """:func:`read_recorded`, validated: the recipe a recorded run trained (fields added since take their defaults).

    Raises:
        RecipeError: a recorded value today's imloss refuses, with its field path.
    """
    return validate_recipe(read_recorded(recorded), source)


# --- identity ------------------------------------------------------------------------------------


def canonical_json(recipe: Recipe) -> str:
    """The recipe as sorted, compact JSON: equal recipes give equal strings."""
    return json.dumps(recipe.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def config_hash(recipe: Recipe) -> str:
    """Hash of what the run computes: the recipe without seed, names and placement fields."""
    data = recipe.model_dump(mode="json")
    for path in NON_SEMANTIC_FIELDS:
        *parents, leaf = path.split(".")
        node = data
        for part in parents:
            node = node[part]
        node.pop(leaf)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_fingerprint(recipe: Recipe, seed: int, code_version: str) -> str:
    """Identity of one trial: configuration + seed + code version."""
    blob = f"{config_hash(recipe)}|{seed}|{code_version}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def to_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML (fields that are None are left out, as TOML has no null)."""
    return tomli_w.dumps(_drop_none(recipe.model_dump(mode="json")))


def _drop_none(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_none(v) for k, v in node.items() if v is not None}
    return node
