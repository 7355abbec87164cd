"""What the registry hands out: frozen snapshots of run and group rows, never ORM rows.

:class:`RunInfo` is the one definition of a run's columns as callers see them: the store builds it
from a row field by field (:func:`run_info`), and ``Registry.runs_frame`` takes its scalar columns
from it (:data:`RUN_FRAME_COLUMNS`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .schema import Group, Run
from .status import TERMINAL

JSON_COLUMNS = frozenset({"recipe", "argv", "environment", "axes", "base_recipe", "attempts"})
"""Columns stored as JSON text and handed out decoded."""


@dataclass(frozen=True)
class RunInfo:
    """A snapshot of one row of ``runs``, JSON columns decoded.

    ``display_status`` is ``status`` except that a RUNNING run is reported as ``"LOST"`` when its
    process on this host is gone or its heartbeat is older than the registry's ``stale_after``;
    it is the only field that is not a column of ``runs``.
    """

    id: str
    name: str
    status: str
    display_status: str
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
    heartbeat_s: float | None  # the trainer's heartbeat interval (None: runs of older imloss)
    attempts: list[dict[str, Any]]  # one entry per start: attempt, host, pid, started_at, how it started
    reproduces: str | None  # the run this one re-trained from its recorded recipe (imloss reproduce)

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
    key: str | None
    name: str
    created_at: datetime
    base_recipe: dict[str, Any]
    axes: dict[str, Any]
    argv: list[str]


RUN_FRAME_COLUMNS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(RunInfo) if f.name not in JSON_COLUMNS | {"traceback"}
)
"""``Registry.runs_frame``'s columns: every scalar field of :class:`RunInfo`, in its order."""


def _decoded(row: Run | Group, name: str) -> Any:
    value = getattr(row, name)
    return json.loads(value) if name in JSON_COLUMNS else value


def run_info(row: Run, display_status: str) -> RunInfo:
    """The snapshot of a run row (JSON columns decoded)."""
    names = [f.name for f in dataclasses.fields(RunInfo) if f.name != "display_status"]
    return RunInfo(**{name: _decoded(row, name) for name in names}, display_status=display_status)


def group_info(row: Group) -> GroupInfo:
    """The snapshot of a group row (JSON columns decoded)."""
    return GroupInfo(**{f.name: _decoded(row, f.name) for f in dataclasses.fields(GroupInfo)})
