"""The SQL store: the only place that writes ftprune's tables; reads for the dashboard and
reports are in :mod:`storage.queries`. The records it takes are in :mod:`storage.records`,
its transactions, retries and lease fencing in :mod:`storage.transactions`, routers and
results in :mod:`storage.results`.

:class:`Store` implements :class:`storage.protocol.RunStore` (whose guarantees one
conformance suite checks on SQLite, PostgreSQL and the in-memory store) and adds its own
(the storage tests check them on SQLite and PostgreSQL):

- Opening a store to write (``Store(url)``) brings the database to the newest schema
  (:func:`storage.migrate.upgrade`: locked, one transaction, Optuna's tables untouched);
  ``create=False`` refuses a missing SQLite file instead of creating one.
- A store from :func:`open_reader` never creates, migrates or writes the database (in the
  manner of Optuna's storage, which refuses a stale schema instead of upgrading it on
  open): it refuses, with one line, a database that is missing, empty or at any schema
  revision but the newest, and its connections cannot write (see
  :func:`storage.engine.make_reader_engine`); its write methods raise
  :class:`StorageError`. After :meth:`Store.close` a SQLite database that no one else had
  open is byte-identical, with no ``-wal``/``-shm`` file left.
- Each public write is one transaction: it lands whole or not at all (a crash leaves the
  database as it was before the call or after it, never half-way).
- Several processes may write at once, each the only writer of its runs (as the coordinator
  is): nothing is lost and no writer fails. SQLite runs in WAL mode with a busy timeout and
  ``BEGIN IMMEDIATE`` writers; PostgreSQL works through ``postgresql+psycopg://`` URLs.
  Recording a generation of a run twice is an error, never a silent duplicate.
- Passwords never appear in what :func:`redact` returns, which is what messages print, nor
  in :class:`StorageError` messages.
- Runs are addressed by id or by unique name (:meth:`Store.find_run`).
- A PostgreSQL server that was reachable when the store opened and then drops or refuses
  connections (a restart, a failover) is retried with bounded exponential backoff
  (:class:`storage.engine.Backoff`, ``retry_s`` seconds: ``$FTPRUNE_DB_RETRY_S``, default
  120), reads and writes alike; past the budget a call raises
  :class:`storage.engine.DatabaseUnavailable` and has written nothing. A write is retried
  only when it certainly did not commit, or when the store can tell from the database
  whether it did (:meth:`Store.record_generation` checks the generation it wrote, so a
  generation is never written twice); a commit lost in flight that it cannot check is a
  :class:`StorageError`. A database unreachable at open fails at once.
- A run's lease (:meth:`Store.acquire_lease`) names the one coordinator that drives it;
  writes given a :class:`storage.leases.Lease` land only while that lease is still the
  run's (otherwise :class:`LeaseLost`, nothing written), and renew it.
- A failed evaluation (an :class:`EvaluationRecord` with ``error``) is stored with its
  reason and no metrics; generation summaries cover the evaluations that succeeded.
"""

from __future__ import annotations

import itertools
import os
import statistics
from typing import Any, Iterable

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from storage.engine import (
    StorageError,
    database_errors,
    default_url,
    make_engine,
    make_reader_engine,
    redact,
    require_existing,
    retry_budget_s,
)
from storage.leases import Lease, LeaseHeld, LeaseLost, refuse_held
from storage.migrate import require_head, upgrade
from storage.protocol import RunStore
from storage.records import (
    BENCHMARK_KINDS,
    BENCHMARK_META,
    EVAL_RESULT_EXTRAS,
    EVAL_RESULT_KEYS,
    LOSS_WEIGHTS,
    TUNED_WEIGHTS_KEYS,
    EvaluationRecord,
    Metrics,
    RunPlan,
    Scored,
    as_utc,
    assign,
    code_version,
    evaluation_values,
    generation_exists,
    heldout_values,
    name_taken,
    new_run_values,
    progress_values,
    run_status,
    status_values,
    unnamed_run,
    utcnow,
)
from storage.results import ResultStore
from storage.schema import (
    EvaluationRow,
    GenerationRow,
    HeldoutRow,
    RunRow,
    SearchStateRow,
)
from storage.transactions import Transactions, db_now, fence, hold, reads, replay, run_row

__all__ = [  # what callers import from here
    "BENCHMARK_KINDS",
    "BENCHMARK_META",
    "EVAL_RESULT_EXTRAS",
    "EVAL_RESULT_KEYS",
    "LOSS_WEIGHTS",
    "TUNED_WEIGHTS_KEYS",
    "EvaluationRecord",
    "LeaseHeld",
    "LeaseLost",
    "Metrics",
    "RunPlan",
    "Scored",
    "Store",
    "code_version",
    "open_reader",
]


class Store(ResultStore, RunStore):
    """ftprune's database; see the module docstring for its guarantees."""

    def __init__(
        self, url: str | None = None, create: bool = True, retry_s: float | None = None
    ) -> None:
        """Open the database at ``url`` to write, bringing it to the newest schema first
        (:func:`open_reader` reads without changing anything).

        With ``create=False`` a missing SQLite file is a :class:`StorageError`, so commands
        that need an existing database never leave an empty one behind. ``retry_s``: how
        long a lost connection is retried (default: :func:`storage.engine.retry_budget_s`).
        """
        url = url or default_url()
        budget = retry_budget_s() if retry_s is None else retry_s
        if not create:
            require_existing(url)
        engine = make_engine(url)
        with database_errors(url):
            upgrade(engine)
        super().__init__(url, engine, writable=True, retry_s=budget)

    @classmethod
    def _reading(cls, url: str, engine: Engine) -> Store:
        """A store over a reader engine (see :func:`open_reader`)."""
        store = cls.__new__(cls)
        Transactions.__init__(store, url, engine, writable=False, retry_s=retry_budget_s())
        return store

    # -- leases ---------------------------------------------------------------------------

    def acquire_lease(self, run_id: int, lease: Lease) -> None:
        """Make ``lease`` the run's, expiring ``lease.duration_s`` from now (the database's
        clock on PostgreSQL). Raises :class:`LeaseHeld` (one line: who, until when) if
        another owner's lease is unexpired and that owner is not a process of this machine
        known to have exited (:func:`storage.leases.owner_gone`). Re-acquiring one's own
        lease renews it."""

        def work(session: Session) -> None:
            run = run_row(session, run_id, lock=True)
            now = db_now(session)
            refuse_held(run.name, run.lease_owner, as_utc(run.lease_expires_at), lease, now)
            hold(run, lease, now)

        self.write(work, replay)

    def renew_lease(self, run_id: int, lease: Lease, retry: bool = True) -> None:
        """Push the lease's expiry ``lease.duration_s`` past now; :class:`LeaseLost` if the
        run's lease is no longer ``lease.owner``'s."""
        self.write(lambda session: fence(session, run_id, lease), replay, retry)

    def release_lease(self, run_id: int, owner: str) -> None:
        """Clear the run's lease if ``owner`` holds it (otherwise nothing changes)."""

        def work(session: Session) -> None:
            run = run_row(session, run_id, lock=True)
            if run.lease_owner == owner:
                run.lease_owner = run.lease_expires_at = None

        self.write(work, replay)

    # -- runs -----------------------------------------------------------------------------

    def create_run(
        self,
        name: str | None,
        config: dict[str, Any],
        seed: int,
        lease: Lease | None = None,
        plan: RunPlan | None = None,
    ) -> RunRow:
        """Insert a run in status ``running`` (holding ``lease`` if given, in the same
        transaction), its typed columns from ``plan``; raises :class:`StorageError` on a
        taken name."""

        def work(session: Session) -> RunRow:
            if name and session.scalar(select(RunRow.id).where(RunRow.name == name)):
                raise name_taken(name)
            pending = f"pending-{os.getpid()}-{utcnow().timestamp()}"
            run = RunRow(**new_run_values(name or pending, config, seed, plan))
            session.add(run)
            if lease is not None:
                hold(run, lease, db_now(session))
            session.flush()
            if not name:
                run.name = unnamed_run(run.id)
            return run

        def landed(session: Session) -> bool:  # only a lease's owner id tells the run is ours
            assert lease is not None
            owned = select(RunRow.id).where(RunRow.lease_owner == lease.owner)
            return session.scalar(owned) is not None

        return self.write(work, landed if lease is not None else None)

    @reads
    def run_name_taken(self, name: str) -> bool:
        """Whether a run is named ``name``."""
        with self._reader() as session:
            return session.scalar(select(RunRow.id).where(RunRow.name == name)) is not None

    @reads
    def find_run(self, ref: str | int) -> RunRow:
        """The run with id ``ref`` or name ``ref``; raises :class:`StorageError` if none."""
        with self._reader() as session:
            run = session.scalar(select(RunRow).where(RunRow.name == str(ref)))
            if run is None and str(ref).isdigit():
                run = session.get(RunRow, int(ref))
            if run is None:
                raise StorageError(f"no run {ref!r} in {redact(self.url)}")
            return run

    @reads
    def latest_run(self) -> RunRow | None:
        """The most recently created run; None in an empty database."""
        with self._reader() as session:
            return session.scalar(select(RunRow).order_by(RunRow.id.desc()).limit(1))

    def record_generation(
        self,
        run_id: int,
        generation: int,
        evaluations: Iterable[Scored | EvaluationRecord],
        best_fitness: float,
        best_schedule: list[float],
        search_state: dict[str, Any] | None = None,
        lease: Lease | None = None,
    ) -> None:
        """Store a generation's new evaluations (failed ones with their reason), its summary
        per stage (one stage per fidelity, lowest first, over the evaluations that
        succeeded), the run's progress and (if given) the search state to resume from, in
        one transaction; with ``lease``, only while it is the run's (and renewing it).

        A commit lost in flight is checked, not repeated: the generation counts as stored
        when its summary rows, the run's progress and the search state are what this call
        wrote. Recording a generation that is already stored otherwise raises
        :class:`storage.records.GenerationExists`."""
        rows = [evaluation_values(run_id, generation, e) for e in evaluations]
        scored = [
            (row["fitness"], row["fidelity"], row["duration_s"]) for row in rows if "fitness" in row
        ]

        def work(session: Session) -> None:
            if lease is not None:
                fence(session, run_id, lease)
            run = run_row(session, run_id)
            stored = select(GenerationRow.id).where(
                GenerationRow.run_id == run_id, GenerationRow.generation == generation
            )
            if session.scalar(stored.limit(1)) is not None:
                raise generation_exists(run.name, generation)
            session.add_all(EvaluationRow(**row) for row in rows)
            session.add_all(_generation_summaries(run_id, generation, scored, best_fitness))
            if search_state is not None:
                session.merge(
                    SearchStateRow(
                        run_id=run_id,
                        generation=generation + 1,
                        state=search_state,
                        updated_at=utcnow(),
                    )
                )
            assign(run, progress_values(generation, best_fitness, best_schedule))

        def landed(session: Session) -> bool:
            owner = lease.owner if lease is not None else None
            return _generation_landed(
                session, run_id, generation, best_fitness, search_state, owner
            )

        self.write(work, landed)

    def add_heldout(
        self, run_id: int, label: str, evaluation: Scored, lease: Lease | None = None
    ) -> None:
        """Store held-out window metrics of one schedule under ``label`` (with ``lease``,
        only while it is the run's); a commit lost in flight counts as stored when the run
        holds a row of that label and schedule."""
        values = heldout_values(run_id, label, evaluation)

        def work(session: Session) -> None:
            if lease is not None:
                fence(session, run_id, lease)
            run_row(session, run_id)  # a missing run is a StorageError, as everywhere
            session.add(HeldoutRow(**values))

        def landed(session: Session) -> bool:
            rows = session.scalars(
                select(HeldoutRow.schedule).where(
                    HeldoutRow.run_id == run_id, HeldoutRow.label == label
                )
            )
            return list(evaluation.schedule) in list(rows)

        self.write(work, landed)

    def set_status(
        self, run_id: int, status: str, error: str | None = None, lease: Lease | None = None
    ) -> None:
        """Set the run's status and error (with ``lease``, only while it is the run's)."""

        def work(session: Session) -> None:
            if lease is not None:
                fence(session, run_id, lease)
            assign(run_row(session, run_id), status_values(status, error))

        self.write(work, replay)

    # -- reads ----------------------------------------------------------------------------

    @reads
    def evaluations(self, run_id: int) -> list[EvaluationRow]:
        """The run's evaluations in the order recorded."""
        with self._reader() as session:
            return list(
                session.scalars(
                    select(EvaluationRow)
                    .where(EvaluationRow.run_id == run_id)
                    .order_by(EvaluationRow.id)
                )
            )

    @reads
    def heldout(self, run_id: int) -> list[HeldoutRow]:
        """The run's held-out rows in the order recorded."""
        with self._reader() as session:
            return list(
                session.scalars(
                    select(HeldoutRow).where(HeldoutRow.run_id == run_id).order_by(HeldoutRow.id)
                )
            )

    @reads
    def search_state(self, run_id: int) -> dict[str, Any] | None:
        """The search state stored at the run's last generation boundary, if any."""
        with self._reader() as session:
            row = session.get(SearchStateRow, run_id)
            return row.state if row else None

    @reads
    def run_totals(self, run_id: int) -> dict[str, int]:
        """Evaluations stored for the run and the forward tokens they cost."""
        with self._reader() as session:
            count, tokens = session.execute(
                select(
                    func.count(EvaluationRow.id),
                    func.coalesce(func.sum(EvaluationRow.forward_tokens), 0),
                ).where(EvaluationRow.run_id == run_id)
            ).one()
        return {"evaluations": int(count or 0), "forward_tokens": int(tokens or 0)}

    @reads
    def run_status(self, ref: str | int) -> dict[str, Any]:
        """The status summary of a run, as ``ftprune search status --json`` prints it."""
        run = self.find_run(ref)
        with self._reader() as session:
            count, failed = session.execute(
                select(func.count(EvaluationRow.id), func.count(EvaluationRow.error)).where(
                    EvaluationRow.run_id == run.id
                )
            ).one()
        return run_status(run, count, failed)


def open_reader(url: str | None = None) -> Store:
    """Open the database at ``url`` (default: :func:`storage.default_url`) to read only.

    Never creates, migrates or writes the database: a missing SQLite file, a database with
    no ftprune schema revision, one at an older revision, or one at a revision this code
    does not know (written by a newer ftprune) raises :class:`StorageError` with one line
    naming the revision found and what to run (``ftprune db upgrade``), and leaves the
    database as it was. The store's write methods raise :class:`StorageError`; its
    connections are read-only at the database (SQLite ``mode=ro`` or ``query_only``,
    PostgreSQL ``default_transaction_read_only``), so no statement can write either. Reads
    never block writers. Close the store (or use it as a context manager) when done.
    """
    url = url or default_url()
    engine = make_reader_engine(url)
    try:
        with database_errors(url):
            require_head(engine, redact(url))
    except BaseException:
        engine.dispose()
        raise
    return Store._reading(url, engine)


def _generation_landed(
    session: Session,
    run_id: int,
    generation: int,
    best_fitness: float,
    search_state: dict[str, Any] | None,
    owner: str | None,
) -> bool:
    """Whether :meth:`Store.record_generation` with these arguments is in the database: the
    generation's summary rows exist and the run's progress, lease owner (if ``owner``) and
    search state (if given) are what that call wrote."""
    run = session.get(RunRow, run_id)
    state = session.get(SearchStateRow, run_id)
    summaries = session.scalar(
        select(func.count(GenerationRow.id)).where(
            GenerationRow.run_id == run_id, GenerationRow.generation == generation
        )
    )
    return (
        run is not None
        and bool(summaries)
        and run.generations_done == generation + 1
        and run.best_fitness == best_fitness
        and (owner is None or run.lease_owner == owner)
        and (search_state is None or (state is not None and state.state == search_state))
    )


def _generation_summaries(
    run_id: int,
    generation: int,
    scored: list[tuple[float, int, float]],
    best_so_far: float,
) -> list[GenerationRow]:
    """One summary row per fidelity (stage 0 = lowest) of the generation's successful
    evaluations, given as (fitness, fidelity, duration); a single empty stage-0 row when the
    generation scored nothing new."""
    by_fidelity = sorted(scored, key=lambda one: one[1])
    stages = [
        (fidelity, list(group))
        for fidelity, group in itertools.groupby(by_fidelity, key=lambda one: one[1])
    ]
    if not stages:
        return [
            GenerationRow(
                run_id=run_id,
                generation=generation,
                stage=0,
                fidelity=None,
                evaluations=0,
                best_so_far=best_so_far,
                compute_s=0.0,
            )
        ]
    rows = []
    for stage, (fidelity, group) in enumerate(stages):
        fitness = [kl for kl, _, _ in group]
        rows.append(
            GenerationRow(
                run_id=run_id,
                generation=generation,
                stage=stage,
                fidelity=fidelity,
                evaluations=len(group),
                best_fitness=min(fitness),
                mean_fitness=statistics.fmean(fitness),
                std_fitness=statistics.pstdev(fitness),
                worst_fitness=max(fitness),
                best_so_far=best_so_far,
                compute_s=sum(duration for _, _, duration in group),
            )
        )
    return rows
