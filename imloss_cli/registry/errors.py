"""The registry's one exception, and the translation of database driver errors into it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for the write lock (and the WAL switch) before giving up."""


class RegistryError(Exception):
    """Any failure of the registry: bad arguments, unknown ids, unusable database."""


class RunClaimedError(RegistryError):
    """The run is RUNNING in a live process, here or on another host: another worker holds it."""


class RunFencedError(RegistryError):
    """This process's attempt at a run is no longer the current one: another worker took it over.

    Raised by every write that belongs to a run (epoch rows, heartbeats, status changes,
    checkpoint promotion) when the attempt it carries is not the run's attempt any more; nothing
    was written. The holder of the current attempt is named, so the stale copy can say who has it.
    """

    def __init__(self, run_id: str, host: str, pid: int, attempt: int) -> None:
        self.run_id, self.host, self.pid, self.attempt = run_id, host, pid, attempt
        super().__init__(f"run {run_id} was taken over by {host} pid {pid} (attempt {attempt}); stopping this copy")


@contextmanager
def db_errors(where: str, *, opening: bool = False) -> Iterator[None]:
    """Turn database driver errors into RegistryError with a message naming the registry.

    Args:
        where: the registry as users know it (file path, or URL without password).
        opening: the registry is being opened, so permission problems mean "not writable" and a
            failed connection means "cannot connect".
    """
    try:
        yield
    except RegistryError:
        raise
    except SQLAlchemyError as exc:
        detail = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
        detail = detail.strip()
        low = detail.lower()
        if "file is not a database" in low:
            message = f"file is not an imloss registry (not a SQLite database): {where}"
        elif opening and any(s in low for s in ("readonly", "read-only", "unable to open", "permission denied")):
            message = f"registry {where} is not writable ({detail})"
        elif "database is locked" in low:
            message = (
                f"registry {where} stayed locked by another process for more than "
                f"{BUSY_TIMEOUT_MS // 1000} s ({detail}); is a process holding it paused? continue or end it, "
                "then run the command again"
            )
        elif opening and isinstance(exc, OperationalError) and not isinstance(exc.orig, sqlite3.Error):
            # Server backends: refused connection, unknown database or role, bad password.
            message = f"cannot connect to registry {where} ({' '.join(detail.split())})"
        else:
            message = (
                f"registry {where}: {detail}; check its disk (free space, permissions) and run the command again "
                "(what was recorded is kept; a stopped run goes on with imloss resume RUN)"
            )
        raise RegistryError(message) from exc
