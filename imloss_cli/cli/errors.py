"""Where library errors become CLI errors: one line on stderr and an exit code.

Exit codes: 2 for anything the user fixes by changing the input (recipe, data, registry path,
checkpoint, report option); 1 for a run that diverged, a torchrun process that failed, or a copy
of a run that another worker took over; 130 for Ctrl-C and 143 for SIGTERM (128 + the signal).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

import typer
import typer.core
from rich.console import Console

from imloss_cli.recipe import RecipeError, field_paths

err_console = Console(stderr=True)
T = TypeVar("T")

# Errors a user can fix by changing the input. Named, not imported, so that `report`, `runs` or
# `validate` never pay for importing torch: an error class whose module was never loaded cannot
# have been raised.
USER_ERRORS = (
    ("imloss_cli.data", "DataError"),
    ("imloss_cli.registry", "RegistryError"),
    ("imloss_cli.train.checkpoint", "CheckpointError"),
    ("imloss_cli.report", "ReportError"),
    ("imloss_cli.train.errors", "TrainingError"),
    ("imloss_cli.export.problems", "ExportError"),
)
# Checked first: some are subclasses of the errors above, but end a run rather than reject an input.
RUN_FAILURES = (
    ("imloss_cli.train.errors", "DivergedError"),
    ("imloss_cli.train.errors", "WorkerFailedError"),
    ("imloss_cli.registry", "RunFencedError"),
)
INTERRUPT_CODES = {"Terminated": 143, "KeyboardInterrupt": 130}


def _loaded(names: tuple[tuple[str, str], ...]) -> tuple[type[BaseException], ...]:
    return tuple(getattr(sys.modules[module], name) for module, name in names if module in sys.modules)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def note(message: str) -> None:
    """A message about what was done (``wrote FILE``), on stderr: stdout holds only the command's data."""
    err_console.print(message, highlight=False, soft_wrap=True, markup=False)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def guarded(call: Callable[[], T], *, before_message: Callable[[], None] | None = None) -> T:
    """Run a library call, turning its errors into one-line messages and exit codes.

    ``before_message`` runs before an error is printed: a live progress display stops there, so
    the message does not land on its last line.
    """
    try:
        return call()
    except (Exception, KeyboardInterrupt) as e:
        if before_message is not None:
            before_message()
        _fail_for(e)


def _fail_for(e: BaseException) -> NoReturn:
    """Print the error's one-line message and exit with its code; an unexpected error is raised on."""
    if isinstance(e, RecipeError):
        # A recipe (a file, the default, a stored run's) is named with what is wrong in it; a bad
        # command-line value is named by its own message.
        head = f"{e.source}: invalid recipe\n  " if e.source else ""
        fail(head + "\n  ".join(e.problems))
    if isinstance(e, KeyboardInterrupt):
        name = type(e).__name__
        fail(f"{'SIGTERM' if name == 'Terminated' else 'interrupted'}: the run is recorded as KILLED",
             code=INTERRUPT_CODES.get(name, 130))  # fmt: skip
    if isinstance(e, _loaded(RUN_FAILURES)):
        fail(str(e), code=1)
    if isinstance(e, (*_loaded(USER_ERRORS), OSError)):
        fail(str(e))
    raise e


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
