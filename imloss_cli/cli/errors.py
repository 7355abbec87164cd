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
from rich.console import Console

from imloss_cli.recipe import RecipeError

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


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def guarded(call: Callable[[], T]) -> T:
    """Run a library call, turning its errors into one-line messages and exit codes."""
    try:
        return call()
    except RecipeError as e:
        head = f"{e.source}: " if e.source else ""
        fail(head + "invalid recipe\n  " + "\n  ".join(e.problems))
    except KeyboardInterrupt as e:
        signal = "SIGTERM" if type(e).__name__ == "Terminated" else "interrupted"
        fail(f"{signal}: the run is recorded as KILLED", code=INTERRUPT_CODES.get(type(e).__name__, 130))
    except Exception as e:
        if isinstance(e, _loaded(RUN_FAILURES)):
            fail(str(e), code=1)
        if isinstance(e, (*_loaded(USER_ERRORS), OSError)):
            fail(str(e))
        raise
