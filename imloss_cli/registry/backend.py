"""Opening a registry database: URL parsing, engines per backend, and the schema check.

SQLite (the default backend) is tuned for several training processes writing to one file at
once: WAL journal, a 30 s busy timeout, and ``BEGIN IMMEDIATE`` for write transactions, so a
writer waits for the write lock up front instead of failing with "database is locked" when it
upgrades a read lock half-way through a transaction.

PostgreSQL (``postgresql+psycopg://user@host/db``) needs none of that: row locks and MVCC let
writers of different runs proceed together. Its read transactions are REPEATABLE READ so that a
bulk read made of many queries sees one snapshot, as a SQLite read transaction does; and schema
creation is serialised by a transaction-level advisory lock, because several processes may open
an empty database at the same moment.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    URL,
    Connection,
    Engine,
    create_engine,
    event,
    func,
    insert,
    inspect,
    make_url,
    select,
    update,
)
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from .errors import BUSY_TIMEOUT_MS, RegistryError, sqlite_code
from .schema import MIGRATIONS, SCHEMA_VERSION, Base, Meta
from .values import masked_text

_IMMEDIATE = "imloss_begin_immediate"  # execution option marking the write engine
# pg_advisory_xact_lock key held while a PostgreSQL registry's schema is created or checked
# ("imloss" in ASCII); any constant works as long as every imloss uses the same one.
_SCHEMA_LOCK = 0x696D6C6F7373


def parse_url(url: str | os.PathLike[str]) -> URL:
    """A SQLAlchemy URL from a URL or a plain filesystem path (meaning ``sqlite:///PATH``).

    Raises:
        RegistryError: empty location or malformed URL.
    """
    text = os.fspath(url)
    if "://" not in text:
        if not text.strip():
            raise RegistryError("registry location is empty")
        return URL.create("sqlite", database=str(Path(text).expanduser()))
    try:
        return make_url(text)
    except (ArgumentError, ValueError):  # their messages quote the URL: say it again with any password hidden
        raise RegistryError(
            f"invalid registry URL {masked_text(text)!r}: give a SQLAlchemy URL (dialect+driver://user@host/db) "
            "or a file path"
        ) from None


def sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL; None for other backends and in-memory databases."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database.startswith("file:"):  # URI filename (sqlite:///file:...?uri=true)
        if url.query.get("mode") == "memory":
            return None
        database = database.removeprefix("file:")
    if database in ("", ":memory:"):
        return None
    return Path(database)


def check_sqlite_file(path: Path) -> None:
    """Fail early and clearly on a path that cannot hold a registry: a directory, or an uncreatable folder.

    The file itself is never opened here. POSIX advisory locks belong to the process, and closing
    any descriptor of a database file drops all of them, including those that this process's
    SQLite connections hold; another process may then checkpoint and delete the WAL under them
    ("disk I/O error"). Whether the file is a SQLite database is left to SQLite, which answers
    "file is not a database" when it is not (:func:`.errors.db_errors` says it plainly).

    Raises:
        RegistryError: the directory cannot be created, or the path is a directory.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegistryError(
            f"registry path {path} is not writable: cannot create its directory {path.parent} ({exc.strerror or exc})"
        ) from exc
    if path.is_dir():
        raise RegistryError(f"registry path {path} is a directory, not a registry file")


def open_engine(url: URL, where: str) -> Engine:
    """The pooled engine of a registry (no connection is made yet).

    Raises:
        RegistryError: unknown backend or driver not installed.
    """
    try:
        if url.get_backend_name() != "sqlite":
            return create_engine(url, pool_pre_ping=True)
        if sqlite_file(url) is None:
            # One shared connection, or every session would see its own empty in-memory database.
            engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            engine = create_engine(url)
    except (NoSuchModuleError, ImportError, ArgumentError) as exc:
        raise RegistryError(f"cannot open registry {where}: {exc}") from exc
    # Listeners live on this engine only: no process-wide event state.
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def for_reads(engine: Engine) -> Engine:
    """The engine to read with: one snapshot per transaction on every backend."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="REPEATABLE READ")
    return engine  # a SQLite read transaction is a snapshot already


def for_writes(engine: Engine) -> Engine:
    """The engine to write with: SQLite transactions take the write lock at BEGIN."""
    return engine.execution_options(**{_IMMEDIATE: True})


def schema_version(conn: Connection) -> int | None:
    """The schema version a registry database records; None: no (valid) version, or no meta table."""
    if "meta" not in inspect(conn).get_table_names():
        return None
    stored = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar()
    try:
        return int(json.loads(stored)) if stored is not None else None
    except (ValueError, TypeError):
        return None


def prepare_schema(conn: Connection, where: str) -> None:
    """Create, check or migrate the schema inside the opening write transaction.

    Raises:
        RegistryError: the database holds other tables, an invalid or newer schema version, or
            a version this code cannot migrate from.
    """
    if conn.dialect.name == "postgresql":
        # Held until commit: concurrent openers of an empty database queue here instead of
        # racing to CREATE TABLE; afterwards they find the schema and only check it.
        conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
    tables = set(inspect(conn).get_table_names())
    if "meta" not in tables:
        if tables:
            raise RegistryError(
                f"{where} is not an imloss registry: it has tables {', '.join(sorted(tables))} but no 'meta' table"
            )
        Base.metadata.create_all(conn)
        conn.execute(insert(Meta).values(key="schema_version", value=json.dumps(SCHEMA_VERSION)))
        return
    version = schema_version(conn)
    if version is None:
        stored = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar()
        raise RegistryError(
            f"{where} is not an imloss registry: no valid schema_version in its meta table (found {stored!r})"
        )
    if version > SCHEMA_VERSION:
        raise RegistryError(
            f"registry schema version {version} is newer than this imloss "
            f"understands ({SCHEMA_VERSION}); upgrade imloss"
        )
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise RegistryError(
                f"registry {where} has schema version {version} and this imloss "
                f"has no migration from it to {SCHEMA_VERSION}"
            )
        step(conn)
        version += 1
    # Always write here: a read-only registry must fail now, before any training starts.
    conn.execute(update(Meta).where(Meta.key == "schema_version").values(value=json.dumps(version)))


def _on_sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Take transaction control away from pysqlite (it would BEGIN lazily, deferred, and commit
    # before DDL); _on_sqlite_begin emits the BEGIN instead (SQLAlchemy's documented recipe).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout = 30000")  # keep in step with BUSY_TIMEOUT_MS
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    # Switching a fresh file to WAL needs an exclusive lock, and SQLite answers "database is
    # locked" at once instead of using the busy timeout when several processes create the
    # registry together; retry for as long as the busy timeout would have waited. Once the file
    # is in WAL mode (persistent), this pragma is a no-op.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if sqlite_code(exc) not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _on_sqlite_begin(conn: Connection) -> None:
    # Writers take the write lock at BEGIN, where the busy timeout applies; a deferred
    # transaction that upgrades later can fail at once with "database is locked".
    if conn.get_execution_options().get(_IMMEDIATE, False):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")
