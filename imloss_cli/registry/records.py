"""What the registry hands out and takes in: run and group snapshots, and the value helpers.

:class:`RunInfo` and :class:`GroupInfo` are the frozen snapshots :class:`.store.Registry` returns
instead of ORM rows. The functions below them find a row by id or unique id prefix, turn a group
row into its snapshot, tell whether a recorded process is alive, make ids and timestamps, and
check or convert values before they are written (raising :class:`RegistryError`).
"""

from __future__ import annotations

import json
import math
import operator
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import RegistryError
from .schema import ID_LENGTH, Group, Run

TERMINAL: frozenset[str] = frozenset({"FINISHED", "FAILED", "KILLED"})
LOST = "LOST"


@dataclass(frozen=True)
class RunInfo:
    """A snapshot of one row of ``runs``, JSON columns decoded.

    ``display_status`` is ``status`` except that a RUNNING run is reported as ``"LOST"`` when its
    process on this host is gone or its heartbeat is older than the registry's ``stale_after``.
    """

    id: str
    name: str
    status: str
    kind: str
    group_id: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    heartbeat_at: datetime | None
    recipe: dict[str, Any]
    config_hash: str
    fingerprint: str
    seed: int
    git_commit: str | None
    git_dirty: bool | None
    code_version: str
    argv: list[str]
    environment: dict[str, Any]
    host: str
    pid: int
    attempt: int
    error_type: str | None
    error_message: str | None
    traceback: str | None
    checkpoint_dir: str | None
    display_status: str

    @property
    def is_terminal(self) -> bool:
        """True when the run is FINISHED, FAILED or KILLED."""
        return self.status in TERMINAL

    @property
    def duration(self) -> timedelta | None:
        """Time from start to end (or to the last heartbeat while not ended); None if unstarted."""
        end = self.ended_at or self.heartbeat_at
        if self.started_at is None or end is None:
            return None
        return end - self.started_at


@dataclass(frozen=True)
class GroupInfo:
    """A snapshot of one ablation group."""

    id: str
    name: str
    created_at: datetime
    base_recipe: dict[str, Any]
    axes: dict[str, Any]
    argv: list[str]


# --------------------------------------------------------------------------------- values

def _get_by_id_or_prefix(s: Session, model: type[Run | Group], ref: str,
                         what: str) -> Any:
    """The row of ``model`` whose id is ``ref`` or uniquely starts with it."""
    prefix = str(ref).strip().lower()
    if not prefix:
        raise RegistryError(f"empty {what} id")
    row = s.get(model, prefix)
    if row is not None:
        return row
    if len(prefix) < ID_LENGTH:
        stmt = (select(model).where(model.id.startswith(prefix, autoescape=True))
                .order_by(model.id).limit(6))
        rows: list[Run | Group] = list(s.scalars(stmt))
        if len(rows) == 1:
            return rows[0]
        if rows:
            shown = ", ".join(r.id for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise RegistryError(f"{what} prefix {ref!r} is ambiguous: matches {shown} "
                                f"(give more characters)")
    raise RegistryError(f"no {what} matches {ref!r}")


def _group_info(row: Group) -> GroupInfo:
    return GroupInfo(id=row.id, name=row.name, created_at=row.created_at,
                     base_recipe=json.loads(row.base_recipe), axes=json.loads(row.axes),
                     argv=json.loads(row.argv))


def _pid_alive(pid: int) -> bool:
    if pid <= 0:  # kill(0 or negative) would address process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists but belongs to someone else
        return True
    return True


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _new_id() -> str:
    return uuid.uuid4().hex[:ID_LENGTH]


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{what} is not JSON-serialisable: {exc}") from exc


def _as_int(value: Any, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError as exc:
        raise RegistryError(f"{what} must be an integer, got {value!r}") from exc


def _as_float(value: Any, what: str) -> float | None:
    """``value`` as a float to store; NaN becomes None (NULL) on every backend."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{what} must be a number, got {value!r}") from exc
    # SQLite turns NaN into NULL by itself; PostgreSQL would keep it, and a NaN that sorts
    # above every number would then win max() and "best epoch" queries there only.
    return None if math.isnan(number) else number


def _check_choice(value: Any, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise RegistryError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
