"""Run registry of imloss: runs, ablation groups and per-epoch statistics in one database.

Only the standard library, SQLAlchemy and pandas are used here, so reading a registry (reports,
listings) never imports torch.
"""

from .schema import KINDS, SCHEMA_VERSION, STATUSES
from .store import LOST, TERMINAL, GroupInfo, Registry, RegistryError, RunInfo

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
