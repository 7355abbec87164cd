"""Bulk reads of the per-epoch tables into pandas data frames, fast enough for 10^6 rows.

Both readers run one query per run (see :func:`per_run_frame`); the statements are built here
with the run id as the bind parameter ``RUN_PARAM`` and any name filters as IN lists.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np  # a pandas dependency, not an extra one
import pandas as pd
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Select,
    String,
    bindparam,
    func,
    literal,
    select,
)
from sqlalchemy.orm import aliased

from .errors import RegistryError
from .schema import EpochMetric, LayerStat

RUN_PARAM = "run_id"  # bind parameter of the per-run bulk queries
METRIC_COLUMNS = ["run_id", "epoch", "name", "value"]
LAYER_COLUMNS = ["run_id", "epoch", "layer_index", "layer", "stat", "value"]
_INT_COLUMNS = frozenset({"epoch", "layer_index"})
# Drivers whose rows need no SQLAlchemy result processing for these columns (ints, floats and
# strings come back as Python ints, floats and strs).
_PLAIN_DRIVERS = frozenset({("sqlite", "pysqlite"), ("postgresql", "psycopg")})


def metrics_statement(names: Sequence[str] | None) -> Select[Any]:
    """One run's epoch metrics (optionally only ``names``), in (epoch, name) order."""
    t = EpochMetric.__table__.c
    stmt = select(t.epoch, t.name, t.value).where(t.run_id == bindparam(RUN_PARAM)).order_by(t.epoch, t.name)
    if names is not None:
        stmt = stmt.where(_one_of(t.name, names))
    return stmt


def layers_statement(*, epoch: int | None, last_epoch_only: bool, stats: Sequence[str] | None) -> Select[Any]:
    """One run's layer statistics, in (epoch, layer_index, stat) order.

    Args:
        epoch: only this epoch.
        last_epoch_only: only the run's highest logged epoch.
        stats: only these statistics.
    """
    t = LayerStat.__table__.c
    run: BindParameter[str] = bindparam(RUN_PARAM, type_=String())
    stmt = (
        select(t.epoch, t.layer_index, t.layer, t.stat, t.value)
        .where(t.run_id == run)
        .order_by(t.epoch, t.layer_index, t.stat)
    )
    if last_epoch_only:
        # max(epoch) of one run is a single primary-key seek (SQLite's min/max optimisation)
        # and its rows one key range: the run's older epochs are never read.
        latest = aliased(LayerStat)
        last = select(func.max(latest.epoch)).where(latest.run_id == run).scalar_subquery()
        stmt = stmt.where(t.epoch == last)
    elif epoch is not None:
        stmt = stmt.where(t.epoch == epoch)
    if stats is not None:
        stmt = stmt.where(_one_of(t.stat, stats))
    return stmt


def _one_of(column: ColumnElement[str], values: Sequence[str]) -> ColumnElement[bool]:
    """``column IN (?, ?, ...)`` with one ordinary bind parameter per value.

    Not SQLAlchemy's default "expanding" IN parameter: that one is only rendered at execution
    time, and the driver-cursor path of :func:`rows_per_run` executes the compiled SQL itself.
    """
    return column.in_([literal(value, String()) for value in values])


def name_filter(values: Sequence[str] | None, what: str) -> list[str] | None:
    """``values`` as a duplicate-free list of strings, or None for "no filter".

    Raises:
        RegistryError: a single string was given (it would be read as its characters).
    """
    if values is None:
        return None
    if isinstance(values, str):
        raise RegistryError(f"{what} must be a sequence of names, not the string {values!r}")
    return list(dict.fromkeys(str(value) for value in values))


def empty_frame(columns: list[str]) -> pd.DataFrame:
    """A frame with no rows and the dtypes :func:`per_run_frame` gives."""
    return per_run_frame_from(iter(()), columns)


def per_run_frame(conn: Connection, stmt: Select[Any], run_ids: Sequence[str], columns: list[str]) -> pd.DataFrame:
    """Run ``stmt`` once per run id (bound as ``RUN_PARAM``) and stack the results.

    One query per run keeps every query a primary-key range scan, needs no IN list (so no
    host-parameter limit), and lets the run_id column be built by repetition instead of
    decoding the same string for every row. Each run's rows go straight into a numpy record
    array (NULL becomes NaN there): transposing a million row tuples in Python would cost more
    than the database takes to read them.

    Returns:
        ``columns`` (the first is run_id), runs in id order, each run's rows in query order.
    """
    return per_run_frame_from(rows_per_run(conn, stmt, sorted(set(run_ids))), columns)


def per_run_frame_from(runs: Iterator[tuple[str, list[tuple[Any, ...]]]], columns: list[str]) -> pd.DataFrame:
    """Stack ``(run_id, rows)`` pairs, rows holding ``columns[1:]``, into one frame."""
    record = np.dtype([(name, _dtype(name)) for name in columns[1:]])
    blocks: list[np.ndarray[Any, Any]] = []
    owners: list[str] = []
    counts: list[int] = []
    for run_id, rows in runs:
        if rows:
            blocks.append(np.array(rows, dtype=record))
            owners.append(run_id)
            counts.append(len(rows))
    data = np.concatenate(blocks) if blocks else np.empty(0, dtype=record)
    frame = {"run_id": np.repeat(np.array(owners, dtype=object), counts)}
    frame.update({name: data[name] for name in columns[1:]})
    return pd.DataFrame(frame)


def rows_per_run(
    conn: Connection, stmt: Select[Any], run_ids: list[str]
) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """Yield ``(run_id, rows)`` with ``rows`` as plain tuples.

    With pysqlite and psycopg the SQLAlchemy-compiled statement runs on the driver cursor of
    the session's own connection (so inside its transaction): wrapping each of a million rows
    in a Row would cost more than the database needs to read them, and none of these column
    types has a result processor. Other drivers take the portable path.
    """
    if not driver_rows_are_plain(conn):
        for run_id in run_ids:
            yield run_id, [tuple(row) for row in conn.execute(stmt, {RUN_PARAM: run_id})]
        return
    compiled = stmt.compile(conn)
    sql, fixed = str(compiled), dict(compiled.params)
    positions = compiled.positiontup if compiled.positional else None
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        for run_id in run_ids:
            fixed[RUN_PARAM] = run_id
            params: Any = fixed if positions is None else [fixed[name] for name in positions]
            yield run_id, cursor.execute(sql, params).fetchall()
    finally:
        cursor.close()


def driver_rows_are_plain(conn: Connection) -> bool:
    """Whether driver rows can be used as they come (no result processing needed)."""
    return (conn.dialect.name, conn.dialect.driver) in _PLAIN_DRIVERS


def _dtype(column: str) -> str:
    if column in _INT_COLUMNS:
        return "i8"
    return "f8" if column == "value" else "O"
