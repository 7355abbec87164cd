"""Everything the registry reads: runs and groups as snapshots, epochs and layers as data frames.

Reads never write and never wait for writers (SQLite WAL readers and PostgreSQL MVCC snapshots), so
any number of ``imloss runs``, ``report`` or ``sqlite3`` readers may look while runs train.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import reads
from .errors import RegistryError
from .records import RUN_FRAME_COLUMNS, GroupInfo, RunInfo, group_info
from .schema import ID_LENGTH, KINDS, EpochMetric, Group, Run
from .session import RegistryBase
from .status import LOST, RUNNING, STATUSES
from .values import as_int, check_choice, now


class RegistryQueries(RegistryBase):
    """The reading half of :class:`~imloss_cli.registry.Registry` (one read transaction per method)."""

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
