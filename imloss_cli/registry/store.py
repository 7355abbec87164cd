"""The run registry: where training runs, ablation groups and their per-epoch statistics live.

The boundary is MLflow-like: every public method of :class:`Registry` is one short database
transaction and returns plain frozen dataclasses or pandas data frames, never ORM rows, so
callers cannot hold a session open or lazy-load by accident. Opening the database (SQLite or
PostgreSQL) is :mod:`.backend`'s job, the bulk reads into data frames :mod:`.reads`'s, the
snapshots :mod:`.records`'s and the checks of values going in :mod:`.values`'s. Every method
opens its transaction through :meth:`Registry._read` or :meth:`Registry._write`; the private
``_get_*`` / ``_update_*`` helpers take that session.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import backend, reads
from .errors import RegistryError, RunClaimedError, db_errors
from .records import RUN_FRAME_COLUMNS, GroupInfo, RunInfo, group_info, run_info
from .schema import ID_LENGTH, KINDS, EpochMetric, Group, LayerStat, Run
from .status import LOST, QUEUED, RESUMABLE, RUNNING, STATUSES, TERMINAL
from .values import as_float, as_int, check_choice, dumps, new_id, now, pid_alive

LOST_AFTER_BEATS = 4
"""A RUNNING run whose heartbeat is older than this many of its own intervals is LOST."""


class Registry:
    """Store of runs, ablation groups and per-epoch metrics behind one SQLAlchemy URL."""

    def __init__(self, url: str | os.PathLike[str], *, stale_after: float = 3600.0, create: bool = True) -> None:
        """Open (creating or upgrading if needed) the registry at ``url``.

        Args:
            url: any SQLAlchemy URL, or a plain filesystem path meaning ``sqlite:///PATH``.
                ``sqlite://`` is a private in-memory registry.
            stale_after: seconds without a heartbeat after which a RUNNING run shows as LOST
                (runs that record their heartbeat interval use ``LOST_AFTER_BEATS`` of it).
            create: create a SQLite file that does not exist; False (reading commands): refuse it,
                so a mistyped path is not answered with an empty new registry.

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
            with db_errors(self._where, opening=True), self._write_engine.begin() as conn:
                backend.prepare_schema(conn, self._where)
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

    # ----------------------------------------------------------------------------- writes

    def create_group(
        self,
        name: str,
        base_recipe: Mapping[str, Any],
        axes: Mapping[str, Any],
        argv: Sequence[str],
        *,
        key: str | None = None,
    ) -> str:
        """Record a new ablation group.

        Args:
            name: human-readable name.
            base_recipe: the recipe every member starts from (JSON-serialisable).
            axes: ``{"dotted.key": [values, ...]}`` swept by the group.
            argv: the command line that created it.
            key: what identifies the same ablation; unique among groups (None: no key).

        Returns:
            The new group id (12 hex characters).

        Raises:
            RegistryError: a value is not JSON-serialisable, the key is taken, or the write failed.
        """
        row = Group(
            id=new_id(),
            key=key,
            name=str(name),
            created_at=now(),
            base_recipe=dumps(dict(base_recipe), "base_recipe"),
            axes=dumps(dict(axes), "axes"),
            argv=dumps(list(argv), "argv"),
        )
        with self._write() as s:
            s.add(row)
            return row.id

    def claim_group(
        self, key: str, name: str, base_recipe: Mapping[str, Any], axes: Mapping[str, Any], argv: Sequence[str]
    ) -> str:
        """The id of the group with this key, created now if there is none.

        The unique key makes this safe when several workers start the same ablation at once: one
        insert wins, the others find its row.

        Raises:
            RegistryError: a value is not JSON-serialisable or the database failed.
        """
        found = self._group_id_by_key(key)
        if found is not None:
            return found
        try:
            return self.create_group(name, base_recipe, axes, argv, key=key)
        except RegistryError as exc:
            found = self._group_id_by_key(key) if isinstance(exc.__cause__, IntegrityError) else None
            if found is None:
                raise
            return found

    def queue_runs(self, group_id: str, runs: Sequence[Mapping[str, Any]]) -> list[str]:
        """The group's run for each entry, queued now where the group has none of its fingerprint.

        One transaction that holds the group's row lock, so workers queueing the same grid at once
        end with one run row per trial.

        Args:
            group_id: exact group id.
            runs: keyword arguments of :meth:`create_run` (``fingerprint`` identifies the trial).

        Returns:
            Run ids in the order of ``runs``: the group's newest run of that fingerprint, else new.
        """
        ids: list[str] = []
        with self._write() as s:
            if s.get(Group, group_id, with_for_update=True) is None:
                raise RegistryError(f"no group with id {group_id!r}")
            stmt = select(Run.fingerprint, Run.id).where(Run.group_id == group_id).order_by(Run.created_at, Run.id)
            known = {fingerprint: run_id for fingerprint, run_id in s.execute(stmt)}  # later (newer) rows win
            start = now()
            for i, fields in enumerate(runs):
                fingerprint = str(fields["fingerprint"])
                if fingerprint not in known:
                    # Creation times a microsecond apart keep the rows in plan order.
                    at = start + timedelta(microseconds=i)
                    row = self._new_run_row(**{**fields, "group_id": group_id, "status": QUEUED, "created_at": at})
                    s.add(row)
                    known[fingerprint] = row.id
                ids.append(known[fingerprint])
        return ids

    def create_run(
        self,
        *,
        name: str,
        recipe: Mapping[str, Any],
        config_hash: str,
        fingerprint: str,
        seed: int,
        code_version: str,
        kind: str = "train",
        group_id: str | None = None,
        status: str = "RUNNING",
        argv: Sequence[str] = (),
        environment: Mapping[str, Any] | None = None,
        git_commit: str | None = None,
        git_dirty: bool | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
    ) -> str:
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
        row = self._new_run_row(
            name=name, recipe=recipe, config_hash=config_hash, fingerprint=fingerprint, seed=seed,
            code_version=code_version, kind=kind, group_id=group_id, status=status, argv=argv,
            environment=environment, git_commit=git_commit, git_dirty=git_dirty, checkpoint_dir=checkpoint_dir,
        )  # fmt: skip
        with self._write() as s:
            if group_id is not None and s.get(Group, group_id) is None:
                raise RegistryError(f"no group with id {group_id!r}")
            s.add(row)
            return row.id

    def mark_running(
        self,
        run_id: str,
        *,
        environment: Mapping[str, Any] | None = None,
        argv: Sequence[str] | None = None,
        git_commit: str | None = None,
        git_dirty: bool | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        heartbeat_s: float | None = None,
        how: str = "fresh",
    ) -> None:
        """(Re)start a QUEUED, FAILED, KILLED or LOST run in this process: the claim of a worker.

        Sets started_at, heartbeat, host and pid, clears the end time and error, increments
        ``attempt`` when the run had been started before, and appends to ``attempts`` one entry
        (attempt, host, pid, started_at, ``how``). Arguments left as None keep the stored value.
        The check and the update are one transaction holding the row's lock: of several workers
        claiming one run, one wins and the others get :class:`RunClaimedError`.

        Args:
            heartbeat_s: how often this process will refresh the heartbeat; the run is LOST after
                ``LOST_AFTER_BEATS`` such intervals without one.
            how: how this attempt starts ("fresh", "resumed from ...", "restarted: ...").

        Raises:
            RunClaimedError: the run is RUNNING in a live process (another worker holds it).
            RegistryError: unknown id, or the run is FINISHED.
        """
        at = now()
        with self._write() as s:
            row = self._get_run_row(s, run_id)
            shown = self._display_status(row, at)
            if shown not in RESUMABLE:
                where = f" on {row.host} (pid {row.pid})" if shown == RUNNING else ""
                error = RunClaimedError if shown == RUNNING else RegistryError
                raise error(
                    f"run {row.id} is {row.status}{where}; only "
                    f"{', '.join(RESUMABLE[:-1])} or {RESUMABLE[-1]} runs can be started"
                )
            if row.started_at is not None:
                row.attempt += 1
            row.status, row.started_at, row.ended_at, row.heartbeat_at = RUNNING, at, None, at
            row.host, row.pid = self._host, os.getpid()
            row.heartbeat_s = heartbeat_s
            entry = {"attempt": row.attempt, "host": row.host, "pid": row.pid, "started_at": at.isoformat(), "how": how}
            row.attempts = dumps([*json.loads(row.attempts or "[]"), entry], "attempts")
            row.error_type = row.error_message = row.traceback = None
            if environment is not None:
                row.environment = dumps(dict(environment), "environment")
            if argv is not None:
                row.argv = dumps(list(argv), "argv")
            if git_commit is not None:
                row.git_commit = git_commit
            if git_dirty is not None:
                row.git_dirty = git_dirty
            if checkpoint_dir is not None:
                row.checkpoint_dir = os.fspath(checkpoint_dir)

    def log_epoch(
        self,
        run_id: str,
        epoch: int,
        metrics: Mapping[str, float],
        layer_stats: Sequence[tuple[int, str, Mapping[str, float]]],
    ) -> None:
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
        epoch = as_int(epoch, "epoch")
        metric_rows = [
            {"run_id": run_id, "epoch": epoch, "name": str(key), "value": as_float(value, f"metric {key!r}")}
            for key, value in metrics.items()
        ]
        stat_rows: list[dict[str, Any]] = []
        seen: set[int] = set()
        for index, layer, stats in layer_stats:
            index = as_int(index, "layer_index")
            if index in seen:
                raise RegistryError(f"layer index {index} appears twice in epoch {epoch} of run {run_id}")
            seen.add(index)
            stat_rows.extend(
                {
                    "run_id": run_id,
                    "epoch": epoch,
                    "layer_index": index,
                    "layer": str(layer),
                    "stat": str(stat),
                    "value": as_float(value, f"{stat!r} of layer {layer!r}"),
                }
                for stat, value in stats.items()
            )
        with self._write() as s:
            self._update_run(s, run_id, heartbeat_at=now())
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
        with self._write() as s:
            self._update_run(s, run_id, heartbeat_at=now())

    def finish_run(
        self,
        run_id: str,
        status: str,
        *,
        error_type: str | None = None,
        error_message: str | None = None,
        traceback: str | None = None,
    ) -> None:
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
        check_choice(status, sorted(TERMINAL), "finish status")
        at = now()
        with self._write() as s:
            row = self._get_run_row(s, run_id)
            if row.status in TERMINAL:
                raise RegistryError(f"run {row.id} has already ended as {row.status}")
            row.status, row.ended_at, row.heartbeat_at = status, at, at
            row.error_type, row.error_message, row.traceback = error_type, error_message, traceback

    def set_checkpoint_dir(self, run_id: str, path: str | os.PathLike[str]) -> None:
        """Record where the run's checkpoints are.

        Raises:
            RegistryError: unknown run id or a failed write.
        """
        with self._write() as s:
            self._update_run(s, run_id, checkpoint_dir=os.fspath(path))

    # ----------------------------------------------------------------------------- reads

    def get_run(self, run_id_or_prefix: str) -> RunInfo:
        """Return the run with this id, or the only run whose id starts with this prefix.

        Raises:
            RegistryError: no run matches, or the prefix matches several runs.
        """
        with self._read() as s:
            return self._run_info(self._get_by_id_or_prefix(s, Run, run_id_or_prefix, "run"), now())

    def get_group(self, group_id_or_prefix: str) -> GroupInfo:
        """Return the group with this id, or the only group whose id starts with this prefix.

        Raises:
            RegistryError: no group matches, or the prefix matches several groups.
        """
        with self._read() as s:
            return group_info(self._get_by_id_or_prefix(s, Group, group_id_or_prefix, "group"))

    def latest_group(self) -> GroupInfo | None:
        """Return the most recently created group, or None if there is none."""
        stmt = select(Group).order_by(Group.created_at.desc(), Group.id.desc()).limit(1)
        with self._read() as s:
            row = s.scalars(stmt).first()
            return None if row is None else group_info(row)

    def list_groups(self, *, limit: int | None = None) -> list[GroupInfo]:
        """Return ablation groups, newest first (at most ``limit``)."""
        stmt = select(Group).order_by(Group.created_at.desc(), Group.id.desc())
        if limit is not None:
            stmt = stmt.limit(as_int(limit, "limit"))
        with self._read() as s:
            return [group_info(row) for row in s.scalars(stmt)]

    def list_runs(
        self,
        *,
        status: str | None = None,
        group_id: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> list[RunInfo]:
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
        """Return the newest run of ``kind`` (any kind if None), or None if there is none."""
        runs = self.list_runs(kind=kind, limit=1)
        return runs[0] if runs else None

    def find_run_by_fingerprint(self, fingerprint: str, group_id: str | None = None) -> RunInfo | None:
        """Return the newest run with this fingerprint (within ``group_id`` if given), or None."""
        stmt = select(Run).where(Run.fingerprint == fingerprint)
        if group_id is not None:
            stmt = stmt.where(Run.group_id == group_id)
        stmt = stmt.order_by(Run.created_at.desc(), Run.id.desc()).limit(1)
        with self._read() as s:
            row = s.scalars(stmt).first()
            return None if row is None else self._run_info(row, now())

    def epoch_metrics(self, run_ids: Sequence[str], *, names: Sequence[str] | None = None) -> pd.DataFrame:
        """Return the epoch metrics of these runs in long format.

        Args:
            run_ids: exact run ids; unknown ids contribute no rows.
            names: only these metrics (the database filters, so unwanted metrics cost
                nothing); None means all. Unknown names contribute no rows.

        Returns:
            Columns run_id, epoch, name, value, sorted by (run_id, epoch, name).

        Raises:
            RegistryError: ``names`` is a single string rather than a sequence of names.
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
        """Return per-layer statistics of these runs in long format.

        Args:
            run_ids: exact run ids; unknown ids contribute no rows.
            epoch: only this epoch.
            last_epoch_only: only each run's highest logged epoch (of any statistic, so a run
                whose last epoch lacks the ``stats`` asked for contributes no rows).
            stats: only these statistics, e.g. ``["entropy"]``; None means all. Unknown names
                contribute no rows.

        Returns:
            Columns run_id, epoch, layer_index, layer, stat, value, sorted by
            (run_id, epoch, layer_index, stat).

        Raises:
            RegistryError: both ``epoch`` and ``last_epoch_only`` were given, or ``stats`` is a
                single string.
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

    def runs_frame(
        self,
        run_ids: Sequence[str] | None = None,
        *,
        status: str | None = None,
        group_id: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """Return one row per run with its scalar columns (no recipe/argv/environment).

        Args:
            run_ids: exact ids to include (unknown ones are skipped); None means all runs
                passing the filters, which are those of :meth:`list_runs`.

        Returns:
            The scalar fields of :class:`RunInfo` (``records.RUN_FRAME_COLUMNS``), newest first;
            times as datetime64 in UTC.
        """
        infos = self.list_runs(
            status=status, group_id=group_id, kind=kind, limit=None if run_ids is not None else limit
        )
        if run_ids is not None:
            wanted = set(run_ids)
            infos = [info for info in infos if info.id in wanted][:limit]
        columns = list(RUN_FRAME_COLUMNS)
        frame = pd.DataFrame([[getattr(i, c) for c in columns] for i in infos], columns=columns)
        for column in ("created_at", "started_at", "ended_at", "heartbeat_at"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        return frame

    # ----------------------------------------------------------------------------- helpers

    def _new_run_row(
        self,
        *,
        name: str,
        recipe: Mapping[str, Any],
        config_hash: str,
        fingerprint: str,
        seed: int,
        code_version: str,
        kind: str = "train",
        group_id: str | None = None,
        status: str = RUNNING,
        argv: Sequence[str] = (),
        environment: Mapping[str, Any] | None = None,
        git_commit: str | None = None,
        git_dirty: bool | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        created_at: datetime | None = None,
    ) -> Run:
        """A new run row owned by this process, its values checked (not yet added to a session)."""
        check_choice(kind, KINDS, "kind")
        check_choice(status, (QUEUED, RUNNING), "initial status")
        started = created_at or now()
        row = Run(
            id=new_id(),
            name=str(name),
            status=status,
            kind=kind,
            group_id=group_id,
            created_at=started,
            started_at=started if status == RUNNING else None,
            ended_at=None,
            heartbeat_at=started,
            recipe=dumps(dict(recipe), "recipe"),
            config_hash=str(config_hash),
            fingerprint=str(fingerprint),
            seed=as_int(seed, "seed"),
            git_commit=git_commit,
            git_dirty=git_dirty,
            code_version=str(code_version),
            argv=dumps(list(argv), "argv"),
            environment=dumps(dict(environment or {}), "environment"),
            host=self._host,
            pid=os.getpid(),
            attempt=1,
            checkpoint_dir=None if checkpoint_dir is None else os.fspath(checkpoint_dir),
        )
        return row

    def _get_run_row(self, s: Session, run_id: str) -> Run:
        """The run with exactly this id, locked until commit (writers take full ids only).

        The row lock makes read-check-update sequences (mark_running, finish_run) atomic on
        PostgreSQL; SQLite's BEGIN IMMEDIATE has already serialised all writers.
        """
        row = s.get(Run, run_id, with_for_update=True)
        if row is None:
            raise RegistryError(f"no run with id {run_id!r}")
        return row

    def _update_run(self, s: Session, run_id: str, **values: Any) -> None:
        """Update columns of one run, failing if the id is unknown."""
        result = s.execute(
            update(Run).where(Run.id == run_id).values(**values).execution_options(synchronize_session=False)
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise RegistryError(f"no run with id {run_id!r}")

    def _group_id_by_key(self, key: str) -> str | None:
        with self._read() as s:
            return s.scalars(select(Group.id).where(Group.key == key)).first()

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

    @staticmethod
    def _get_by_id_or_prefix(s: Session, model: type[Run | Group], ref: str, what: str) -> Any:
        """The row of ``model`` whose id is ``ref`` or uniquely starts with it."""
        prefix = str(ref).strip().lower()
        if not prefix:
            raise RegistryError(f"empty {what} id")
        row = s.get(model, prefix)
        if row is not None:
            return row
        if len(prefix) < ID_LENGTH:
            stmt = select(model).where(model.id.startswith(prefix, autoescape=True)).order_by(model.id).limit(6)
            rows: list[Run | Group] = list(s.scalars(stmt))
            if len(rows) == 1:
                return rows[0]
            if rows:
                shown = ", ".join(r.id for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
                raise RegistryError(f"{what} prefix {ref!r} is ambiguous: matches {shown} (give more characters)")
        raise RegistryError(f"no {what} matches {ref!r}")
