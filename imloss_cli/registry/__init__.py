"""The run registry: runs, ablation groups and per-epoch statistics in one SQLAlchemy database.

Only the standard library, SQLAlchemy and pandas are used here, so reading a registry (reports,
listings) never imports torch; and only this package imports SQLAlchemy.

Modules:
    store    :class:`Registry`, the public face: one short transaction per method, made of
    session  opening the database, the transaction helpers, the displayed status and the fence check,
    writes   groups, queued runs, claims (each returns its attempt: the fence token) and fenced writes,
    queries  runs and groups as snapshots, epochs and layers as data frames.
    records  :class:`RunInfo` and :class:`GroupInfo`, the snapshots it returns (run columns
             are defined there once).
    status   every status name (runs: QUEUED ... KILLED, LOST; trials: SKIPPED, PLANNED) and the sets built from them.
    schema   the tables and the schema version.
    backend  opening SQLite (WAL, BEGIN IMMEDIATE) or PostgreSQL, creating or checking the schema.
    reads    bulk reads of epoch metrics and layer statistics into data frames.
    values   ids, timestamps and the checks of values on their way in.
    errors   :class:`RegistryError` and the translation of driver errors into it.
"""

from .errors import RegistryError, RunClaimedError, RunFencedError
from .records import GroupInfo, RunInfo
from .schema import KINDS, SCHEMA_VERSION
from .status import (
    FAILED,
    FINISHED,
    KILLED,
    LOST,
    PLANNED,
    QUEUED,
    RESUMABLE,
    RUNNING,
    SKIPPED,
    STATUSES,
    TERMINAL,
)
from .store import LOST_AFTER_BEATS, Registry

__all__ = [
    "FAILED",
    "FINISHED",
    "KILLED",
    "KINDS",
    "LOST",
    "LOST_AFTER_BEATS",
    "PLANNED",
    "QUEUED",
    "RESUMABLE",
    "RUNNING",
    "SCHEMA_VERSION",
    "SKIPPED",
    "STATUSES",
    "TERMINAL",
    "GroupInfo",
    "Registry",
    "RegistryError",
    "RunClaimedError",
    "RunFencedError",
    "RunInfo",
]
