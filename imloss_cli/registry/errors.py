"""The registry's one exception, and the translation of database driver errors into it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from imloss_cli.errors import ImlossError, RunFailure

BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for the write lock (and the WAL switch) before giving up."""


class RegistryError(ImlossError):
    """Any failure of the registry: bad arguments, unknown ids, unusable database."""


class RunClaimedError(RegistryError):
    """The run is RUNNING in a live process, here or on another host: another worker holds it."""


class RunFencedError(RegistryError, RunFailure):
    """This process's attempt at a run is no longer the current one: another worker took it over.

    Raised by every write that belongs to a run (epoch rows, heartbeats, status changes,
    checkpoint promotion) when the attempt it carries is not the run's attempt any more; nothing
    was written. The holder of the current attempt is named, so the stale copy can say who has it.
    """

    def __init__(self, run_id: str, host: str, pid: int, attempt: int) -> None:
        self.run_id, self.host, self.pid, self.attempt = run_id, host, pid, attempt
        super().__init__(f"run {run_id} was taken over by {host} pid {pid} (attempt {attempt}); stopping this copy")


# What a driver's error code says happened. SQLite: the primary result code (the low byte of the
# extended code Python 3.11's sqlite3 exposes); PostgreSQL: the SQLSTATE psycopg exposes.
_NOT_WRITABLE_SQLITE = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM})
_LOCKED_SQLITE = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_NOT_WRITABLE_SQLSTATES = frozenset({"42501", "25006"})  # insufficient_privilege, read_only_sql_transaction


def sqlite_code(error: BaseException | None) -> int | None:
    """SQLite's primary result code of a driver error (None: not a SQLite error)."""
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def sqlstate(error: BaseException | None) -> str | None:
    """PostgreSQL's SQLSTATE of a driver error (None: none, e.g. the server could not be reached)."""
    return getattr(error, "sqlstate", None)


@contextmanager
def db_errors(where: str, *, opening: bool = False) -> Iterator[None]:
    """Turn database driver errors into RegistryError with a message naming the registry.

    The driver's error code decides which message: what the user can do about a file that is not a
    database, a registry that cannot be written, a lock held too long, or a server out of reach.

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
        orig = exc.orig if isinstance(exc, DBAPIError) else None
        detail = " ".join(str(orig if orig is not None else exc).split())
        code, state = sqlite_code(orig), sqlstate(orig)
        if code == sqlite3.SQLITE_NOTADB:
            message = f"file is not an imloss registry (not a SQLite database): {where}"
        elif opening and (code in _NOT_WRITABLE_SQLITE or state in _NOT_WRITABLE_SQLSTATES):
            message = f"registry {where} is not writable ({detail})"
        elif code in _LOCKED_SQLITE:
            message = (
                f"registry {where} stayed locked by another process for more than "
                f"{BUSY_TIMEOUT_MS // 1000} s ({detail}); is a process holding it paused? continue or end it, "
                "then run the command again"
            )
        elif opening and isinstance(exc, OperationalError) and code is None:
            # Server backends: refused connection, unknown database or role, bad password.
            message = f"cannot connect to registry {where} ({detail})"
        else:
            message = (
                f"registry {where}: {detail}; check its disk (free space, permissions) and run the command again "
                "(what was recorded is kept; a stopped run goes on with imloss resume RUN)"
            )
        raise RegistryError(message) from exc
