"""The only place that talks SQL: every read and write of ftprune's tables goes through here.

Guarantees of :class:`Store`:

- Each public write is one transaction: it lands whole or not at all (a crash leaves the
  database as it was before the call or after it, never half-way).
- SQLite runs in WAL mode with a busy timeout and foreign keys on every connection, and
  write transactions start with ``BEGIN IMMEDIATE``, so concurrent writers wait instead of
  failing; PostgreSQL works through ``postgresql+psycopg://`` URLs.
- Passwords never appear in what :func:`redact` returns, which is what messages print.
- Runs are addressed by id or by unique name (:meth:`Store.find_run`).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from storage.schema import Base, EvaluationRow, HeldoutRow, RunRow, utcnow

DEFAULT_URL = "sqlite:///ftprune.db"


class StorageError(ValueError):
    """A bad database URL or a run that does not exist; the message is one line."""


def default_url() -> str:
    """``$FTPRUNE_DB`` if set, else ``sqlite:///ftprune.db``."""
    return os.environ.get("FTPRUNE_DB", DEFAULT_URL)


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


def check_url(url: str) -> None:
    """Raise :class:`StorageError` if ``url`` is not a database URL ftprune supports."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"invalid database URL {redact(url)!r}") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StorageError(f"unsupported database {parsed.get_backend_name()!r}: use "
                           "sqlite:///FILE or postgresql+psycopg://USER@HOST/DB")
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        parent = Path(parsed.database).expanduser().resolve().parent
        if not parent.is_dir():
            raise StorageError(f"directory for the SQLite database does not exist: {parent}")


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the connection settings this module guarantees."""
    check_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Store:
    """ftprune's database; see the module docstring for its guarantees."""

    def __init__(self, url: str | None = None, create: bool = True) -> None:
        """Open (and with ``create``, initialize) the database at ``url``.

        With ``create=False`` a missing SQLite file is a :class:`StorageError`, so read-only
        commands never leave an empty database behind.
        """
        self.url = url or default_url()
        check_url(self.url)
        parsed = make_url(self.url)
        if (not create and parsed.get_backend_name() == "sqlite"
                and parsed.database not in (None, "", ":memory:")
                and not Path(parsed.database).expanduser().is_file()):
            raise StorageError(f"no database at {redact(self.url)}")
        self.engine = make_engine(self.url)
        Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # -- runs ---------------------------------------------------------------------------

    def create_run(self, name: str | None, config: dict[str, Any], seed: int) -> RunRow:
        """Insert a run in status ``running``; raises :class:`StorageError` on a taken name."""
        from search import __version__

        with self._session.begin() as session:
            if name and session.scalar(select(RunRow.id).where(RunRow.name == name)):
                raise StorageError(f"a run named {name!r} already exists")
            run = RunRow(name=name or f"pending-{os.getpid()}-{utcnow().timestamp()}",
                         status="running", config=config, seed=seed, code_version=__version__)
            session.add(run)
            session.flush()
            if not name:
                run.name = f"run-{run.id}"
            return run

    def run_name_taken(self, name: str) -> bool:
        with self._session() as session:
            return session.scalar(select(RunRow.id).where(RunRow.name == name)) is not None

    def find_run(self, ref: str | int) -> RunRow:
        """The run with id ``ref`` or name ``ref``; raises :class:`StorageError` if none."""
        with self._session() as session:
            run = session.scalar(select(RunRow).where(RunRow.name == str(ref)))
            if run is None and str(ref).isdigit():
                run = session.get(RunRow, int(ref))
            if run is None:
                raise StorageError(f"no run {ref!r} in {redact(self.url)}")
            return run

    def latest_run(self) -> RunRow | None:
        with self._session() as session:
            return session.scalar(select(RunRow).order_by(RunRow.id.desc()).limit(1))

    def record_generation(self, run_id: int, generation: int, evaluations: Iterable[Any],
                          best_fitness: float, best_schedule: list[float]) -> None:
        """Store a generation's new evaluations and the run's progress in one transaction."""
        with self._session.begin() as session:
            session.add_all(EvaluationRow(
                run_id=run_id, generation=generation, schedule=e.schedule, router=e.router,
                fitness=e.metrics.kl, top1=e.metrics.top1, ppl=e.metrics.ppl,
                realized_sparsity=e.metrics.realized_sparsity, duration_s=e.duration_s,
                worker=e.worker) for e in evaluations)
            run = session.get(RunRow, run_id)
            run.generations_done = generation + 1
            run.best_fitness = best_fitness
            run.best_schedule = best_schedule
            run.updated_at = utcnow()

    def add_heldout(self, run_id: int, label: str, evaluation: Any) -> None:
        """Store held-out window metrics of one schedule under ``label``."""
        with self._session.begin() as session:
            session.add(HeldoutRow(
                run_id=run_id, label=label, schedule=evaluation.schedule,
                router=evaluation.router, **{k: v for k, v in asdict(evaluation.metrics).items()
                                             if k != "positions"}))

    def set_status(self, run_id: int, status: str, error: str | None = None) -> None:
        with self._session.begin() as session:
            run = session.get(RunRow, run_id)
            run.status = status
            run.error = error[:2000] if error else None
            run.updated_at = utcnow()
            if status != "running":
                run.finished_at = utcnow()

    # -- reads ----------------------------------------------------------------------------

    def evaluations(self, run_id: int) -> list[EvaluationRow]:
        with self._session() as session:
            return list(session.scalars(select(EvaluationRow).where(
                EvaluationRow.run_id == run_id).order_by(EvaluationRow.id)))

    def heldout(self, run_id: int) -> list[HeldoutRow]:
        with self._session() as session:
            return list(session.scalars(select(HeldoutRow).where(
                HeldoutRow.run_id == run_id).order_by(HeldoutRow.id)))

    def run_status(self, ref: str | int) -> dict[str, Any]:
        """The status summary of a run, as ``ftprune search status --json`` prints it."""
        run = self.find_run(ref)
        with self._session() as session:
            count = session.scalar(select(func.count(EvaluationRow.id)).where(
                EvaluationRow.run_id == run.id))
        return {
            "run": run.name, "id": run.id, "status": run.status,
            "generations": run.generations_done,
            "generations_planned": run.config.get("generations"),
            "evaluations": count, "best_fitness": run.best_fitness,
            "best_schedule": run.best_schedule,
            "target_sparsity": run.config.get("target_sparsity"),
            "model": run.config.get("model"), "error": run.error,
            "created_at": run.created_at.isoformat() if run.created_at else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        }
