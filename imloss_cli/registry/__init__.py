"""The run registry: runs, ablation groups and per-epoch statistics in one SQLAlchemy database.

Only the standard library, SQLAlchemy and pandas are used here, so reading a registry (reports,
listings) never imports torch; and only this package imports SQLAlchemy.

Modules:
    store    :class:`Registry`, the whole public surface: every method one short transaction
             (opening, groups, a run's life from queue to finish, the reads).
    records  what goes in (:class:`NewRun`, :class:`Claim`) and comes out (:class:`RunInfo`,
             :class:`GroupInfo`; run columns are defined there once).
    rows     the row-level steps behind the methods (a new run row, a claim, an epoch's rows).
    status   every status name (runs: QUEUED ... KILLED, PRUNED, LOST; trials: SKIPPED, PLANNED, DIVERGED, INVALID) and the sets built from them.
    schema   the tables and the schema version.
    backend  opening SQLite (WAL, BEGIN IMMEDIATE) or PostgreSQL, creating or checking the schema.
    reads    bulk reads of epoch metrics and layer statistics into data frames.
    values   ids, timestamps and the checks of values on their way in.
    errors   :class:`RegistryError` and its kin, and the translation of driver errors into them.
"""

from .errors import RegistryError, RunClaimedError, RunFencedError
from .records import Claim, GroupInfo, NewRun, RunInfo
from .schema import KINDS, SCHEMA_VERSION
from .status import (
    DIVERGED,
    FAILED,
    FINISHED,
    INVALID,
    KILLED,
    LOST,
    PLANNED,
    PRUNED,
    QUEUED,
    RESUMABLE,
    RUNNING,
    SKIPPED,
    STATUSES,
    TERMINAL,
)
from .store import LOST_AFTER_BEATS, Registry

__all__ = [
    "DIVERGED",
    "FAILED",
    "FINISHED",
    "INVALID",
    "KILLED",
    "KINDS",
    "LOST",
    "LOST_AFTER_BEATS",
    "PLANNED",
    "PRUNED",
    "QUEUED",
    "RESUMABLE",
    "RUNNING",
    "SCHEMA_VERSION",
    "SKIPPED",
    "STATUSES",
    "TERMINAL",
    "Claim",
    "GroupInfo",
    "NewRun",
    "Registry",
    "RegistryError",
    "RunClaimedError",
    "RunFencedError",
    "RunInfo",
]
