"""How the SQL store talks to its database: one transaction per public call, retried with
bounded backoff on a lost connection, and fenced by the run's lease.

Guarantees:

- :meth:`Transactions.write` runs its work in one write transaction: it lands whole or not
  at all. On a lost connection (:func:`storage.engine.is_disconnect`) it waits and runs the
  work again, within the backoff budget; a connection lost while committing is settled by
  asking the database whether the write landed (``landed``), never by writing blindly
  again; where that cannot be asked it is a :class:`StorageError`. Past the budget it raises
  :class:`storage.engine.DatabaseUnavailable`, having written nothing.
- :func:`reads` gives a read-only method the same retries; reads never take the write lock.
- A reader (``writable=False``) refuses every write with one line, before any statement.
- :func:`fence` locks the run's row and lands a write only while the caller's lease is the
  run's (:func:`storage.leases.refuse_lost`), renewing it.
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import datetime, timezone
from types import TracebackType
from typing import Callable, Concatenate, Iterator, NoReturn, ParamSpec, TypeVar

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from storage.engine import (
    Backoff,
    DatabaseUnavailable,
    StorageError,
    error_line,
    is_disconnect,
    read_only,
    redact,
)
from storage.leases import Lease, refuse_lost
from storage.records import no_run, utcnow
from storage.schema import RunRow

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")
Tx = TypeVar("Tx", bound="Transactions")
# Whether a write whose commit was lost in flight is in the database (read in a new session);
# replay answers "no" for writes that may simply run again.
Landed = Callable[[Session], bool]


def replay(_session: Session) -> bool:
    """The ``landed`` of a write that may run again whole (it sets values, adds nothing)."""
    return False


class Transactions:
    """A database's engines and sessions, with :meth:`write` and :func:`reads` retries."""

    def __init__(self, url: str, engine: Engine, writable: bool, retry_s: float) -> None:
        self.url = url
        self.engine = engine
        self.writable = writable
        self.backoff = Backoff(retry_s)
        self.read_engine = read_only(engine)
        self._session: sessionmaker[Session] | _NoWrites = (
            sessionmaker(engine, expire_on_commit=False) if writable else _NoWrites(url)
        )
        self._reader = sessionmaker(self.read_engine, expire_on_commit=False)

    def close(self) -> None:
        """Close every connection (on SQLite, the last one out removes ``-wal``/``-shm``)."""
        self.engine.dispose()

    def __enter__(self: Tx) -> Tx:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    def write(
        self, work: Callable[[Session], T], landed: Landed | None = None, retry: bool = True
    ) -> T:
        """Run ``work`` in one write transaction and return its result (see the module
        docstring); ``retry=False``: one attempt only."""
        waits: Iterator[float] | None = None
        unsure: list[T] = []  # the result of an attempt whose commit was lost in flight
        while True:
            committing = False
            try:
                if unsure:
                    with self._reader() as session:
                        if landed is not None and landed(session):
                            return unsure[0]
                    unsure.clear()
                with self._session.begin() as session:
                    result = work(session)
                    session.flush()
                    committing = True
                return result
            except DBAPIError as exc:
                if not (retry and is_disconnect(exc)):
                    raise
                if committing:
                    if landed is None:
                        raise StorageError(
                            f"{error_line(exc, self.url)} (the connection was lost while "
                            "committing: whether the write landed is unknown)"
                        ) from None
                    unsure.append(result)
                waits = waits or self.backoff.waits()
                self.pause(exc, waits)

    def pause(self, exc: DBAPIError, waits: Iterator[float]) -> None:
        """Sleep the next backoff wait, or raise :class:`DatabaseUnavailable` when the
        budget is spent."""
        wait = next(waits, None)
        if wait is None:
            raise DatabaseUnavailable(
                f"{error_line(exc, self.url)} (still unreachable after "
                f"{self.backoff.budget_s:g} s of retries)"
            ) from None
        log.warning("%s; retrying in %.2f s", error_line(exc, self.url), wait)
        time.sleep(wait)


def reads(method: Callable[Concatenate[Tx, P], T]) -> Callable[Concatenate[Tx, P], T]:
    """Run a read-only method again after a lost connection (see :meth:`Transactions.pause`)."""

    @functools.wraps(method)
    def retried(self: Tx, *args: P.args, **kwargs: P.kwargs) -> T:
        waits: Iterator[float] | None = None
        while True:
            try:
                return method(self, *args, **kwargs)
            except DBAPIError as exc:
                if not is_disconnect(exc):
                    raise
                waits = waits or self.backoff.waits()
                self.pause(exc, waits)

    return retried


class _NoWrites:
    """The write-session factory of a reader: every write opens its transaction with
    ``self._session.begin()``, which refuses here."""

    def __init__(self, url: str) -> None:
        self.url = url

    def begin(self) -> NoReturn:
        raise StorageError(
            f"{redact(self.url)} is open read-only (storage.open_reader): open a Store to write"
        )


def run_row(session: Session, run_id: int, lock: bool = False) -> RunRow:
    """The run's row; ``lock``: held until the transaction ends (``FOR UPDATE`` on
    PostgreSQL; SQLite's write transactions hold the whole file already)."""
    run = session.get(RunRow, run_id, with_for_update=lock)
    if run is None:
        raise no_run(run_id)
    return run


def db_now(session: Session) -> datetime:
    """The time lease expiries are measured in: the server's clock on PostgreSQL (shared by
    every coordinator), this machine's on SQLite (a local file)."""
    if session.get_bind().dialect.name == "postgresql":
        now = session.scalar(select(func.clock_timestamp()))
        assert isinstance(now, datetime)
        return now.astimezone(timezone.utc)
    return utcnow()


def hold(run: RunRow, lease: Lease, now: datetime) -> None:
    """Make ``lease`` the run's, expiring ``lease.duration_s`` after ``now``."""
    run.lease_owner = lease.owner
    run.lease_expires_at = lease.expiry(now)


def fence(session: Session, run_id: int, lease: Lease) -> None:
    """Lock the run's row and renew ``lease`` on it; :class:`storage.leases.LeaseLost` if
    the run's lease is no longer ``lease.owner``'s."""
    run = run_row(session, run_id, lock=True)
    refuse_lost(run.name, run.lease_owner, lease)
    hold(run, lease, db_now(session))
