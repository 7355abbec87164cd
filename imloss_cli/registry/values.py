"""Values on their way into and out of the registry: ids, timestamps, JSON text, checked numbers and
choices, and URLs and command lines with their passwords hidden.

Each check raises :class:`RegistryError` naming the value, so a bad argument never reaches the
database driver, and a row that imloss did not write never reaches a path or a filter.
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import RegistryError
from .schema import ID_LENGTH

ID_PATTERN = re.compile(rf"[0-9a-f]{{{ID_LENGTH}}}")
"""What every run and group id is (``new_id``): ids read from a registry are checked against it."""

SECRET_QUERY_KEYS = frozenset({"password"})
"""URL query parameters that carry a secret (libpq and psycopg take ``?password=``)."""
HIDDEN = "***"


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


def check_id(value: Any, what: str, run: Any) -> str:
    """A run or group id read from a row, as ``new_id`` makes them; else RegistryError naming the row.

    Ids name folders and files (checkpoints, exports) and go into filters: a row whose id is a path
    (``/home/x``, ``../x``) or carries markup or quotes is refused here, before anything uses it.
    """
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise RegistryError(
            f"run {run!r} in the registry has an invalid {what} {value!r} (ids are {ID_LENGTH} hex digits); "
            "the registry holds a row imloss did not write: ask whoever can write it"
        )
    return value


def public_url(url: URL) -> str:
    """The URL as it may be shown, logged or stored: its password, and any ``?password=``, hidden."""
    secret_keys = [k for k in url.query if k.lower() in SECRET_QUERY_KEYS]
    if secret_keys:
        url = url.update_query_dict(dict.fromkeys(secret_keys, HIDDEN))
    return url.render_as_string(hide_password=True).replace("%2A%2A%2A", HIDDEN)


def masked_text(text: str) -> str:
    """``text`` with anything that looks like a URL's password hidden (for text that is not a parsable URL)."""
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", rf"\1{HIDDEN}@", text)
    return re.sub(r"(?i)(password=)[^&\s]*", rf"\1{HIDDEN}", text)


def without_passwords(argv: Sequence[str]) -> list[str]:
    """A command line as it may be stored: every URL in it (``URL`` or ``--option=URL``) with its password hidden."""
    return [_public_argument(str(arg)) for arg in argv]


def _public_argument(arg: str) -> str:
    if "://" not in arg:
        return arg
    option, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
    try:
        shown = public_url(make_url(value))
    except (ArgumentError, ValueError):
        shown = masked_text(value)
    return f"{option}{eq}{shown}"
