"""Ablation grids: the cartesian product of a few recipe fields, times seeds, as a list of trials.

Pure recipe work (no torch, no registry): the ablate command's options become a :class:`GridSpec`,
and :func:`plan_trials` turns a base recipe and a spec into validated :class:`Trial` recipes, each
with the fingerprint (configuration + seed + code version) that identifies it in the registry.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imloss_cli.recipe import Recipe, RecipeError, parse_value, run_fingerprint

SEED_KEY = "train.seed"
# The ablate command's named axes and the recipe fields they sweep.
NAMED_AXES = {"im_weight": "loss.im_weight", "surrogate": "surrogate.schedule", "timesteps": "model.timesteps"}


def split_values(text: str) -> list[Any]:
    """'0,1,2' -> [0, 1, 2]; 'esg,fixed' -> ['esg', 'fixed'] (each item read as a TOML value)."""
    return [parse_value(item.strip()) for item in text.split(",") if item.strip()]


@dataclass(frozen=True)
class GridSpec:
    """The axes of an ablation (dotted field -> values) and its seeds (None: the recipe's own)."""

    axes: dict[str, list[Any]]
    seeds: list[int] | None

    @classmethod
    def from_options(
        cls,
        im_weight: str | None,
        surrogate: str | None,
        timesteps: str | None,
        grid: list[str],
        seeds: int | None,
        seed: str | None,
    ) -> GridSpec:
        """Read the ablate command's options.

        Raises:
            RecipeError: a malformed --grid item, no axis at all, or both --seeds and --seed.
        """
        axes: dict[str, list[Any]] = {}
        for name, text in (("im_weight", im_weight), ("surrogate", surrogate), ("timesteps", timesteps)):
            if text is not None:
                axes[NAMED_AXES[name]] = split_values(text)
        problems = []
        for item in grid:
            key, sep, values = item.partition("=")
            if not sep or not key.strip():
                problems.append(f"--grid {item!r}: expected KEY=V1,V2, e.g. loss.im_target=membrane,rate")
            else:
                axes[key.strip()] = split_values(values)
        if not axes:
            problems.append("no axis to ablate: give --im-weight, --surrogate, --timesteps or --grid KEY=V1,V2")
        if seeds is not None and seed is not None:
            problems.append("give either --seeds N or --seed A,B,..., not both")
        if seeds is not None and seeds < 1:
            problems.append(f"--seeds: must be at least 1, got {seeds}")
        seed_list = list(range(seeds)) if seeds is not None else None if seed is None else split_values(seed)
        if seed_list is not None and not all(isinstance(s, int) and s >= 0 for s in seed_list):
            problems.append(f"--seed: seeds are non-negative integers, got {seed!r}")
        if problems:
            raise RecipeError(problems)  # the command line, not a recipe: the messages name the options
        return cls(axes, seed_list)


@dataclass(frozen=True)
class Trial:
    values: dict[str, Any]  # axis -> value, seed included
    recipe: Recipe
    fingerprint: str

    @property
    def label(self) -> str:
        return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.values.items())


def plan_trials(base: Recipe, axes: dict[str, Sequence[Any]], seeds: Sequence[int], code_version: str) -> list[Trial]:
    """Every combination of the axis values (in the order given), seeds varying fastest.

    ``code_version`` goes into each trial's fingerprint (see ``recipe.run_fingerprint``).
    Combinations that resolve to the same recipe and seed are one trial, planned where the first
    appears: the ReLU twin sets T and lambda, so ``model.neuron=lif,relu`` x ``loss.im_weight=0,2``
    trains the twin once per seed.

    Raises:
        RecipeError: an empty axis or seed list, or a combination that is not a valid recipe
            (all problems of all trials at once).
    """
    empty = [f"{k}: no values given" for k, v in axes.items() if len(v) == 0]
    if not seeds:
        empty.append("seeds: no seeds given")
    if empty:
        raise RecipeError(empty)
    grid = {**axes, SEED_KEY: list(seeds)}
    trials, problems, planned = [], [], set()
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        try:
            recipe = base.with_overrides(values)
        except RecipeError as e:
            problems += [p for p in e.problems if p not in problems]
            continue
        fingerprint = run_fingerprint(recipe, recipe.train.seed or 0, code_version)
        if fingerprint not in planned:
            planned.add(fingerprint)
            trials.append(Trial(values, recipe, fingerprint))
    if problems:
        raise RecipeError(problems, "ablation")
    return trials
