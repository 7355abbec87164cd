"""Everything the registry writes: groups, queued runs, claims, and the fenced writes of a claimed run.

A run is claimed (first start, resume, takeover) by :meth:`RegistryWrites.claim_run`, which
increments the run's ``attempt`` and returns it: the fence token. Every later write that belongs
to the run (epoch rows, heartbeats, checkpoint promotion, the final status) carries that token
and is made only if it is still the run's current attempt, checked in the same transaction that
writes. A worker that was paused past its heartbeat, and whose run another worker took over,
therefore writes nothing more into it: it gets :class:`RunFencedError` instead.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .errors import RegistryError, RunClaimedError
from .schema import KINDS, EpochMetric, Group, LayerStat, Run
from .session import RegistryBase
from .status import LOST, QUEUED, RESUMABLE, RUNNING, TERMINAL
from .values import as_float, as_int, check_choice, dumps, new_id, now


class RegistryWrites(RegistryBase):
    """The writing half of :class:`~imloss_cli.registry.Registry` (one short transaction per method)."""

    # ----------------------------------------------------------------------------- groups

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

    # ----------------------------------------------------------------------------- runs

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
        reproduces: str | None = None,
    ) -> str:
        """Record a new run: QUEUED (attempt 0, to be claimed) or RUNNING in this process (attempt 1).

        Args:
            name: human-readable name.
            recipe: the fully resolved recipe (JSON-serialisable).
            config_hash: hash of the recipe.
            fingerprint: hash identifying "the same experiment" (for resuming/skipping).
            seed: random seed.
            code_version: version of imloss that ran it.
            kind: "train" or "ablate".
            group_id: exact id of the ablation group it belongs to.
            status: "RUNNING" (started now by this process, attempt 1) or "QUEUED".
            argv: command line.
            environment: python/torch/cuda versions, host, device, ...
            git_commit: commit of the code, if known.
            git_dirty: whether the work tree had changes, if known.
            checkpoint_dir: where checkpoints go, if anywhere.
            reproduces: exact id of the run this one trains again (``imloss reproduce``).

        Returns:
            The new run id (12 hex characters).

        Raises:
            RegistryError: invalid kind/status/seed, unknown group or reproduced run, non-JSON
                values, or a failed write.
        """
        row = self._new_run_row(
            name=name, recipe=recipe, config_hash=config_hash, fingerprint=fingerprint, seed=seed,
            code_version=code_version, kind=kind, group_id=group_id, status=status, argv=argv,
            environment=environment, git_commit=git_commit, git_dirty=git_dirty, checkpoint_dir=checkpoint_dir,
            reproduces=reproduces,
        )  # fmt: skip
        with self._write() as s:
            if group_id is not None and s.get(Group, group_id) is None:
                raise RegistryError(f"no group with id {group_id!r}")
            if reproduces is not None and s.get(Run, reproduces) is None:
                raise RegistryError(f"no run with id {reproduces!r} to reproduce")
            s.add(row)
            return row.id

    def claim_run(
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
    ) -> int:
        """Claim a QUEUED, FAILED, KILLED or LOST run for this process and return the new attempt.

        Increments ``attempt`` (0 for a run never started), sets it RUNNING with started_at,
        heartbeat, host and pid, clears the end time and error, and appends to ``attempts`` one
        entry (attempt, host, pid, started_at, ``how``, and for a LOST run ``took_over``: the host and
        pid that held it). Arguments left as None keep the stored
        value. The check and the update are one transaction holding the row's lock: of several
        workers claiming one run, one wins and the others get :class:`RunClaimedError`; a worker
        that held an earlier attempt is fenced off from then on.

        Args:
            heartbeat_s: how often this process will refresh the heartbeat; the run is LOST after
                ``LOST_AFTER_BEATS`` such intervals without one.
            how: how this attempt starts ("fresh", "resumed from ...", "restarted: ...").

        Returns:
            The attempt number: the fence token that every later write of this attempt carries.

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
                    f"{', '.join(RESUMABLE[:-1])} or {RESUMABLE[-1]} runs can be started or resumed"
                )
            # A LOST run's holder may only be paused: from now on its writes are fenced off.
            took_over = f"{row.host} (pid {row.pid})" if shown == LOST else None
            row.attempt += 1
            row.status, row.started_at, row.ended_at, row.heartbeat_at = RUNNING, at, None, at
            row.host, row.pid = self._host, os.getpid()
            row.heartbeat_s = heartbeat_s
            entry = {"attempt": row.attempt, "host": row.host, "pid": row.pid, "started_at": at.isoformat(), "how": how}
            if took_over is not None:
                entry["took_over"] = took_over
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
            return row.attempt

    def log_epoch(
        self,
        run_id: str,
        epoch: int,
        metrics: Mapping[str, float],
        layer_stats: Sequence[tuple[int, str, Mapping[str, float]]],
        *,
        attempt: int,
    ) -> None:
        """Store one epoch's metrics and per-layer statistics, replacing any earlier log of it.

        Written only while ``attempt`` is the run's current attempt and the run is RUNNING; each
        row records that attempt. Also refreshes the heartbeat. NaN values are stored as NULL and
        read back as NaN.

        Args:
            run_id: exact run id.
            epoch: epoch number.
            metrics: ``{name: value}``.
            layer_stats: ``(layer_index, layer_name, {stat: value})`` per spiking layer.
            attempt: the fence token of :meth:`claim_run`.

        Raises:
            RunFencedError: another claim made a newer attempt current; nothing was written.
            RegistryError: unknown run, a run not RUNNING, a non-numeric value, a repeated layer
                index, or a failed write.
        """
        epoch = as_int(epoch, "epoch")
        metric_rows = [
            {
                "run_id": run_id, "epoch": epoch, "name": str(key), "value": as_float(value, f"metric {key!r}"),
                "attempt": attempt,
            }
            for key, value in metrics.items()
        ]  # fmt: skip
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
                    "attempt": attempt,
                }
                for stat, value in stats.items()
            )
        with self._write() as s:
            self._fenced_row(s, run_id, attempt).heartbeat_at = now()
            # Delete-then-insert so a re-logged epoch (e.g. after resume) replaces the old rows,
            # including metrics or layers the new log no longer has.
            for table in (EpochMetric, LayerStat):
                s.execute(delete(table).where(table.run_id == run_id, table.epoch == epoch))
            if metric_rows:
                s.execute(insert(EpochMetric), metric_rows)
            if stat_rows:
                s.execute(insert(LayerStat), stat_rows)

    def heartbeat(self, run_id: str, *, attempt: int) -> None:
        """Refresh the heartbeat of a run while ``attempt`` is its current attempt.

        Raises:
            RunFencedError: another claim made a newer attempt current.
            RegistryError: unknown run, a run not RUNNING, or a failed write.
        """
        with self._write() as s:
            self._fenced_row(s, run_id, attempt).heartbeat_at = now()

    @contextlib.contextmanager
    def fenced(self, run_id: str, *, attempt: int) -> Iterator[None]:
        """Run the body while ``attempt`` is the run's current attempt, holding the run's lock.

        For what lives outside the database and must follow the same rule, such as promoting a
        checkpoint to ``last.pt``: no claim can slip between the check and the body, because a
        claim needs the lock held here (SQLite: the write lock; PostgreSQL: the row lock).

        Raises:
            RunFencedError: another claim made a newer attempt current; the body did not run.
            RegistryError: unknown run, or a run not RUNNING.
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
        """End a QUEUED or RUNNING run with a terminal status, while ``attempt`` is its current attempt.

        Args:
            run_id: exact run id.
            status: one of FINISHED, FAILED, KILLED.
            attempt: the fence token of :meth:`claim_run` (0: a queued run never started).
            error_type: exception class name, for FAILED/KILLED runs.
            error_message: exception message.
            traceback: formatted traceback.

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

    def set_checkpoint_dir(self, run_id: str, path: str | os.PathLike[str]) -> None:
        """Record where the run's checkpoints are.

        Raises:
            RegistryError: unknown run id or a failed write.
        """
        with self._write() as s:
            self._update_run(s, run_id, checkpoint_dir=os.fspath(path))

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
        reproduces: str | None = None,
    ) -> Run:
        """A new run row owned by this process, its values checked (not yet added to a session)."""
        check_choice(kind, KINDS, "kind")
        check_choice(status, (QUEUED, RUNNING), "initial status")
        started = created_at or now()
        return Run(
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
            attempt=1 if status == RUNNING else 0,
            checkpoint_dir=None if checkpoint_dir is None else os.fspath(checkpoint_dir),
            reproduces=reproduces,
        )

    def _update_run(self, s: Session, run_id: str, **values: Any) -> None:
        """Update columns of one run, failing if the id is unknown."""
        result = s.execute(
            update(Run).where(Run.id == run_id).values(**values).execution_options(synchronize_session=False)
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise RegistryError(f"no run with id {run_id!r}")
