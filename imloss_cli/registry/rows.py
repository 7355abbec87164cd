"""How the registry's rows are built and changed: the row-level steps behind :class:`~.store.Registry`'s methods.

Each function takes an open session or a row and does one thing to it; the transaction, the locks
and the fence check stay with the caller (``store.py``), so this module holds no database policy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import RegistryError
from .records import Claim, NewRun
from .schema import ID_LENGTH, KINDS, Group, Run
from .status import QUEUED, RUNNING
from .values import as_float, as_int, check_choice, dumps, new_id, without_passwords


def new_run_row(new: NewRun, *, group_id: str | None, created_at: datetime, host: str) -> Run:
    """A QUEUED run row at attempt 0 (not yet added to a session), its values checked."""
    check_choice(new.kind, KINDS, "kind")
    return Run(
        id=new_id(),
        name=str(new.name),
        status=QUEUED,
        kind=new.kind,
        group_id=group_id,
        created_at=created_at,
        started_at=None,
        ended_at=None,
        heartbeat_at=created_at,
        recipe=dumps(dict(new.recipe), "recipe"),
        config_hash=str(new.config_hash),
        fingerprint=str(new.fingerprint),
        seed=as_int(new.seed, "seed"),
        git_commit=None,
        git_dirty=None,
        code_version=str(new.code_version),
        argv=dumps(without_passwords(new.argv), "argv"),
        environment=dumps({}, "environment"),
        host=host,
        pid=os.getpid(),
        attempt=0,
        checkpoint_dir=None,
        reproduces=new.reproduces,
    )


def start_attempt(row: Run, claim: Claim, *, at: datetime, host: str, took_over: str | None) -> int:
    """Make ``row`` RUNNING in this process at its next attempt; returns that attempt (the fence token).

    Appends one entry to the run's ``attempts`` (attempt, host, pid, started_at, how, and for a LOST
    run ``took_over``: who held it) and clears the end and error of an earlier attempt. Claim fields
    left as None keep the stored value.
    """
    row.attempt += 1
    row.status, row.started_at, row.ended_at, row.heartbeat_at = RUNNING, at, None, at
    row.host, row.pid = host, os.getpid()
    row.heartbeat_s = claim.heartbeat_s
    entry: dict[str, Any] = {
        "attempt": row.attempt, "host": host, "pid": row.pid, "started_at": at.isoformat(), "how": claim.how
    }  # fmt: skip
    if took_over is not None:
        entry["took_over"] = took_over
    row.attempts = dumps([*json.loads(row.attempts or "[]"), entry], "attempts")
    row.error_type = row.error_message = row.traceback = None
    if claim.environment is not None:
        row.environment = dumps(dict(claim.environment), "environment")
    if claim.argv is not None:
        row.argv = dumps(without_passwords(claim.argv), "argv")
    if claim.git_commit is not None:
        row.git_commit = claim.git_commit
    if claim.git_dirty is not None:
        row.git_dirty = claim.git_dirty
    if claim.checkpoint_dir is not None:
        row.checkpoint_dir = os.fspath(claim.checkpoint_dir)
    return row.attempt


def epoch_rows(
    run_id: str,
    epoch: int,
    metrics: Mapping[str, float],
    layer_stats: Sequence[tuple[int, str, Mapping[str, float]]],
    attempt: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``epoch_metrics`` and ``layer_stats`` rows of one epoch, each value checked (NaN: NULL)."""
    epoch = as_int(epoch, "epoch")
    metric_rows = [
        {"run_id": run_id, "epoch": epoch, "name": str(key), "value": as_float(value, f"metric {key!r}"),
         "attempt": attempt}
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
            {"run_id": run_id, "epoch": epoch, "layer_index": index, "layer": str(layer), "stat": str(stat),
             "value": as_float(value, f"{stat!r} of layer {layer!r}"), "attempt": attempt}
            for stat, value in stats.items()
        )  # fmt: skip
    return metric_rows, stat_rows


def by_id_or_prefix(s: Session, model: type[Run | Group], ref: str, what: str) -> Any:
    """The row of ``model`` whose id is ``ref`` or uniquely starts with it.

    Raises:
        RegistryError: empty reference, no match, or a prefix that matches several rows.
    """
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
