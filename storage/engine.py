"""Database URLs and the one engine factory every part of ftprune uses.

Guarantees:

- Only SQLite (``sqlite:///FILE``) and PostgreSQL (``postgresql+psycopg://...``; a bare
  ``postgresql://`` means the same driver) are accepted; anything else is a
  :class:`StorageError` before a connection is attempted.
- SQLite connections run in WAL mode with a busy timeout and foreign keys on, set on every
  connection. Write transactions start with ``BEGIN IMMEDIATE``, so concurrent writers queue
  instead of failing; connections from :func:`read_only` start a deferred ``BEGIN`` and never
  block writers.
- An engine from :func:`make_reader_engine` cannot create, convert or write the database: a
  SQLite file is opened without the create flag and with ``query_only``, read-only
  (``mode=ro``) whenever a ``-wal`` file exists, its journal mode untouched; PostgreSQL
  sessions run with ``default_transaction_read_only``.
- :func:`check_writable` refuses, before SQLite creates or changes anything, a SQLite
  database whose file or directory cannot take a write now.
- Passwords never appear in messages: :func:`redact` hides them in URLs and
  :func:`database_errors` turns driver errors into one-line :class:`StorageError` messages
  with the password removed.
- PostgreSQL engines check a pooled connection before handing it out (``pool_pre_ping``),
  so a server restarted between two transactions costs nothing. :func:`is_disconnect` tells
  a lost or refused connection (worth retrying) from every other error, and
  :class:`Backoff` is the bounded exponential schedule the store retries on.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

DEFAULT_URL = "sqlite:///ftprune.db"
READ_ONLY = "ftprune_read_only"
POSTGRES_DRIVER = "postgresql+psycopg"
RETRY_ENV = "FTPRUNE_DB_RETRY_S"
DEFAULT_RETRY_S = 120.0
# SQLSTATEs of a server that is shutting down or starting up (class 08 is "connection").
_SERVER_GONE = frozenset({"57P01", "57P02", "57P03"})


class StorageError(ValueError):
    """A bad database URL, an unreachable database or a missing row; the message is one line."""


class DatabaseUnavailable(StorageError):
    """The database stayed unreachable for the whole retry budget (nothing was written)."""


def default_url() -> str:
    """``$FTPRUNE_DB`` if set, else ``sqlite:///ftprune.db``."""
    return os.environ.get("FTPRUNE_DB", DEFAULT_URL)


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (in text that does not parse as a URL,
    whatever stands between ``://user:`` and ``@``)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _origin(url: str) -> str:
    """``"$FTPRUNE_DB: "`` when ``url`` is the environment's (a command run without --db
    says where the URL it refuses came from), else nothing."""
    return "$FTPRUNE_DB: " if url == os.environ.get("FTPRUNE_DB") else ""


def _parse(url: str) -> URL:
    """The parsed URL, with ``postgresql://`` resolved to the psycopg driver."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # a malformed port is a ValueError
        raise StorageError(
            f"{_origin(url)}invalid database URL {redact(url)!r}: use sqlite:///FILE or "
            "postgresql+psycopg://USER@HOST/DB"
        ) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername=POSTGRES_DRIVER)
    return parsed


def _sqlite_file(parsed: URL) -> Path | None:
    """The file of a SQLite URL; None for in-memory databases and other backends."""
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


def sqlite_path(url: str) -> Path | None:
    """The file a SQLite URL names (None for PostgreSQL and in-memory SQLite); raises
    :class:`StorageError` for a URL ftprune does not support."""
    check_url(url)
    return _sqlite_file(_parse(url))


def optuna_url(url: str) -> str:
    """The URL for Optuna's ``RDBStorage``, password included: a bare ``postgresql://``
    means psycopg, as for ftprune; raises :class:`StorageError` for an invalid URL."""
    return _parse(url).render_as_string(hide_password=False)


PROBE_BYTES = 1 << 20  # room a SQLite database needs to start: its schema, -wal and -shm


def check_writable(url: str) -> None:
    """Raise :class:`StorageError` unless a SQLite database can be written now: the file (if
    it exists) opens for writing, and its directory takes a new file of :data:`PROBE_BYTES`
    (SQLite's ``-wal`` and ``-shm`` live there; a full disk fails here, before SQLite
    creates or changes anything). The probe is an unnamed temporary file, gone when closed;
    the database is not opened. PostgreSQL permissions and space are the server's to
    report."""
    path = sqlite_path(url)
    if path is None:
        return
    try:
        if path.exists():
            with open(path, "r+b"):
                pass
        with tempfile.TemporaryFile(dir=path.parent) as probe:
            probe.write(bytes(PROBE_BYTES))
            probe.flush()
    except OSError as exc:
        raise StorageError(
            f"database {redact(url)} is not writable: {exc.strerror or exc}"
        ) from None


def check_url(url: str) -> None:
    """Raise :class:`StorageError` if ``url`` is not a database URL ftprune supports."""
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StorageError(
            f"{_origin(url)}unsupported database {backend!r}: use "
            "sqlite:///FILE or postgresql+psycopg://USER@HOST/DB"
        )
    if backend == "postgresql" and parsed.drivername != POSTGRES_DRIVER:
        raise StorageError(
            f"{_origin(url)}unsupported PostgreSQL driver {parsed.drivername!r}: use "
            "postgresql+psycopg://USER@HOST/DB"
        )
    path = _sqlite_file(parsed)
    if path is not None and not path.resolve().parent.is_dir():
        raise StorageError(
            f"directory for the SQLite database does not exist: {path.resolve().parent}"
        )


def require_existing(url: str) -> None:
    """Like :func:`check_url`, and also raise :class:`StorageError` if ``url`` names a SQLite
    file that does not exist, so that read-only commands never leave an empty database."""
    check_url(url)
    path = _sqlite_file(_parse(url))
    if path is not None and not path.is_file():
        raise StorageError(f"no database at {redact(url)}")


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the connection settings this module guarantees."""
    check_url(url)
    parsed = _parse(url)
    if parsed.get_backend_name() == "postgresql":
        return create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 15})
    engine = create_engine(parsed, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        _configure_sqlite(dbapi_connection, writer=True)

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        read = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

    return engine


def make_reader_engine(url: str) -> Engine:
    """An engine for ``url`` that only reads; raises :class:`StorageError` (one line) if
    ``url`` names a SQLite file that does not exist or an in-memory database.

    A SQLite file in WAL mode whose ``-wal`` file exists (a writer has it open, or crashed)
    is opened ``mode=ro``, so the reader never checkpoints another process's log. Otherwise
    it is opened ``mode=rw`` (never creating the file) with ``PRAGMA query_only``: the
    ``-wal``/``-shm`` files SQLite makes for the read are removed again when the last
    connection closes (:meth:`Engine.dispose`), leaving the directory and the file's bytes
    as they were. (If a writer opened the file meanwhile and closed first, the reader,
    closing last, checkpoints that writer's log as any SQLite connection does.)
    """
    check_url(url)
    parsed = _parse(url)
    if parsed.get_backend_name() == "postgresql":
        return create_engine(
            parsed,
            pool_pre_ping=True,
            connect_args={"connect_timeout": 15, "options": "-c default_transaction_read_only=on"},
        )
    path = _sqlite_file(parsed)
    if path is None:
        raise StorageError("an in-memory SQLite database holds nothing to read")
    if not path.is_file():
        raise StorageError(f"no database at {redact(url)}: run `ftprune db upgrade` to create it")
    mode = "ro" if path.with_name(path.name + "-wal").exists() else "rw"
    uri = f"{path.resolve().as_uri()}?mode={mode}"
    engine = create_engine(parsed, connect_args={"timeout": 60})

    @event.listens_for(engine, "do_connect")
    def _open(_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
        cargs[:] = [uri]
        cparams["uri"] = True

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        _configure_sqlite(dbapi_connection, writer=False)

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


def _configure_sqlite(dbapi_connection: Any, writer: bool) -> None:
    """Settings of every SQLite connection: ftprune issues ``BEGIN`` itself and waits for
    locks; a writer's connection puts the file in WAL mode and enforces foreign keys, a
    reader's refuses every statement that would write."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=60000")
    if writer:
        _enable_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
    else:
        cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def _enable_wal(cursor: Any, patience_s: float = 60.0) -> None:
    """Put the SQLite file in WAL mode (persistent, so usually already done). Switching
    needs a moment alone with the file and SQLite reports "locked" at once, without its busy
    timeout, when connections race to switch a new file: retry for up to ``patience_s``."""
    import sqlite3

    deadline = time.monotonic() + patience_s
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def is_disconnect(exc: BaseException) -> bool:
    """Whether ``exc`` is a PostgreSQL connection that was lost, refused or shut down (the
    statement did not run, or its transaction was rolled back with the connection): a
    constraint violation, a bad statement or any SQLite error is not."""
    import psycopg

    if not isinstance(exc, DBAPIError) or not isinstance(exc.orig, psycopg.Error):
        return False
    if exc.connection_invalidated:
        return True
    state = exc.orig.sqlstate
    return isinstance(exc.orig, psycopg.OperationalError) and (
        state is None or state.startswith("08") or state in _SERVER_GONE
    )


def retry_budget_s() -> float:
    """Seconds a store keeps retrying a lost database: ``$FTPRUNE_DB_RETRY_S``, else 120."""
    text = os.environ.get(RETRY_ENV, "").strip()
    if not text:
        return DEFAULT_RETRY_S
    try:
        budget = float(text)
    except ValueError:
        budget = -1.0
    if not 0.0 <= budget < float("inf"):
        raise StorageError(f"{RETRY_ENV} must be a number of seconds >= 0, got {text!r}")
    return budget


@dataclass(frozen=True)
class Backoff:
    """Bounded exponential backoff: waits of ``first_s``, doubling up to ``max_s``, for as
    long as the next wait still ends within ``budget_s`` (both of the waits' sum and of the
    wall time since the first failure, which also counts the failed attempts)."""

    budget_s: float
    first_s: float = 0.25
    max_s: float = 8.0

    def waits(self) -> Iterator[float]:
        """The waits to sleep between attempts; exhausted when the budget is spent."""
        deadline = time.monotonic() + self.budget_s
        wait, waited = self.first_s, 0.0
        while waited + wait <= self.budget_s and time.monotonic() + wait <= deadline:
            yield wait
            waited += wait
            wait = min(2 * wait, self.max_s)


def read_only(engine: Engine) -> Engine:
    """The same engine (same pool) for transactions that only read: on SQLite they begin
    deferred and see one consistent snapshot without taking the write lock; writing through
    it is an error under contention."""
    return engine.execution_options(**{READ_ONLY: True})


def _scrub(message: str, url: str) -> str:
    password = _parse(url).password
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    return first.replace(password, "***") if password else first


def error_line(exc: DBAPIError, url: str) -> str:
    """``database URL: first line of the driver's message``, with the password removed."""
    return f"database {redact(url)}: {_scrub(str(exc.orig), url)}"


@contextlib.contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Turn driver errors (unreachable server, bad credentials, missing database) raised in
    the block into a one-line :class:`StorageError` naming the redacted URL."""
    try:
        yield
    except DBAPIError as exc:
        raise StorageError(error_line(exc, url)) from None
