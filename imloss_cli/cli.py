"""The ``imloss`` command line: each command parses, calls one library function and renders."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from imloss_cli.checkpoint import CheckpointError
from imloss_cli.data import DataError
from imloss_cli.engine import DivergedError, TrainingError
from imloss_cli.recipe import Recipe, RecipeError, load_recipe, parse_overrides, to_toml
from imloss_cli.registry import RegistryError

app = typer.Typer(
    help="Train spiking neural networks with IM-Loss and ESG, run ablations, compare runs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

DEFAULT_REGISTRY = "runs/imloss.db"
T = TypeVar("T")

RecipeArg = Annotated[
    Path | None, typer.Argument(help="TOML recipe; omitted: the embedded digits default", show_default=False)
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="override a field: --set loss.im_weight=0 (repeatable)")
]
RegistryOpt = Annotated[
    str, typer.Option("--registry", envvar="IMLOSS_REGISTRY", help="SQLAlchemy URL or SQLite path of the run registry")
]

# Errors a user can fix by changing the input: one line, exit code 2.
USER_ERRORS = (RecipeError, DataError, RegistryError, CheckpointError)


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def guarded(call: Callable[[], T]) -> T:
    """Run a library call, turning its errors into one-line messages and exit codes."""
    try:
        return call()
    except RecipeError as e:
        head = f"{e.source}: " if e.source else ""
        fail(head + "invalid recipe\n  " + "\n  ".join(e.problems))
    except DivergedError as e:
        fail(str(e), code=1)
    except (*USER_ERRORS, TrainingError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; the run is recorded as KILLED", code=130)


def load(recipe: Path | None, sets: list[str] | None, **fields: Any) -> Recipe:
    """Load and validate a recipe; CLI options given as ``fields`` override it when not None."""
    overrides = parse_overrides(sets or [])
    overrides.update({k: v for k, v in fields.items() if v is not None})
    return guarded(lambda: load_recipe(recipe, overrides))


@app.command()
def validate(recipe: RecipeArg = None, set_: SetOpt = None) -> None:
    """Check a recipe without running anything and print it fully resolved.

    Example: imloss validate recipes/cifar10.toml --set model.timesteps=4
    """
    console.print(to_toml(load(recipe, set_)), highlight=False, markup=False)


@app.command()
def train(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    seed: Annotated[int | None, typer.Option(help="overrides train.seed")] = None,
    device: Annotated[str | None, typer.Option(help="overrides train.device: auto, cpu, cuda")] = None,
    name: Annotated[str | None, typer.Option(help="overrides the recipe's name")] = None,
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    """Train one spiking network and record it in the registry.

    Example: imloss train recipes/digits.toml --set loss.im_weight=0
    """
    from imloss_cli.runner import train_run
    from imloss_cli.ui import TrainDisplay

    r = load(recipe, set_, **{"train.seed": seed, "train.device": device, "name": name})
    with TrainDisplay(console) as ui:
        result = guarded(
            lambda: train_run(r, registry_url=registry, argv=sys.argv, on_start=ui.start, on_step=ui.step, on_epoch=ui.epoch_done)
        )
    m = result.last.metrics
    console.print(f"[bold green]done[/]  test accuracy {m['test_acc']:.4f}  run {result.run_id}")
