"""Values on their way into the registry: ids, timestamps, JSON text, checked numbers and choices.

Each check raises :class:`RegistryError` naming the value, so a bad argument never reaches the
database driver.
"""

from __future__ import annotations

import json
import math
import operator
import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .errors import RegistryError
from .schema import ID_LENGTH


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex[:ID_LENGTH]


def dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{what} is not JSON-serialisable: {exc}") from exc


def as_int(value: Any, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError as exc:
        raise RegistryError(f"{what} must be an integer, got {value!r}") from exc


def as_float(value: Any, what: str) -> float | None:
    """``value`` as a float to store; NaN becomes None (NULL) on every backend."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{what} must be a number, got {value!r}") from exc
    # SQLite turns NaN into NULL by itself; PostgreSQL would keep it, and a NaN that sorts
    # above every number would then win max() and "best epoch" queries there only.
    return None if math.isnan(number) else number


def check_choice(value: Any, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise RegistryError(f"{what} must be one of {', '.join(choices)}, got {value!r}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    if pid <= 0:  # kill(0 or negative) would address process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists but belongs to someone else
        return True
    return True
