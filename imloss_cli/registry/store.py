"""The run registry: where training runs, ablation groups and their per-epoch statistics live.

The boundary is MLflow-like: every public method of :class:`Registry` is one short database
transaction and returns plain frozen dataclasses or pandas data frames, never ORM rows, so
callers cannot hold a session open or lazy-load by accident.

SQLite (the default backend) is tuned for several training processes writing to one file at
once: WAL journal, a 30 s busy timeout, and ``BEGIN IMMEDIATE`` for write transactions, so a
writer waits for the write lock up front instead of failing with "database is locked" when it
upgrades a read lock half-way through a transaction.
"""

from __future__ import annotations

import json
import operator
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np  # a pandas dependency, not an extra one
import pandas as pd
from sqlalchemy import (
    URL,
    BindParameter,
    Connection,
    Engine,
    Select,
    String,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    make_url,
    select,
    update,
)
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.pool import StaticPool

from .schema import (
    ID_LENGTH,
    KINDS,
    MIGRATIONS,
    SCHEMA_VERSION,
    STATUSES,
    Base,
    EpochMetric,
    Group,
    LayerStat,
    Meta,
    Run,
)

TERMINAL: frozenset[str] = frozenset({"FINISHED", "FAILED", "KILLED"})
LOST = "LOST"

_SQLITE_MAGIC = b"SQLite format 3\x00"
_IMMEDIATE = "imloss_begin_immediate"  # execution option marking the write engine
_BUSY_TIMEOUT_MS = 30_000
_RUN_PARAM = "run_id"  # bind parameter of the per-run bulk queries
_STARTABLE = frozenset({"QUEUED", "FAILED", "KILLED"})

_METRIC_COLUMNS = ["run_id", "epoch", "name", "value"]
_LAYER_COLUMNS = ["run_id", "epoch", "layer_index", "layer", "stat", "value"]
_INT_COLUMNS = frozenset({"epoch", "layer_index"})


class RegistryError(Exception):
    """Any failure of the registry: bad arguments, unknown ids, unusable database."""


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


_SCALAR_RUN_COLUMNS = [
    "id", "name", "status", "display_status", "kind", "group_id", "created_at", "started_at",
    "ended_at", "heartbeat_at", "config_hash", "fingerprint", "seed", "git_commit", "git_dirty",
    "code_version", "host", "pid", "attempt", "error_type", "error_message", "checkpoint_dir",
]


class Registry:
    """Store of runs, ablation groups and per-epoch metrics behind one SQLAlchemy URL."""

    def __init__(self, url: str | os.PathLike[str], *, stale_after: float = 3600.0) -> None:
        """Open (creating or upgrading if needed) the registry at ``url``.

        Args:
            url: any SQLAlchemy URL, or a plain filesystem path meaning ``sqlite:///PATH``.
                ``sqlite://`` is a private in-memory registry.
            stale_after: seconds without a heartbeat after which a RUNNING run shows as LOST.

        Raises:
            RegistryError: the URL is invalid, the file is not a SQLite database or not an
                imloss registry, its schema is newer than this code, or it is not writable.
        """
        if not stale_after > 0:
            raise RegistryError(
                f"stale_after must be a positive number of seconds, got {stale_after!r}")
        self._url = _parse_url(url)
        self._path = _sqlite_file(self._url)
        self._where = (str(self._path) if self._path
                       else self._url.render_as_string(hide_password=True))
        self._stale_after = float(stale_after)
        self._host = socket.gethostname()
        if self._path is not None:
            _check_sqlite_file(self._path)
        self._engine = _create_engine(self._url, self._where)
        self._write_engine = self._engine.execution_options(**{_IMMEDIATE: True})
        try:
            with _db_errors(self._where, opening=True), self._write_engine.begin() as conn:
                _prepare_schema(conn, self._where)
        except BaseException:
            self._engine.dispose()
            raise

    @property
    def url(self) -> str:
        """The registry URL, password hidden."""
        return self._url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Release pooled connections; the registry must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.url!r})"

    # ----------------------------------------------------------------------------- writes

    def create_group(self, name: str, base_recipe: Mapping[str, Any], axes: Mapping[str, Any],
                     argv: Sequence[str]) -> str:
        """Record a new ablation group.

        Args:
            name: human-readable name.
            base_recipe: the recipe every member starts from (JSON-serialisable).
            axes: ``{"dotted.key": [values, ...]}`` swept by the group.
            argv: the command line that created it.

        Returns:
            The new group id (12 hex characters).

        Raises:
            RegistryError: a value is not JSON-serialisable or the database write failed.
        """
        row = Group(id=_new_id(), name=str(name), created_at=_now(),
                    base_recipe=_dumps(dict(base_recipe), "base_recipe"),
                    axes=_dumps(dict(axes), "axes"), argv=_dumps(list(argv), "argv"))
        with _db_errors(self._where), Session(self._write_engine) as s, s.begin():
            s.add(row)
            return row.id

    def create_run(self, *, name: str, recipe: Mapping[str, Any], config_hash: str,
                   fingerprint: str, seed: int, code_version: str, kind: str = "train",
                   group_id: str | None = None, status: str = "RUNNING",
                   argv: Sequence[str] = (), environment: Mapping[str, Any] | None = None,
                   git_commit: str | None = None, git_dirty: bool | None = None,
                   checkpoint_dir: str | os.PathLike[str] | None = None) -> str:
        """Record a new run owned by this process (host and pid are taken from it).

        Args:
            name: human-readable name.
            recipe: the fully resolved recipe (JSON-serialisable).
            config_hash: hash of the recipe.
            fingerprint: hash identifying "the same experiment" (for resuming/skipping).
            seed: random seed.
            code_version: version of imloss that ran it.
            kind: "train" or "ablate".
            group_id: exact id of the ablation group it belongs to.
            status: "RUNNING" (started now) or "QUEUED".
            argv: command line.
            environment: python/torch/cuda versions, host, device, ...
            git_commit: commit of the code, if known.
            git_dirty: whether the work tree had changes, if known.
            checkpoint_dir: where checkpoints go, if anywhere.

        Returns:
            The new run id (12 hex characters).

        Raises:
            RegistryError: invalid kind/status/seed, unknown group, non-JSON values, or a
                failed write.
        """
        _check_choice(kind, KINDS, "kind")
        _check_choice(status, ("QUEUED", "RUNNING"), "initial status")
        now = _now()
        row = Run(
            id=_new_id(), name=str(name), status=status, kind=kind, group_id=group_id,
            created_at=now, started_at=now if status == "RUNNING" else None, ended_at=None,
            heartbeat_at=now, recipe=_dumps(dict(recipe), "recipe"), config_hash=str(config_hash),
            fingerprint=str(fingerprint), seed=_as_int(seed, "seed"), git_commit=git_commit,
            git_dirty=git_dirty, code_version=str(code_version), argv=_dumps(list(argv), "argv"),
            environment=_dumps(dict(environment or {}), "environment"), host=self._host,
            pid=os.getpid(), attempt=1,
            checkpoint_dir=None if checkpoint_dir is None else os.fspath(checkpoint_dir),
        )
        with _db_errors(self._where), Session(self._write_engine) as s, s.begin():
            if group_id is not None and s.get(Group, group_id) is None:
                raise RegistryError(f"no group with id {group_id!r}")
            s.add(row)
            return row.id

    def mark_running(self, run_id: str, *, environment: Mapping[str, Any] | None = None,
                     argv: Sequence[str] | None = None, git_commit: str | None = None,
                     git_dirty: bool | None = None,
                     checkpoint_dir: str | os.PathLike[str] | None = None) -> None:
        """(Re)start a QUEUED, FAILED, KILLED or LOST run in this process.

        Sets started_at, heartbeat, host and pid, clears the end time and error, and increments
        ``attempt`` when the run had been started before. Arguments left as None keep the stored
        value.

        Raises:
            RegistryError: unknown id, or the run is FINISHED or RUNNING in a live process.
        """
        now = _now()
        with _db_errors(self._where), Session(self._write_engine) as s, s.begin():
            row = self._get_run_row(s, run_id)
            startable = row.status in _STARTABLE or self._display_status(row, now) == LOST
            if not startable:
                raise RegistryError(f"run {row.id} is {row.status}; only QUEUED, FAILED, KILLED "
                                    f"or LOST runs can be started")
            if row.started_at is not None:
                row.attempt += 1
            row.status, row.started_at, row.ended_at, row.heartbeat_at = "RUNNING", now, None, now
            row.host, row.pid = self._host, os.getpid()
            row.error_type = row.error_message = row.traceback = None
            if environment is not None:
                row.environment = _dumps(dict(environment), "environment")
            if argv is not None:
                row.argv = _dumps(list(argv), "argv")
            if git_commit is not None:
                row.git_commit = git_commit
            if git_dirty is not None:
                row.git_dirty = git_dirty
            if checkpoint_dir is not None:
                row.checkpoint_dir = os.fspath(checkpoint_dir)

    def log_epoch(self, run_id: str, epoch: int, metrics: Mapping[str, float],
                  layer_stats: Sequence[tuple[int, str, Mapping[str, float]]]) -> None:
        """Store one epoch's metrics and per-layer statistics, replacing any earlier log of it.

        Also refreshes the run's heartbeat; the run's status is not checked. NaN values are
        stored as NULL and read back as NaN.

        Args:
            run_id: exact run id.
            epoch: epoch number.
            metrics: ``{name: value}``.
            layer_stats: ``(layer_index, layer_name, {stat: value})`` per spiking layer.

        Raises:
            RegistryError: unknown run, a non-numeric value, a repeated layer index, or a
                failed write.
        """
        epoch = _as_int(epoch, "epoch")
        metric_rows = [{"run_id": run_id, "epoch": epoch, "name": str(key),
                        "value": _as_float(value, f"metric {key!r}")}
                       for key, value in metrics.items()]
        stat_rows: list[dict[str, Any]] = []
        seen: set[int] = set()
        for index, layer, stats in layer_stats:
            index = _as_int(index, "layer_index")
            if index in seen:
                raise RegistryError(
                    f"layer index {index} appears twice in epoch {epoch} of run {run_id}")
            seen.add(index)
            stat_rows.extend({"run_id": run_id, "epoch": epoch, "layer_index": index,
                              "layer": str(layer), "stat": str(stat),
                              "value": _as_float(value, f"{stat!r} of layer {layer!r}")}
                             for stat, value in stats.items())
        with _db_errors(self._where), Session(self._write_engine) as s, s.begin():
            self._update_run(s, run_id, heartbeat_at=_now())
            # Delete-then-insert so a re-logged epoch (e.g. after resume) replaces the old rows,
            # including metrics or layers the new log no longer has.
            for table in (EpochMetric, LayerStat):
                s.execute(delete(table).where(table.run_id == run_id, table.epoch == epoch))
            if metric_rows:
                s.execute(insert(EpochMetric), metric_rows)
            if stat_rows:
                s.execute(insert(LayerStat), stat_rows)

    def heartbeat(self, run_id: str) -> None:
        """Refresh the heartbeat of a run (for epochs longer than ``stale_after``).

        Raises:
            RegistryError: unknown run id or a failed write.
        """
        with _db_errors(self._where), Session(self._write_engine) as s, s.begin():
            self._update_run(s, run_id, heartbeat_at=_now())

    def finish_run(self, run_id: str, status: str, *, error_type: str | None = None,
                   error_message: str | None = None, traceback: str | None = None) -> None:
        """End a QUEUED or RUNNING run with a terminal status.

        Args:
            run_id: exact run id.
            status: one of FINISHED, FAILED, KILLED.
            error_type: exception class name, for FAILED/KILLED runs.
            error_message: exception message.
            traceback: formatted traceback.

        Raises:
            RegistryError: status not terminal, unknown run, or the run has already ended.
        """
        _check_choice(status, sorted(TERMINAL), "finish status")
        now = _now()
        with _db_errors(self._where), Session(self._write_engine) as s, s.begin():
            row = self._get_run_row(s, run_id)
            if row.status in TERMINAL:
                raise RegistryError(f"run {row.id} has already ended as {row.status}")
            row.status, row.ended_at, row.heartbeat_at = status, now, now
            row.error_type, row.error_message, row.traceback = error_type, error_message, traceback

    def set_checkpoint_dir(self, run_id: str, path: str | os.PathLike[str]) -> None:
        """Record where the run's checkpoints are.

        Raises:
            RegistryError: unknown run id or a failed write.
        """
        with _db_errors(self._where), Session(self._write_engine) as s, s.begin():
            self._update_run(s, run_id, checkpoint_dir=os.fspath(path))

    # ----------------------------------------------------------------------------- reads

    def get_run(self, run_id_or_prefix: str) -> RunInfo:
        """Return the run with this id, or the only run whose id starts with this prefix.

        Raises:
            RegistryError: no run matches, or the prefix matches several runs.
        """
        with _db_errors(self._where), Session(self._engine) as s, s.begin():
            return self._run_info(_get_by_id_or_prefix(s, Run, run_id_or_prefix, "run"), _now())

    def get_group(self, group_id_or_prefix: str) -> GroupInfo:
        """Return the group with this id, or the only group whose id starts with this prefix.

        Raises:
            RegistryError: no group matches, or the prefix matches several groups.
        """
        with _db_errors(self._where), Session(self._engine) as s, s.begin():
            return _group_info(_get_by_id_or_prefix(s, Group, group_id_or_prefix, "group"))

    def latest_group(self) -> GroupInfo | None:
        """Return the most recently created group, or None if there is none."""
        stmt = select(Group).order_by(Group.created_at.desc(), Group.id.desc()).limit(1)
        with _db_errors(self._where), Session(self._engine) as s, s.begin():
            row = s.scalars(stmt).first()
            return None if row is None else _group_info(row)

    def list_groups(self, *, limit: int | None = None) -> list[GroupInfo]:
        """Return ablation groups, newest first (at most ``limit``)."""
        stmt = select(Group).order_by(Group.created_at.desc(), Group.id.desc())
        if limit is not None:
            stmt = stmt.limit(_as_int(limit, "limit"))
        with _db_errors(self._where), Session(self._engine) as s, s.begin():
            return [_group_info(row) for row in s.scalars(stmt)]

    def list_runs(self, *, status: str | None = None, group_id: str | None = None,
                  kind: str | None = None, limit: int | None = None) -> list[RunInfo]:
        """Return runs, newest first.

        Args:
            status: keep runs whose ``display_status`` is this (so "RUNNING" excludes LOST runs
                and "LOST" selects them).
            group_id: keep members of this group (exact id).
            kind: keep runs of this kind.
            limit: at most this many runs.

        Raises:
            RegistryError: unknown status or kind, or a negative limit.
        """
        if status is not None:
            _check_choice(status, (*STATUSES, LOST), "status")
        if kind is not None:
            _check_choice(kind, KINDS, "kind")
        if limit is not None and _as_int(limit, "limit") < 0:
            raise RegistryError(f"limit must be >= 0, got {limit}")
        stmt = select(Run).order_by(Run.created_at.desc(), Run.id.desc())
        if status is not None:
            stmt = stmt.where(Run.status == ("RUNNING" if status == LOST else status))
        if group_id is not None:
            stmt = stmt.where(Run.group_id == group_id)
        if kind is not None:
            stmt = stmt.where(Run.kind == kind)
        # Liveness is only known in Python, so RUNNING/LOST filters cannot be limited in SQL.
        live_filter = status in ("RUNNING", LOST)
        if limit is not None and not live_filter:
            stmt = stmt.limit(limit)
        now = _now()
        with _db_errors(self._where), Session(self._engine) as s, s.begin():
            infos = [self._run_info(row, now) for row in s.scalars(stmt)]
        if live_filter:
            infos = [info for info in infos if info.display_status == status][:limit]
        return infos

    def latest_run(self, kind: str | None = "train") -> RunInfo | None:
        """Return the newest run of ``kind`` (any kind if None), or None if there is none."""
        runs = self.list_runs(kind=kind, limit=1)
        return runs[0] if runs else None

    def find_run_by_fingerprint(self, fingerprint: str,
                                group_id: str | None = None) -> RunInfo | None:
        """Return the newest run with this fingerprint (within ``group_id`` if given), or None."""
        stmt = select(Run).where(Run.fingerprint == fingerprint)
        if group_id is not None:
            stmt = stmt.where(Run.group_id == group_id)
        stmt = stmt.order_by(Run.created_at.desc(), Run.id.desc()).limit(1)
        with _db_errors(self._where), Session(self._engine) as s, s.begin():
            row = s.scalars(stmt).first()
            return None if row is None else self._run_info(row, _now())

    def epoch_metrics(self, run_ids: Sequence[str]) -> pd.DataFrame:
        """Return the epoch metrics of these runs in long format.

        Args:
            run_ids: exact run ids; unknown ids contribute no rows.

        Returns:
            Columns run_id, epoch, name, value, sorted by (run_id, epoch, name).
        """
        t = EpochMetric.__table__.c
        stmt = (select(t.epoch, t.name, t.value).where(t.run_id == bindparam(_RUN_PARAM))
                .order_by(t.epoch, t.name))
        with _db_errors(self._where), Session(self._engine) as s, s.begin():
            return _per_run_frame(s.connection(), stmt, run_ids, _METRIC_COLUMNS)

    def layer_stats(self, run_ids: Sequence[str], *, epoch: int | None = None,
                    last_epoch_only: bool = False) -> pd.DataFrame:
        """Return per-layer statistics of these runs in long format.

        Args:
            run_ids: exact run ids; unknown ids contribute no rows.
            epoch: only this epoch.
            last_epoch_only: only each run's highest logged epoch.

        Returns:
            Columns run_id, epoch, layer_index, layer, stat, value, sorted by
            (run_id, epoch, layer_index, stat).

        Raises:
            RegistryError: both ``epoch`` and ``last_epoch_only`` were given.
        """
        if epoch is not None and last_epoch_only:
            raise RegistryError("give either epoch or last_epoch_only, not both")
        t = LayerStat.__table__.c
        run: BindParameter[str] = bindparam(_RUN_PARAM, type_=String())
        stmt = (select(t.epoch, t.layer_index, t.layer, t.stat, t.value).where(t.run_id == run)
                .order_by(t.epoch, t.layer_index, t.stat))
        if last_epoch_only:
            # max(epoch) of one run is a single primary-key seek (SQLite's min/max optimisation)
            # and its rows one key range: the run's older epochs are never read.
            latest = aliased(LayerStat)
            last = select(func.max(latest.epoch)).where(latest.run_id == run).scalar_subquery()
            stmt = stmt.where(t.epoch == last)
        elif epoch is not None:
            stmt = stmt.where(t.epoch == _as_int(epoch, "epoch"))
        with _db_errors(self._where), Session(self._engine) as s, s.begin():
            return _per_run_frame(s.connection(), stmt, run_ids, _LAYER_COLUMNS)

    def runs_frame(self, run_ids: Sequence[str] | None = None, *, status: str | None = None,
                   group_id: str | None = None, kind: str | None = None,
                   limit: int | None = None) -> pd.DataFrame:
        """Return one row per run with its scalar columns (no recipe/argv/environment).

        Args:
            run_ids: exact ids to include (unknown ones are skipped); None means all runs
                passing the filters, which are those of :meth:`list_runs`.

        Returns:
            Columns: id, name, status, display_status, kind, group_id, created_at, started_at,
            ended_at, heartbeat_at, config_hash, fingerprint, seed, git_commit, git_dirty,
            code_version, host, pid, attempt, error_type, error_message, checkpoint_dir;
            newest first; times as datetime64 in UTC.
        """
        infos = self.list_runs(status=status, group_id=group_id, kind=kind,
                               limit=None if run_ids is not None else limit)
        if run_ids is not None:
            wanted = set(run_ids)
            infos = [info for info in infos if info.id in wanted][:limit]
        frame = pd.DataFrame([[getattr(i, c) for c in _SCALAR_RUN_COLUMNS] for i in infos],
                             columns=_SCALAR_RUN_COLUMNS)
        for column in ("created_at", "started_at", "ended_at", "heartbeat_at"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        return frame

    # ----------------------------------------------------------------------------- helpers

    def _get_run_row(self, s: Session, run_id: str) -> Run:
        """The run with exactly this id (write methods take full ids, never prefixes)."""
        row = s.get(Run, run_id)
        if row is None:
            raise RegistryError(f"no run with id {run_id!r}")
        return row

    def _update_run(self, s: Session, run_id: str, **values: Any) -> None:
        """Update columns of one run, failing if the id is unknown."""
        result = s.execute(update(Run).where(Run.id == run_id).values(**values)
                           .execution_options(synchronize_session=False))
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise RegistryError(f"no run with id {run_id!r}")

    def _display_status(self, row: Run, now: datetime) -> str:
        if row.status != "RUNNING":
            return row.status
        heartbeat = row.heartbeat_at
        if heartbeat is not None and (now - heartbeat).total_seconds() > self._stale_after:
            return LOST
        # A pid only means something on the host that recorded it.
        if row.host == self._host and not _pid_alive(row.pid):
            return LOST
        return row.status

    def _run_info(self, row: Run, now: datetime) -> RunInfo:
        return RunInfo(
            id=row.id, name=row.name, status=row.status, kind=row.kind, group_id=row.group_id,
            created_at=row.created_at, started_at=row.started_at, ended_at=row.ended_at,
            heartbeat_at=row.heartbeat_at, recipe=json.loads(row.recipe),
            config_hash=row.config_hash, fingerprint=row.fingerprint, seed=row.seed,
            git_commit=row.git_commit, git_dirty=row.git_dirty, code_version=row.code_version,
            argv=json.loads(row.argv), environment=json.loads(row.environment), host=row.host,
            pid=row.pid, attempt=row.attempt, error_type=row.error_type,
            error_message=row.error_message, traceback=row.traceback,
            checkpoint_dir=row.checkpoint_dir, display_status=self._display_status(row, now),
        )


# --------------------------------------------------------------------------------- engine

def _parse_url(url: str | os.PathLike[str]) -> URL:
    text = os.fspath(url)
    if "://" not in text:
        if not text.strip():
            raise RegistryError("registry location is empty")
        return URL.create("sqlite", database=str(Path(text).expanduser()))
    try:
        return make_url(text)
    except ArgumentError as exc:
        raise RegistryError(f"invalid registry URL {text!r}: {exc}") from exc


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL; None for other backends and in-memory databases."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database.startswith("file:"):  # URI filename (sqlite:///file:...?uri=true)
        if url.query.get("mode") == "memory":
            return None
        database = database.removeprefix("file:")
    if database in ("", ":memory:"):
        return None
    return Path(database)


def _check_sqlite_file(path: Path) -> None:
    """Fail early and clearly on a path that cannot hold a registry."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegistryError(f"registry path {path} is not writable: cannot create its directory "
                            f"{path.parent} ({exc.strerror or exc})") from exc
    if path.is_dir():
        raise RegistryError(f"registry path {path} is a directory, not a registry file")
    if not path.exists():
        return
    try:
        with path.open("rb") as handle:
            header = handle.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise RegistryError(
            f"registry file {path} is not readable ({exc.strerror or exc})") from exc
    if header and header != _SQLITE_MAGIC:  # an empty file is a valid empty database
        raise RegistryError(f"file is not an imloss registry (not a SQLite database): {path}")


def _create_engine(url: URL, where: str) -> Engine:
    try:
        if url.get_backend_name() != "sqlite":
            return create_engine(url, pool_pre_ping=True)
        if _sqlite_file(url) is None:
            # One shared connection, or every session would see its own empty in-memory database.
            engine = create_engine(url, poolclass=StaticPool,
                                   connect_args={"check_same_thread": False})
        else:
            engine = create_engine(url)
    except (NoSuchModuleError, ImportError, ArgumentError) as exc:
        raise RegistryError(f"cannot open registry {where}: {exc}") from exc
    # Listeners live on this engine only: no process-wide event state.
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def _on_sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Take transaction control away from pysqlite (it would BEGIN lazily, deferred, and commit
    # before DDL); _on_sqlite_begin emits the BEGIN instead (SQLAlchemy's documented recipe).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout = 30000")  # keep in step with _BUSY_TIMEOUT_MS
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    # Switching a fresh file to WAL needs an exclusive lock, and SQLite answers "database is
    # locked" at once instead of using the busy timeout when several processes create the
    # registry together; retry for as long as the busy timeout would have waited. Once the file
    # is in WAL mode (persistent), this pragma is a no-op.
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _on_sqlite_begin(conn: Connection) -> None:
    # Writers take the write lock at BEGIN, where the busy timeout applies; a deferred
    # transaction that upgrades later can fail at once with "database is locked".
    if conn.get_execution_options().get(_IMMEDIATE, False):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def _prepare_schema(conn: Connection, where: str) -> None:
    """Create, check or migrate the schema inside the opening write transaction."""
    tables = set(inspect(conn).get_table_names())
    if "meta" not in tables:
        if tables:
            raise RegistryError(f"{where} is not an imloss registry: it has tables "
                                f"{', '.join(sorted(tables))} but no 'meta' table")
        Base.metadata.create_all(conn)
        conn.execute(insert(Meta).values(key="schema_version", value=json.dumps(SCHEMA_VERSION)))
        return
    stored = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar()
    try:
        version = int(json.loads(stored)) if stored is not None else None
    except (ValueError, TypeError):
        version = None
    if version is None:
        raise RegistryError(f"{where} is not an imloss registry: no valid schema_version in its "
                            f"meta table (found {stored!r})")
    if version > SCHEMA_VERSION:
        raise RegistryError(f"registry schema version {version} is newer than this imloss "
                            f"understands ({SCHEMA_VERSION}); upgrade imloss")
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise RegistryError(f"registry {where} has schema version {version} and this imloss "
                                f"has no migration from it to {SCHEMA_VERSION}")
        step(conn)
        version += 1
    # Always write here: a read-only registry must fail now, before any training starts.
    conn.execute(update(Meta).where(Meta.key == "schema_version").values(value=json.dumps(version)))


@contextmanager
def _db_errors(where: str, *, opening: bool = False) -> Iterator[None]:
    """Turn database driver errors into RegistryError with a message naming the registry."""
    try:
        yield
    except RegistryError:
        raise
    except SQLAlchemyError as exc:
        detail = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
        low = detail.lower()
        if "file is not a database" in low:
            message = f"file is not an imloss registry (not a SQLite database): {where}"
        elif opening and any(s in low for s in ("readonly", "read-only", "unable to open",
                                                 "permission denied")):
            message = f"registry {where} is not writable ({detail})"
        elif "database is locked" in low:
            message = (f"registry {where} stayed locked by another process for more than "
                       f"{_BUSY_TIMEOUT_MS // 1000} s ({detail})")
        else:
            message = f"registry {where}: {detail}"
        raise RegistryError(message) from exc


# --------------------------------------------------------------------------------- values

def _get_by_id_or_prefix(s: Session, model: type[Run] | type[Group], ref: str,
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


def _per_run_frame(conn: Connection, stmt: Select[Any], run_ids: Sequence[str],
                   columns: list[str]) -> pd.DataFrame:
    """Run ``stmt`` once per run id (bound as ``_RUN_PARAM``) and stack the results.

    One query per run keeps every query a primary-key range scan, needs no IN list (so no
    host-parameter limit), and lets the run_id column be built by repetition instead of
    decoding the same string for every row. Each run's rows go straight into a numpy record
    array (NULL becomes NaN there): transposing a million row tuples in Python would cost more
    than SQLite takes to read them.
    """
    record = np.dtype([(name, _dtype(name)) for name in columns[1:]])
    blocks: list[np.ndarray[Any, Any]] = []
    owners: list[str] = []
    counts: list[int] = []
    for run_id, rows in _rows_per_run(conn, stmt, sorted(set(run_ids))):
        if rows:
            blocks.append(np.array(rows, dtype=record))
            owners.append(run_id)
            counts.append(len(rows))
    data = np.concatenate(blocks) if blocks else np.empty(0, dtype=record)
    frame = {"run_id": np.repeat(np.array(owners, dtype=object), counts)}
    frame.update({name: data[name] for name in columns[1:]})
    return pd.DataFrame(frame)


def _rows_per_run(conn: Connection, stmt: Select[Any],
                  run_ids: list[str]) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """Yield ``(run_id, rows)`` with ``rows`` as plain tuples.

    On SQLite the SQLAlchemy-compiled statement runs on the driver cursor of the session's own
    connection (so inside its transaction): wrapping each of a million rows in a Row would cost
    more than SQLite needs to read them, and none of these column types has a result processor.
    """
    if not _driver_rows_are_plain(conn):
        for run_id in run_ids:
            yield run_id, [tuple(row) for row in conn.execute(stmt, {_RUN_PARAM: run_id})]
        return
    compiled = stmt.compile(conn)
    sql, names, fixed = str(compiled), compiled.positiontup or [], compiled.params
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        for run_id in run_ids:
            params = [run_id if name == _RUN_PARAM else fixed[name] for name in names]
            yield run_id, cursor.execute(sql, params).fetchall()
    finally:
        cursor.close()


def _driver_rows_are_plain(conn: Connection) -> bool:
    """Whether driver rows can be used as they come (pysqlite: no result processing needed)."""
    return conn.dialect.name == "sqlite"


def _dtype(column: str) -> str:
    if column in _INT_COLUMNS:
        return "i8"
    return "f8" if column == "value" else "O"


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


def _as_float(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{what} must be a number, got {value!r}") from exc


def _check_choice(value: Any, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise RegistryError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
