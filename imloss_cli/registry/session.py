"""What every part of the registry shares: the open database, its transactions, and how a run looks.

:class:`RegistryBase` opens the database (through :mod:`.backend`), hands out one read and one
write transaction helper, and knows the two facts about a run row that both reads and writes
need: its displayed status (LOST for a RUNNING row whose process is gone) and whether a write
carrying an attempt number may still touch it (the fence check).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import backend
from .errors import RegistryError, RunFencedError, db_errors
from .records import RunInfo, run_info
from .schema import Group, Run
from .status import LOST, RUNNING, TERMINAL
from .values import pid_alive

LOST_AFTER_BEATS = 4
"""A RUNNING run whose heartbeat is older than this many of its own intervals is LOST."""


class RegistryBase:
    """An open registry database: the connection pool, the transaction helpers, the run-row rules."""

    def __init__(
        self, url: str | os.PathLike[str], *, stale_after: float = 3600.0, create: bool = True, write: bool = True
    ) -> None:
        """Open (creating or upgrading if needed) the registry at ``url``.

        Args:
            url: any SQLAlchemy URL, or a plain filesystem path meaning ``sqlite:///PATH``.
                ``sqlite://`` is a private in-memory registry.
            stale_after: seconds without a heartbeat after which a RUNNING run shows as LOST
                (runs that record their heartbeat interval use ``LOST_AFTER_BEATS`` of it).
            create: create a SQLite file that does not exist; False (reading and resuming commands):
                refuse it, so a mistyped path is not answered with an empty new registry.
            write: prove now that the registry is writable (a write transaction), so a training
                run fails before any work; False (reading commands): only read, unless the schema
                must be created or upgraded, so readers never queue behind the runs that write.

        Raises:
            RegistryError: the URL is invalid, the file is missing (``create=False``), not a
                SQLite database or not an imloss registry, its schema is newer than this code, or it is not writable.
        """
        if not stale_after > 0:
            raise RegistryError(f"stale_after must be a positive number of seconds, got {stale_after!r}")
        self._url = backend.parse_url(url)
        self._path = backend.sqlite_file(self._url)
        self._where = str(self._path) if self._path else self._url.render_as_string(hide_password=True)
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

    def _schema_is_current(self) -> bool:
        with self._read_engine.connect() as conn:
            return backend.schema_version(conn) == backend.SCHEMA_VERSION

    @property
    def url(self) -> str:
        """The registry URL, password hidden."""
        return self._url.render_as_string(hide_password=True)

    @property
    def url_for_subprocesses(self) -> str:
        """The URL with its password: what a worker or torchrun process started from here opens."""
        if self._path is not None:
            return str(self._path)
        return self._url.render_as_string(hide_password=False)

    def close(self) -> None:
        """Release pooled connections; the registry must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> RegistryBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.url!r})"

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

    def _get_run_row(self, s: Session, run_id: str) -> Run:
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

        Args:
            running: the write needs the run RUNNING (epoch rows, heartbeats, checkpoints);
                False: it only must not have ended (finishing a run, even one never started).

        Raises:
            RunFencedError: another claim has made a newer attempt current.
            RegistryError: unknown run, or it has ended (or, with ``running``, is not RUNNING).
        """
        row = self._get_run_row(s, run_id)
        if row.attempt != attempt:
            raise RunFencedError(row.id, row.host, row.pid, row.attempt)
        if row.status in TERMINAL:
            raise RegistryError(f"run {row.id} has already ended as {row.status}")
        if running and row.status != RUNNING:
            raise RegistryError(f"run {row.id} is {row.status}, not RUNNING; claim it first")
        return row

    def _display_status(self, row: Run, at: datetime) -> str:
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

    def _group_id_by_key(self, key: str) -> str | None:
        with self._read() as s:
            return s.scalars(select(Group.id).where(Group.key == key)).first()
