"""The run registry's public surface: :class:`Registry`, every method one short database transaction.

The boundary is MLflow-like: a method opens a session, works on rows and returns plain frozen
dataclasses (``records``) or pandas data frames, never ORM rows, so callers cannot hold a session
open or lazy-load by accident. The registry is opened once at the edge of a program (``with
Registry(url) as registry:``) and passed on as a handle.

A run's life in the registry: :meth:`Registry.queue_run` (QUEUED, attempt 0) -> :meth:`~Registry.claim_run`
(RUNNING; increments the attempt and returns it: the fence token) -> fenced writes carrying that
token (:meth:`~Registry.log_epoch`, :meth:`~Registry.heartbeat`, :meth:`~Registry.fenced` for what lives
outside the database) -> :meth:`~Registry.finish_run`. A worker that was paused past its heartbeat,
and whose run another worker took over, writes nothing more into it: it gets :class:`RunFencedError`.
The fence check and the write are one transaction holding the run's lock.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from imloss_cli import REGISTRY_ENV

from . import backend, reads, rows
from .errors import RegistryError, RunClaimedError, RunFencedError, db_errors
from .records import Claim, GroupInfo, NewRun, RunInfo, group_info, run_info
from .schema import KINDS, EpochMetric, Group, LayerStat, Run
from .status import LOST, RESUMABLE, RUNNING, STATUSES, TERMINAL
from .values import as_int, check_choice, dumps, new_id, now, pid_alive, public_url, without_passwords

LOST_AFTER_BEATS = 4
"""A RUNNING run whose heartbeat is older than this many of its own intervals is LOST."""


class Registry:
    """Runs, ablation groups and per-epoch statistics behind one SQLAlchemy URL.

    Args:
        url: any SQLAlchemy URL, or a plain filesystem path meaning ``sqlite:///PATH``;
            ``sqlite://`` is a private in-memory registry.
        stale_after: seconds without a heartbeat after which a RUNNING run of an imloss that did not
            record its heartbeat interval shows as LOST.
        create: create a SQLite file that does not exist; False (reading and resuming commands):
            refuse it, so a mistyped path is not answered with an empty new registry.
        write: prove now that the registry is writable, so a training run fails before any work;
            False (reading commands): write nothing unless the schema must be created or upgraded.

    Raises:
        RegistryError: the URL is invalid, the file is missing (``create=False``), not a SQLite
            database or not an imloss registry, its schema is newer than this code, or it is not writable.
    """

    def __init__(
        self, url: str | os.PathLike[str], *, stale_after: float = 3600.0, create: bool = True, write: bool = True
    ) -> None:
        if not stale_after > 0:
            raise RegistryError(f"stale_after must be a positive number of seconds, got {stale_after!r}")
        self._url = backend.parse_url(url)
        self._path = backend.sqlite_file(self._url)
        self._where = str(self._path) if self._path else self.url
        self._stale_after = float(stale_after)
        self._host = socket.gethostname()
        if self._path is not None:
            if not create and not self._path.exists():
                raise RegistryError(f"no registry at {self._path}")
            backend.check_sqlite_file(self._path)
        self._engine = backend.open_engine(self._url, self._where)
        self._read_engine = backend.for_reads(self._engine)
        self._write_engine = backend.for_writes(self._engine)
        try:
            with db_errors(self._where, opening=True):
                if write or not self._schema_is_current():
                    with self._write_engine.begin() as conn:
                        backend.prepare_schema(conn, self._where)
        except BaseException:
            self._engine.dispose()
            raise

    @property
    def url(self) -> str:
        """The registry URL as it may be shown or stored: password hidden (``?password=`` too)."""
        return public_url(self._url)

    def child_environment(self) -> dict[str, str]:
        """What a process started from here needs to open this registry: ``{REGISTRY_ENV: URL}``.

        The URL may hold a password, so it travels in the child's environment, which only its user
        can read, never on its command line, which every user's ``ps`` shows.
        """
        location = str(self._path) if self._path is not None else self._url.render_as_string(hide_password=False)
        return {REGISTRY_ENV: location}

    @property
    def path(self) -> Path | None:
        """The database file of a SQLite registry; None for a server or an in-memory registry."""
        return self._path

    def side_schema_url(self, suffix: str, *, create: bool) -> str | None:
        """The URL (its password included) of a schema beside a PostgreSQL registry's, for another tool's tables.

        The schema is ``<registry schema>_<suffix>`` (``imloss_<suffix>`` beside a registry in
        ``public``), in the same database; the URL's ``search_path`` is that schema alone, so the
        tool's tables never mix with the registry's (``imloss tune`` keeps Optuna's study there).

        Args:
            suffix: names the schema (the whole name must be lower-case letters, digits and underscores).
            create: create the schema now if it is missing; False: None when it is missing.

        Raises:
            RegistryError: not a PostgreSQL registry, a bad suffix, or the schema cannot be created.
        """
        if self._url.get_backend_name() != "postgresql":
            raise RegistryError(f"{self._where} is not a PostgreSQL registry")
        with self._read() as s:
            current = s.scalar(select(func.current_schema()))
            schema = f"imloss_{suffix}" if current in (None, "public") else f"{current}_{suffix}"
            if re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema) is None:  # it goes into DDL and search_path unquoted
                raise RegistryError(f"cannot keep tables beside {self._where}: {schema!r} is not a plain schema name")
            found = s.scalar(text("SELECT 1 FROM pg_namespace WHERE nspname = :name"), {"name": schema})
        if found is None:
            if not create:
                return None
            with self._write() as s:
                s.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
        url = self._url.update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    def close(self) -> None:
        """Release pooled connections; the registry must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.url!r})"

    # ------------------------------------------------------------------------------- groups

    def claim_group(
        self, key: str, name: str, base_recipe: Mapping[str, Any], axes: Mapping[str, Any], argv: Sequence[str]
    ) -> str:
        """The id of the group with this key, created now if there is none.

        The key is unique, so several workers starting the same ablation at once end with one
        group: one insert wins, the others find its row.

        Args:
            key: what identifies the same ablation.
            name: human-readable name.
            base_recipe: the recipe every member starts from (JSON-serialisable).
            axes: ``{"dotted.key": [values, ...]}`` swept by the group.
            argv: the command line that created it.
        """
        found = self._group_id_by_key(key)
        if found is not None:
            return found
        group_id = new_id()
        row = Group(
            id=group_id, key=key, name=str(name), created_at=now(), base_recipe=dumps(dict(base_recipe), "base_recipe"),
            axes=dumps(dict(axes), "axes"), argv=dumps(without_passwords(argv), "argv"),
        )  # fmt: skip
        try:
            with self._write() as s:
                s.add(row)
            return group_id
        except RegistryError as exc:
            found = self._group_id_by_key(key) if isinstance(exc.__cause__, IntegrityError) else None
            if found is None:
                raise
            return found

    def get_group(self, group_id_or_prefix: str) -> GroupInfo:
        """The group with this id, or the only group whose id starts with this prefix (else RegistryError)."""
        with self._read() as s:
            return group_info(rows.by_id_or_prefix(s, Group, group_id_or_prefix, "group"))

    def latest_group(self) -> GroupInfo | None:
        """The most recently created group, or None if there is none."""
        stmt = select(Group).order_by(Group.created_at.desc(), Group.id.desc()).limit(1)
        with self._read() as s:
            row = s.scalars(stmt).first()
            return None if row is None else group_info(row)

    # ------------------------------------------------------------------------------- a run's life

    def queue_run(self, new: NewRun, *, group_id: str | None = None) -> str:
        """Record a new run as QUEUED at attempt 0 (the next claim starts it); returns its id.

        Raises:
            RegistryError: invalid kind or seed, unknown group or reproduced run, a value that is
                not JSON-serialisable, or a failed write.
        """
        row = rows.new_run_row(new, group_id=group_id, created_at=now(), host=self._host)
        with self._write() as s:
            if group_id is not None and s.get(Group, group_id) is None:
                raise RegistryError(f"no group with id {group_id!r}")
            if new.reproduces is not None and s.get(Run, new.reproduces) is None:
                raise RegistryError(f"no run with id {new.reproduces!r} to reproduce")
            s.add(row)
            return row.id

    def queue_runs(self, group_id: str, runs: Sequence[NewRun]) -> list[str]:
        """The group's run for each entry, queued now where the group has none of its fingerprint.

        One transaction holding the group's row lock, so workers queueing the same grid at once
        end with one run row per trial. Returns run ids in the order of ``runs``.
        """
        ids: list[str] = []
        with self._write() as s:
            if s.get(Group, group_id, with_for_update=True) is None:
                raise RegistryError(f"no group with id {group_id!r}")
            stmt = select(Run.fingerprint, Run.id).where(Run.group_id == group_id).order_by(Run.created_at, Run.id)
            known = {fingerprint: run_id for fingerprint, run_id in s.execute(stmt)}  # later (newer) rows win
            start = now()
            for i, new in enumerate(runs):
                if new.fingerprint not in known:
                    # Creation times a microsecond apart keep the rows in plan order.
                    at = start + timedelta(microseconds=i)
                    row = rows.new_run_row(new, group_id=group_id, created_at=at, host=self._host)
                    s.add(row)
                    known[new.fingerprint] = row.id
                ids.append(known[new.fingerprint])
        return ids

    def queue_planned(self, group_id: str, plan: Callable[[Mapping[str, str]], Sequence[NewRun]]) -> list[str]:
        """Queue the runs that ``plan`` decides on while this process holds the group's lock.

        ``plan`` is called with the group's runs as ``{fingerprint: run id}`` and returns the runs to
        queue now (one whose fingerprint the group holds already is skipped). The workers of a group
        take turns here, so each decides knowing what the one before it queued: an ``imloss tune``
        worker asks Optuna for its next trial inside. On SQLite the turn holds the database's write
        lock, so ``plan`` must be quick and must not write to this registry itself.

        Returns:
            The ids of the runs queued now, in the order ``plan`` returned them.

        Raises:
            RegistryError: no such group, a run that cannot be recorded, or a failed write.
            Whatever ``plan`` raised (nothing was queued).
        """
        ids: list[str] = []
        with self._write() as s:
            if s.get(Group, group_id, with_for_update=True) is None:
                raise RegistryError(f"no group with id {group_id!r}")
            stmt = select(Run.fingerprint, Run.id).where(Run.group_id == group_id)
            known = {fingerprint: run_id for fingerprint, run_id in s.execute(stmt)}
            start = now()
            for i, new in enumerate(plan(MappingProxyType(known))):
                if new.fingerprint in known:
                    continue
                row = rows.new_run_row(
                    new, group_id=group_id, created_at=start + timedelta(microseconds=i), host=self._host
                )
                s.add(row)
                known[new.fingerprint] = row.id
                ids.append(row.id)
        return ids

    def claim_run(self, run_id: str, claim: Claim = Claim()) -> int:
        """Start the next attempt of a QUEUED, FAILED, KILLED or LOST run in this process; returns it.

        The returned attempt is the fence token every later write of this attempt carries. The check
        and the update are one transaction holding the run's lock: of several workers claiming one
        run, one wins and the others get :class:`RunClaimedError`; a worker that held an earlier
        attempt is fenced off from then on.

        Raises:
            RunClaimedError: the run is RUNNING in a live process (another worker holds it).
            RegistryError: unknown id, or the run is FINISHED.
        """
        at = now()
        with self._write() as s:
            row = self._run_row(s, run_id)
            shown = self._display_status(row, at)
            if shown not in RESUMABLE:
                where = f" on {row.host} (pid {row.pid})" if shown == RUNNING else ""
                error = RunClaimedError if shown == RUNNING else RegistryError
                raise error(
                    f"run {row.id} is {row.status}{where}; only "
                    f"{', '.join(RESUMABLE[:-1])} or {RESUMABLE[-1]} runs can be started or resumed"
                )
            # A LOST run's holder may only be paused: from now on its writes are fenced off.
            took_over = f"{row.host} (pid {row.pid})" if shown == LOST else None
            return rows.start_attempt(row, claim, at=at, host=self._host, took_over=took_over)

    def log_epoch(
        self,
        run_id: str,
        epoch: int,
        metrics: Mapping[str, float],
        layer_stats: Sequence[tuple[int, str, Mapping[str, float]]],
        *,
        attempt: int,
    ) -> None:
        """Store one epoch's metrics and ``(layer_index, layer, {stat: value})`` rows, replacing any earlier log.

        Fenced: written only while ``attempt`` is the run's current attempt and the run is RUNNING;
        each row records that attempt. Also refreshes the heartbeat. NaN is stored as NULL.

        Raises:
            RunFencedError: another claim made a newer attempt current; nothing was written.
            RegistryError: unknown run, a run not RUNNING, a non-numeric value, a repeated layer index.
        """
        metric_rows, stat_rows = rows.epoch_rows(run_id, epoch, metrics, layer_stats, attempt)
        with self._write() as s:
            self._fenced_row(s, run_id, attempt).heartbeat_at = now()
            # Delete, then insert: a re-logged epoch (after a resume) replaces every old row of it.
            for table in (EpochMetric, LayerStat):
                s.execute(delete(table).where(table.run_id == run_id, table.epoch == as_int(epoch, "epoch")))
            if metric_rows:
                s.execute(insert(EpochMetric), metric_rows)
            if stat_rows:
                s.execute(insert(LayerStat), stat_rows)

    def heartbeat(self, run_id: str, *, attempt: int) -> None:
        """Refresh the heartbeat while ``attempt`` is the run's current attempt (fenced, as ``log_epoch``)."""
        with self._write() as s:
            self._fenced_row(s, run_id, attempt).heartbeat_at = now()

    @contextlib.contextmanager
    def fenced(self, run_id: str, *, attempt: int) -> Iterator[None]:
        """Run the body while ``attempt`` is the run's current attempt, holding the run's lock.

        For what lives outside the database and must follow the fence, such as promoting a
        checkpoint to ``last.pt``: no claim can slip between the check and the body, because a
        claim needs the lock held here (SQLite: the write lock; PostgreSQL: the row lock).

        Raises:
            RunFencedError: another claim made a newer attempt current; the body did not run.
        """
        with self._write() as s:
            self._fenced_row(s, run_id, attempt)
            yield

    def finish_run(
        self,
        run_id: str,
        status: str,
        *,
        attempt: int,
        error_type: str | None = None,
        error_message: str | None = None,
        traceback: str | None = None,
    ) -> None:
        """End a QUEUED or RUNNING run as FINISHED, FAILED or KILLED, while ``attempt`` is current.

        Args:
            attempt: the fence token of :meth:`claim_run` (0: a queued run that never started).
            error_type, error_message, traceback: why a FAILED or KILLED run ended.

        Raises:
            RunFencedError: another claim made a newer attempt current; nothing was written.
            RegistryError: status not terminal, unknown run, or the run has already ended.
        """
        check_choice(status, sorted(TERMINAL), "finish status")
        at = now()
        with self._write() as s:
            row = self._fenced_row(s, run_id, attempt, running=False)
            row.status, row.ended_at, row.heartbeat_at = status, at, at
            row.error_type, row.error_message, row.traceback = error_type, error_message, traceback

    # ------------------------------------------------------------------------------- reading runs

    def get_run(self, run_id_or_prefix: str) -> RunInfo:
        """The run with this id, or the only run whose id starts with this prefix (else RegistryError)."""
        with self._read() as s:
            return self._run_info(rows.by_id_or_prefix(s, Run, run_id_or_prefix, "run"), now())

    def list_runs(
        self,
        *,
        status: str | None = None,
        group_id: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> list[RunInfo]:
        """Runs, newest first: of this displayed ``status`` ("RUNNING" excludes LOST runs, "LOST"
        selects them), members of group ``group_id`` (exact id), of ``kind``; at most ``limit``.

        Raises:
            RegistryError: unknown status or kind, or a negative limit.
        """
        if status is not None:
            check_choice(status, (*STATUSES, LOST), "status")
        if kind is not None:
            check_choice(kind, KINDS, "kind")
        if limit is not None and as_int(limit, "limit") < 0:
            raise RegistryError(f"limit must be >= 0, got {limit}")
        stmt = select(Run).order_by(Run.created_at.desc(), Run.id.desc())
        if status is not None:
            stmt = stmt.where(Run.status == (RUNNING if status == LOST else status))
        if group_id is not None:
            stmt = stmt.where(Run.group_id == group_id)
        if kind is not None:
            stmt = stmt.where(Run.kind == kind)
        # Liveness is only known in Python, so RUNNING/LOST filters cannot be limited in SQL.
        live_filter = status in (RUNNING, LOST)
        if limit is not None and not live_filter:
            stmt = stmt.limit(limit)
        at = now()
        with self._read() as s:
            infos = [self._run_info(row, at) for row in s.scalars(stmt)]
        if live_filter:
            infos = [info for info in infos if info.display_status == status][:limit]
        return infos

    def latest_run(self, kind: str | None = "train") -> RunInfo | None:
        """The newest run of ``kind`` (any kind if None), or None if there is none."""
        runs = self.list_runs(kind=kind, limit=1)
        return runs[0] if runs else None

    def reproductions_of(self, run_id: str) -> list[str]:
        """The ids of the runs that reproduce this one (``imloss reproduce``), oldest first."""
        stmt = select(Run.id).where(Run.reproduces == run_id).order_by(Run.created_at, Run.id)
        with self._read() as s:
            return list(s.scalars(stmt))

    def epoch_attempts(self, run_id: str) -> dict[int, int | None]:
        """``{epoch: attempt}``: which attempt of the run wrote each logged epoch (None: before fencing)."""
        stmt = (
            select(EpochMetric.epoch, EpochMetric.attempt)
            .where(EpochMetric.run_id == run_id)
            .distinct()
            .order_by(EpochMetric.epoch)
        )
        with self._read() as s:
            return {int(epoch): attempt for epoch, attempt in s.execute(stmt)}

    def epoch_metrics(self, run_ids: Sequence[str], *, names: Sequence[str] | None = None) -> pd.DataFrame:
        """The epoch metrics of these runs (exact ids) in long format: run_id, epoch, name, value.

        ``names``: only these metrics (the database filters, so the others cost nothing); None: all.
        Sorted by (run_id, epoch, name); unknown ids and names contribute no rows.
        """
        wanted = reads.name_filter(names, "names")
        if wanted == [] or not run_ids:
            return reads.empty_frame(reads.METRIC_COLUMNS)
        stmt = reads.metrics_statement(wanted)
        with self._read() as s:
            return reads.per_run_frame(s.connection(), stmt, run_ids, reads.METRIC_COLUMNS)

    def layer_stats(
        self,
        run_ids: Sequence[str],
        *,
        epoch: int | None = None,
        last_epoch_only: bool = False,
        stats: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Per-layer statistics of these runs in long format: run_id, epoch, layer_index, layer, stat, value.

        Args:
            epoch: only this epoch; ``last_epoch_only``: only each run's highest logged epoch.
            stats: only these statistics, e.g. ``["entropy"]``; None: all.

        Raises:
            RegistryError: both ``epoch`` and ``last_epoch_only``, or ``stats`` given as one string.
        """
        if epoch is not None and last_epoch_only:
            raise RegistryError("give either epoch or last_epoch_only, not both")
        wanted = reads.name_filter(stats, "stats")
        if wanted == [] or not run_ids:
            return reads.empty_frame(reads.LAYER_COLUMNS)
        stmt = reads.layers_statement(
            epoch=None if epoch is None else as_int(epoch, "epoch"), last_epoch_only=last_epoch_only, stats=wanted
        )
        with self._read() as s:
            return reads.per_run_frame(s.connection(), stmt, run_ids, reads.LAYER_COLUMNS)

    # ------------------------------------------------------------------------------- private

    def _schema_is_current(self) -> bool:
        with self._read_engine.connect() as conn:
            return backend.schema_version(conn) == backend.SCHEMA_VERSION

    @contextlib.contextmanager
    def _read(self) -> Iterator[Session]:
        """One read transaction (a consistent snapshot); driver errors become RegistryError."""
        with db_errors(self._where), Session(self._read_engine) as s, s.begin():
            yield s

    @contextlib.contextmanager
    def _write(self) -> Iterator[Session]:
        """One write transaction, committed on leaving (SQLite: BEGIN IMMEDIATE)."""
        with db_errors(self._where), Session(self._write_engine) as s, s.begin():
            yield s

    def _group_id_by_key(self, key: str) -> str | None:
        with self._read() as s:
            return s.scalars(select(Group.id).where(Group.key == key)).first()

    def _run_row(self, s: Session, run_id: str) -> Run:
        """The run with exactly this id, locked until commit (writers take full ids only).

        The row lock makes read-check-update sequences (claims, fenced writes, finishing) atomic
        on PostgreSQL; SQLite's BEGIN IMMEDIATE has already serialised all writers.
        """
        row = s.get(Run, run_id, with_for_update=True)
        if row is None:
            raise RegistryError(f"no run with id {run_id!r}")
        return row

    def _fenced_row(self, s: Session, run_id: str, attempt: int, *, running: bool = True) -> Run:
        """The run's row, locked, if ``attempt`` is still its current attempt (the fence check).

        ``running``: the write needs the run RUNNING (epoch rows, heartbeats, checkpoints); False:
        it only must not have ended (finishing a run, even one never started).
        """
        row = self._run_row(s, run_id)
        if row.attempt != attempt:
            raise RunFencedError(row.id, row.host, row.pid, row.attempt)
        if row.status in TERMINAL:
            raise RegistryError(f"run {row.id} has already ended as {row.status}")
        if running and row.status != RUNNING:
            raise RegistryError(f"run {row.id} is {row.status}, not RUNNING; claim it first")
        return row

    def _display_status(self, row: Run, at: datetime) -> str:
        """LOST for a RUNNING row whose process is gone or whose heartbeat is stale; else the status."""
        if row.status != RUNNING:
            return row.status
        heartbeat = row.heartbeat_at
        # A run says how often it beats; runs of older imloss fall back to stale_after.
        limit = LOST_AFTER_BEATS * row.heartbeat_s if row.heartbeat_s else self._stale_after
        if heartbeat is not None and (at - heartbeat).total_seconds() > limit:
            return LOST
        # A pid only means something on the host that recorded it.
        if row.host == self._host and not pid_alive(row.pid):
            return LOST
        return row.status

    def _run_info(self, row: Run, at: datetime) -> RunInfo:
        return run_info(row, self._display_status(row, at))
