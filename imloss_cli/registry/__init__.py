"""Run registry of imloss: runs, ablation groups and per-epoch statistics in one database.

Only the standard library, SQLAlchemy and pandas are used here, so reading a registry (reports,
listings) never imports torch.

Modules: ``store`` (the :class:`Registry` and its dataclasses), ``schema`` (tables and schema
version), ``backend`` (opening SQLite or PostgreSQL), ``reads`` (bulk reads into data frames),
``errors`` (:class:`RegistryError` and driver-error translation).
"""

from .errors import RegistryError
from .schema import KINDS, SCHEMA_VERSION, STATUSES
from .store import LOST, TERMINAL, GroupInfo, Registry, RunInfo

__all__ = [
    "KINDS",
    "LOST",
    "SCHEMA_VERSION",
    "STATUSES",
    "TERMINAL",
    "GroupInfo",
    "Registry",
    "RegistryError",
    "RunInfo",
]
