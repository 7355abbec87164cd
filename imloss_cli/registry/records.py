"""What goes into the registry and what comes out: plain frozen dataclasses, never ORM rows.

In: :class:`NewRun` (a run as it is queued) and :class:`Claim` (who starts an attempt, and how).
Out: :class:`RunInfo` and :class:`GroupInfo`, snapshots of a row with its JSON columns decoded.
:class:`RunInfo` is the one definition of a run's columns as callers see them: the store builds it
from a row field by field (:func:`run_info`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .errors import RegistryError
from .schema import Group, Run
from .status import TERMINAL
from .values import ID_PATTERN, check_id

JSON_COLUMNS = frozenset({"recipe", "argv", "environment", "axes", "base_recipe", "attempts"})
"""Columns stored as JSON text and handed out decoded."""
_JSON_KINDS: dict[str, type] = {"recipe": dict, "argv": list, "environment": dict, "attempts": list}
"""What each JSON column of a run decodes to: a row that holds something else is refused by name."""


@dataclass(frozen=True)
class NewRun:
    """A run as it is queued (QUEUED, attempt 0): what it trains and what identifies it.

    Attributes:
        name: human-readable name (the recipe's).
        recipe: the fully resolved recipe, JSON-serialisable.
        config_hash: hash of the recipe without its seed (runs of one configuration share it).
        fingerprint: what makes two runs "the same experiment" (recipe, seed, code version).
        seed: the run's seed.
        code_version: the version of imloss that queued it.
        kind: "train", "ablate" or "tune" (``schema.KINDS``).
        argv: the command line that queued it.
        reproduces: the id of the run this one trains again (``imloss reproduce``).
    """

    name: str
    recipe: Mapping[str, Any]
    config_hash: str
    fingerprint: str
    seed: int
    code_version: str
    kind: str = "train"
    argv: Sequence[str] = ()
    reproduces: str | None = None


@dataclass(frozen=True)
class Claim:
    """Who starts an attempt of a run, and how; fields left as None keep what the run holds.

    Attributes:
        how: how the attempt starts ("fresh", "resumed from ...", "restarted: ..."), in its attempts.
        environment: python/torch/cuda versions, host, device.
        argv: the command line of this attempt.
        git_commit, git_dirty: the code it runs.
        checkpoint_dir: where this attempt writes checkpoints.
        heartbeat_s: how often it will beat; LOST after ``LOST_AFTER_BEATS`` intervals without one.
    """

    how: str = "fresh"
    environment: Mapping[str, Any] | None = None
    argv: Sequence[str] | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    checkpoint_dir: str | os.PathLike[str] | None = None
    heartbeat_s: float | None = None


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
        """True when the run has ended (FINISHED, FAILED, KILLED or PRUNED)."""
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


def _decoded(row: Run | Group, name: str) -> Any:
    value = getattr(row, name)
    return json.loads(value) if name in JSON_COLUMNS else value


def run_info(row: Run, display_status: str) -> RunInfo:
    """The snapshot of a run row (JSON columns decoded), its ids checked (RegistryError naming the run)."""
    check_id(row.id, "id", run=row.id)
    for column in ("group_id", "reproduces"):
        if getattr(row, column) is not None:
            check_id(getattr(row, column), column, run=row.id)
    names = [f.name for f in dataclasses.fields(RunInfo) if f.name != "display_status"]
    values = {name: _decoded(row, name) for name in names}
    for name, kind in _JSON_KINDS.items():
        if not isinstance(values[name], kind):
            raise RegistryError(
                f"run {row.id} in the registry has an invalid {name} (not a JSON {kind.__name__}); "
                "the registry holds a row imloss did not write"
            )
    return RunInfo(**values, display_status=display_status)


def group_info(row: Group) -> GroupInfo:
    """The snapshot of a group row (JSON columns decoded), its id checked."""
    if not ID_PATTERN.fullmatch(str(row.id)):
        raise RegistryError(
            f"group {row.id!r} in the registry has an invalid id; the registry holds a row imloss did not write"
        )
    return GroupInfo(**{f.name: _decoded(row, f.name) for f in dataclasses.fields(GroupInfo)})
