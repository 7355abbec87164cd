"""Database schema of the imloss run registry (SQLAlchemy 2 declarative models).

Conventions:
    * ids are the first 12 hex characters of a uuid4;
    * timestamps are timezone-aware UTC ``datetime`` objects in Python and float seconds since
      the Unix epoch in the database (see :class:`UTCTimestamp`);
    * recipes, axes, argv and environment are JSON text, encoded and decoded by the store;
    * metric values are floats; NaN is stored as NULL (SQLite cannot hold NaN) and comes back
      as NaN in data frames.

The bulk tables ``epoch_metrics`` and ``layer_stats`` are keyed on ``(run_id, epoch, ...)`` and
are SQLite ``WITHOUT ROWID`` tables: rows of one run and epoch sit next to each other in the
primary-key b-tree, so "all rows of these runs" and "the last epoch of each run" are index range
scans rather than table scans. On PostgreSQL the string key columns use the "C" collation:
byte order, as SQLite's default BINARY collation, so results sort the same on both backends,
``ORDER BY`` follows the primary-key index, and id-prefix ``LIKE`` can use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Connection,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .errors import RegistryError
from .status import STATUSES

SCHEMA_VERSION = 4
"""Version of the schema defined here; stored in ``meta`` under the key ``schema_version``."""

KINDS: tuple[str, ...] = ("train", "ablate", "tune")
"""What made a run: ``imloss train`` (and ``reproduce``), an ablation's trial, a study's trial (``imloss tune``)."""

Migration = Callable[[Connection], None]
"""Upgrades a registry by one schema version, inside the caller's write transaction."""


def _v1_to_v2(conn: Connection) -> None:
    """Version 2: groups are found by a unique key (workers claim a group by inserting it), and runs
    record their heartbeat interval and the history of their attempts."""
    conn.exec_driver_sql("ALTER TABLE groups ADD COLUMN key VARCHAR(64)")
    conn.exec_driver_sql("CREATE UNIQUE INDEX ux_groups_key ON groups (key)")
    conn.exec_driver_sql("ALTER TABLE runs ADD COLUMN heartbeat_s FLOAT")
    conn.exec_driver_sql("ALTER TABLE runs ADD COLUMN attempts TEXT NOT NULL DEFAULT '[]'")


def _v2_to_v3(conn: Connection) -> None:
    """Version 3: fencing. Each epoch's rows carry the attempt that wrote them (NULL: written before
    version 3), and a run that was never started is at attempt 0, so every claim increments it. A run
    made by ``imloss reproduce`` names the run it reproduces."""
    conn.exec_driver_sql("ALTER TABLE epoch_metrics ADD COLUMN attempt INTEGER")
    conn.exec_driver_sql("ALTER TABLE layer_stats ADD COLUMN attempt INTEGER")
    conn.exec_driver_sql("UPDATE runs SET attempt = 0 WHERE started_at IS NULL")
    conn.exec_driver_sql("ALTER TABLE runs ADD COLUMN reproduces VARCHAR(12)")


def _v3_to_v4(conn: Connection) -> None:
    """Version 4: ``imloss tune``. A run may be of kind "tune" (a study's trial) and end as PRUNED.

    Both names join the check constraints on ``runs.kind`` and ``runs.status``. PostgreSQL replaces
    the two constraints. SQLite cannot alter a constraint, and rebuilding ``runs`` would mean copying
    it and dropping the original under the epoch tables' cascading foreign keys; its documented way
    to change a CHECK constraint (https://www.sqlite.org/lang_altertable.html#otheralter) edits the
    table's CREATE statement in ``sqlite_master`` inside the transaction and bumps the schema cookie
    so every connection re-reads it. No row is touched, and as the lists only grow, every stored row
    satisfies the new constraints.
    """
    lists = {"status": _sql_list(STATUSES), "kind": _sql_list(KINDS)}
    if conn.dialect.name == "postgresql":
        for column, names in lists.items():
            name = f"ck_runs_{column}"
            conn.exec_driver_sql(
                f"ALTER TABLE runs DROP CONSTRAINT IF EXISTS {name}, ADD CONSTRAINT {name} CHECK ({column} IN ({names}))"
            )
        return
    sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'runs'").scalar_one()
    for column, names in lists.items():
        sql, found = re.subn(rf"CHECK \({column} IN \([^)]*\)\)", f"CHECK ({column} IN ({names}))", sql)
        if found != 1:
            raise RegistryError(
                f"cannot upgrade the registry to schema 4: runs has {found} check constraints on {column}"
            )
    cookie = conn.exec_driver_sql("PRAGMA schema_version").scalar_one()
    conn.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        conn.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'runs'", (sql,))
        conn.exec_driver_sql(f"PRAGMA schema_version = {int(cookie) + 1}")
    finally:
        conn.exec_driver_sql("PRAGMA writable_schema = OFF")


MIGRATIONS: Mapping[int, Migration] = MappingProxyType({1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4})
"""``{from_version: step}``: ``step`` upgrades a registry from ``from_version`` to
``from_version + 1``."""

ID_LENGTH = 12


def _key(length: int) -> String:
    """A string column compared byte by byte on every backend (see the module docstring)."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


def _sql_list(names: tuple[str, ...]) -> str:
    """Constant identifiers as a SQL list for a check constraint ('A', 'B'): names, never input."""
    return ", ".join(f"'{name}'" for name in names)


class UTCTimestamp(TypeDecorator[datetime]):
    """Timezone-aware UTC datetime stored as float seconds since the Unix epoch.

    Floats compare and sort correctly on every backend, whereas SQLite's string dates silently
    drop the timezone.
    """

    impl = Float
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> float | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # A naive datetime would be read as local time by .timestamp(): refuse the ambiguity.
            raise ValueError(f"registry timestamps must be timezone-aware, got {value!r}")
        return value.timestamp()

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return datetime.fromtimestamp(float(value), tz=UTC)


class Base(DeclarativeBase):
    """Declarative base of all registry tables."""


class Meta(Base):
    """Key/value facts about the registry itself (values are JSON text), e.g. schema_version."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Group(Base):
    """An ablation group: one base recipe swept over ``axes``."""

    __tablename__ = "groups"
    __table_args__ = (Index("ix_groups_created_at", "created_at"), Index("ux_groups_key", "key", unique=True))

    id: Mapped[str] = mapped_column(_key(ID_LENGTH), primary_key=True)
    # What identifies the same ablation (base configuration, axes, seeds): unique, so two workers
    # that start together insert one group and the second finds the first's.
    key: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCTimestamp())
    base_recipe: Mapped[str] = mapped_column(Text)
    axes: Mapped[str] = mapped_column(Text)
    argv: Mapped[str] = mapped_column(Text)


class Run(Base):
    """One training run (standalone or a member of an ablation group)."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(f"status IN ({_sql_list(STATUSES)})", name="ck_runs_status"),
        CheckConstraint(f"kind IN ({_sql_list(KINDS)})", name="ck_runs_kind"),
        Index("ix_runs_created_at", "created_at"),
        Index("ix_runs_status", "status"),
        Index("ix_runs_group_id", "group_id"),
        Index("ix_runs_kind_created_at", "kind", "created_at"),
        Index("ix_runs_config_hash", "config_hash"),
        Index("ix_runs_fingerprint", "fingerprint"),
    )

    id: Mapped[str] = mapped_column(_key(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    group_id: Mapped[str | None] = mapped_column(_key(ID_LENGTH), ForeignKey("groups.id"))
    created_at: Mapped[datetime] = mapped_column(UTCTimestamp())
    started_at: Mapped[datetime | None] = mapped_column(UTCTimestamp())
    ended_at: Mapped[datetime | None] = mapped_column(UTCTimestamp())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCTimestamp())
    recipe: Mapped[str] = mapped_column(Text)
    config_hash: Mapped[str] = mapped_column(String(128))
    fingerprint: Mapped[str] = mapped_column(String(128))
    seed: Mapped[int] = mapped_column(Integer)
    git_commit: Mapped[str | None] = mapped_column(String(64))
    git_dirty: Mapped[bool | None] = mapped_column(Boolean)
    code_version: Mapped[str] = mapped_column(String(128))
    argv: Mapped[str] = mapped_column(Text)
    environment: Mapped[str] = mapped_column(Text)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    # The fence token: every claim (first start, resume, takeover) increments it; 0 = never started.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    error_type: Mapped[str | None] = mapped_column(String(255))
    error_message: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    checkpoint_dir: Mapped[str | None] = mapped_column(Text)
    heartbeat_s: Mapped[float | None] = mapped_column(Float)  # how often the trainer beats; None: unknown
    attempts: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")  # JSON list, one per start
    reproduces: Mapped[str | None] = mapped_column(_key(ID_LENGTH))  # the run this one re-trained (imloss reproduce)


class EpochMetric(Base):
    """One scalar metric of one run at the end of one epoch (long format)."""

    __tablename__ = "epoch_metrics"
    __table_args__ = {"sqlite_with_rowid": False}

    run_id: Mapped[str] = mapped_column(_key(ID_LENGTH), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(_key(255), primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)
    attempt: Mapped[int | None] = mapped_column(Integer)  # the run's attempt that wrote it (None: before v3)


class LayerStat(Base):
    """One statistic of one spiking layer of one run at the end of one epoch."""

    __tablename__ = "layer_stats"
    __table_args__ = {"sqlite_with_rowid": False}

    run_id: Mapped[str] = mapped_column(_key(ID_LENGTH), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    layer_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    stat: Mapped[str] = mapped_column(_key(64), primary_key=True)
    layer: Mapped[str] = mapped_column(String(255))
    value: Mapped[float | None] = mapped_column(Float)
    attempt: Mapped[int | None] = mapped_column(Integer)  # the run's attempt that wrote it (None: before v3)
