"""The run registry: where training runs, ablation groups and their per-epoch statistics live.

The boundary is MLflow-like: every public method of :class:`Registry` is one short database
transaction and returns plain frozen dataclasses or pandas data frames, never ORM rows, so
callers cannot hold a session open or lazy-load by accident. The registry is opened once, at the
edge of a program (``with Registry(url) as registry:``), and passed on as a handle.

Where each part lives: opening the database and the run-row rules (:mod:`.session`), the writes
with their fence checks (:mod:`.writes`), the reads (:mod:`.queries`), the bulk reads into data
frames (:mod:`.reads`), the snapshots (:mod:`.records`) and the checks of values going in
(:mod:`.values`).
"""

from __future__ import annotations

from .queries import RegistryQueries
from .session import LOST_AFTER_BEATS
from .writes import RegistryWrites

__all__ = ["LOST_AFTER_BEATS", "Registry"]


class Registry(RegistryWrites, RegistryQueries):
    """Store of runs, ablation groups and per-epoch metrics behind one SQLAlchemy URL.

    ``Registry(url)`` opens (creating or upgrading) the database and proves it writable;
    ``Registry(url, create=False, write=False)`` is what a reading command opens: the file must
    exist, and nothing is written unless the schema must be upgraded. See
    :class:`~imloss_cli.registry.session.RegistryBase` for the arguments.
    """

    def __enter__(self) -> Registry:
        return self
