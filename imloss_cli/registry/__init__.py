"""Run registry of imloss: runs, ablation groups and per-epoch statistics in one database.

Only the standard library, SQLAlchemy and pandas are used here, so reading a registry (reports,
listings) never imports torch.

Modules: ``store`` (the :class:`Registry`), ``records`` (its dataclasses :class:`RunInfo` and
:class:`GroupInfo`, and the value helpers), ``schema`` (tables and schema version), ``backend``
(opening SQLite or PostgreSQL), ``reads`` (bulk reads into data frames), ``errors``
(:class:`RegistryError` and driver-error translation).
"""

from .errors import RegistryError
from .records import LOST, TERMINAL, GroupInfo, RunInfo
from .schema import KINDS, SCHEMA_VERSION, STATUSES
from .store import Registry

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
