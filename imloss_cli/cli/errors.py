"""Where library errors become CLI errors: one line on stderr and an exit code.

Every command is registered through :class:`App`, which wraps it in :func:`one_line_errors`; the
commands themselves read as parse -> one library call -> render. Exit codes follow the exception
tree of :mod:`imloss_cli.errors`: 2 for anything the user fixes by changing the input (recipe, data,
registry, checkpoint, report option, a file that cannot be written); 1 for a run that failed (it
diverged, a torchrun process failed, another worker took it over); 130 for Ctrl-C and 143 for
SIGTERM (128 + the signal).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from imloss_cli.errors import ImlossError, RunFailure, Terminated
from imloss_cli.recipe import RecipeError, field_paths

err_console = Console(stderr=True)
P = ParamSpec("P")
T = TypeVar("T")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr (as plain text: it may quote a registry's values) and exit."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def note(message: str) -> None:
    """A message about what was done (``wrote FILE``), on stderr: stdout holds only the command's data."""
    err_console.print(message, highlight=False, soft_wrap=True, markup=False)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def exit_for(e: BaseException) -> NoReturn:
    """Print the error's one-line message and exit with its code; an unexpected error is raised on."""
    if isinstance(e, RecipeError):
        # A recipe (a file, the default, a stored run's) is named with what is wrong in it; a bad
        # command-line value is named by its own message.
        head = f"{e.source}: invalid recipe\n  " if e.source else ""
        fail(head + "\n  ".join(e.problems))
    if isinstance(e, Terminated):
        fail("SIGTERM: the run is recorded as KILLED", code=143)
    if isinstance(e, KeyboardInterrupt):
        fail("interrupted: the run is recorded as KILLED", code=130)
    if isinstance(e, RunFailure):
        fail(str(e), code=1)
    if isinstance(e, (ImlossError, OSError)):
        fail(str(e))
    raise e


def one_line_errors(command: Callable[P, T]) -> Callable[P, T]:
    """``command`` ending on an imloss error (or an interrupt) with one line and the error's exit code.

    A live progress display is a context manager inside the command, so it has left the screen by
    the time the message is printed here.
    """

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return command(*args, **kwargs)
        except (ImlossError, OSError, KeyboardInterrupt) as e:
            exit_for(e)

    return run


class App(typer.Typer):
    """A Typer app whose every command is wrapped in :func:`one_line_errors`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[P, T]], Callable[P, T]]:
        register = super().command(*args, **kwargs)

        def decorator(f: Callable[P, T]) -> Callable[P, T]:
            register(one_line_errors(f))
            return f

        return decorator


class RecipeCommand(typer.core.TyperCommand):
    """A command that takes a recipe: an unknown option named like a recipe field points to ``--set``."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)  # type: ignore[arg-type]
        except Exception as e:  # click's NoSuchOption (typer vendors click: matched by name)
            name = getattr(e, "option_name", None)
            if type(e).__name__ == "NoSuchOption" and isinstance(name, str):
                leaf = name.lstrip("-").replace("-", "_")
                fields = [f for f in field_paths() if f.rsplit(".", 1)[-1] == leaf]
                if fields:
                    e.message = f"{e.message}; a recipe field is set with --set {fields[0]}=VALUE"  # type: ignore[attr-defined]
            raise
