"""What every command module shares: the console, the common options, and the edge helpers
(loading a recipe, opening the registry once, writing a file whole)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from imloss_cli import REGISTRY_ENV
from imloss_cli.cli.errors import warn
from imloss_cli.recipe import EnergyConfig, Recipe, load_recipe, parse_overrides, sets_nothing

# Off a terminal (pipes, CI logs) rich would wrap at 80 columns; tables read better wider.
console = Console(width=None if Console().is_terminal else 160)

DEFAULT_REGISTRY = "runs/imloss.db"

RecipeArg = Annotated[
    Path | None, typer.Argument(help="TOML recipe; omitted: the embedded digits default", show_default=False)
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="override a field: --set loss.im_weight=0 (repeatable)")
]
RunArg = Annotated[str, typer.Argument(help="run id or unique prefix")]
HeartbeatOpt = Annotated[
    float | None, typer.Option(min=0.01, help="seconds between a training run's heartbeats (30)", show_default=False)
]


def energy_help(field: str) -> str:
    """An energy option's help from its recipe field: the default is written once, there."""
    info = EnergyConfig.model_fields[field]
    return f"energy estimate, pJ per {info.description}; default {info.default}"


RegistryOpt = Annotated[
    str,
    typer.Option(
        "--registry",
        envvar=REGISTRY_ENV,
        help=f"SQLAlchemy URL or SQLite path of the run registry (or ${REGISTRY_ENV})",
    ),
]


def load(recipe: Path | None, sets: list[str] | None, **fields: Any) -> Recipe:
    """Load and validate a recipe; CLI options given as ``fields`` override it when not None."""
    overrides = overrides_of(sets)
    overrides.update({k: v for k, v in fields.items() if v is not None})
    loaded = load_recipe(recipe, overrides)
    if recipe is not None and sets_nothing(recipe):
        warn(
            f"{recipe} sets nothing: this is the embedded digits default" + (" with the overrides" if overrides else "")
        )
    return loaded


def overrides_of(sets: list[str] | None) -> dict[str, Any]:
    """The ``--set KEY=VALUE`` options as a dict (a malformed one: exit 2 and one line)."""
    return parse_overrides(sets or [])


def open_registry(url: str, *, create: bool = True, write: bool = True) -> Any:
    """The registry at ``url``, opened once here at the edge and closed on leaving (``with``).

    ``create=False``: a missing SQLite file is an error, not a new empty registry (reading and
    resuming commands); ``write=False``: nothing is written (reading commands).
    """
    from imloss_cli.registry import Registry

    return Registry(url, create=create, write=write)


def given(**options: Any) -> dict[str, Any]:
    """The options that were given: an unset one leaves the library's default in place."""
    return {k: v for k, v in options.items() if v is not None}
