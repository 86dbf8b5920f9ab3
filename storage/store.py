"""The only place that writes ftprune's tables; reads for the dashboard and reports are in
:mod:`storage.queries`.

Guarantees of :class:`Store` (modelled on Optuna's storage interface, and checked by one
conformance suite run against SQLite and PostgreSQL):

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

import functools
import itertools
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import (
    Any,
    Callable,
    Concatenate,
    Iterable,
    Iterator,
    Mapping,
    NoReturn,
    ParamSpec,
    Protocol,
    Sequence,
    TypeVar,
)

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from storage.engine import (
    Backoff,
    DatabaseUnavailable,
    StorageError,
    database_errors,
    default_url,
    error_line,
    is_disconnect,
    make_engine,
    make_reader_engine,
    read_only,
    redact,
    require_existing,
    retry_budget_s,
)
from storage.leases import Lease, describe_owner, owner_gone
from storage.migrate import require_head, upgrade
from storage.schema import (
    BenchmarkRow,
    EvalResultRow,
    EvaluationRow,
    GenerationRow,
    HeldoutRow,
    RouterRow,
    RunRow,
    SearchStateRow,
    TunedWeightsRow,
    utcnow,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")
# Whether a write whose commit was lost in flight is in the database (read in a new session);
# _replay answers "no" for writes that may simply run again.
Landed = Callable[[Session], bool]


def _replay(_session: Session) -> bool:
    return False


class LeaseHeld(StorageError):
    """Another live coordinator holds the run's lease."""


class LeaseLost(StorageError):
    """The run's lease is no longer this coordinator's (it expired and was taken over)."""


def code_version() -> str:
    """The installed ``ftprune`` distribution's version, stored with every run and bench row."""
    try:
        return version("ftprune")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


BENCHMARK_KINDS = ("routing", "search", "coordinator", "quality")
BENCHMARK_META = ("id", "kind", "run_id", "code_version", "created_at")  # not row fields
EVAL_RESULT_KEYS = ("task", "metric", "dense", "routed")
EVAL_RESULT_EXTRAS = ("ci_low", "ci_high", "realized_sparsity", "flop_saving")  # optional
LOSS_WEIGHTS = ("guide", "sparse", "distill")
TUNED_WEIGHTS_KEYS = (
    "trial",
    "model",
    "target_sparsity",
    "schedule",
    "lambda_guide",
    "lambda_sparse",
    "lambda_distill",
    "guide_steps",
    "lr",
    "heldout_kl",
    "objectives",
)


class Metrics(Protocol):
    """Window metrics of one schedule (``workers.WindowMetrics`` is one)."""

    @property
    def kl(self) -> float: ...
    @property
    def top1(self) -> float: ...
    @property
    def ppl(self) -> float: ...
    @property
    def realized_sparsity(self) -> float: ...
    @property
    def positions(self) -> int: ...


class Scored(Protocol):
    """One scored schedule (``workers.Evaluation`` is one); ``metrics.positions`` is the
    fidelity it was scored at."""

    @property
    def schedule(self) -> list[float]: ...
    @property
    def router(self) -> str: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def worker(self) -> str: ...


@dataclass(frozen=True)
class EvaluationRecord:
    """A :class:`Scored` candidate with the search engine's detail: its selection stage, the
    calibration sequences its fitness covers, the per-sequence sums this evaluation computed
    and the forward tokens it cost. :meth:`Store.record_generation` stores these fields when
    a record carries them and NULL otherwise. A failed candidate has ``error`` (why) and no
    ``metrics``."""

    schedule: list[float]
    router: str
    metrics: Metrics | None
    duration_s: float
    worker: str
    stage: int
    sequences: list[int]
    per_sequence: dict[str, list[float]]
    forward_tokens: int
    error: str | None = None

    def __post_init__(self) -> None:
        if (self.metrics is None) == (self.error is None):
            raise ValueError("an evaluation record has metrics or an error, not both or neither")


def _reads(method: Callable[Concatenate[Store, P], T]) -> Callable[Concatenate[Store, P], T]:
    """Run a read-only method again after a lost connection (see :meth:`Store._pause`)."""

    @functools.wraps(method)
    def retried(self: Store, *args: P.args, **kwargs: P.kwargs) -> T:
        waits: Iterator[float] | None = None
        while True:
            try:
                return method(self, *args, **kwargs)
            except DBAPIError as exc:
                if not is_disconnect(exc):
                    raise
                waits = waits or self.backoff.waits()
                self._pause(exc, waits)

    return retried


class Store:
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
        self._attach(url, engine, writable=True, retry_s=budget)

    @classmethod
    def _reading(cls, url: str, engine: Engine) -> Store:
        """A store over a reader engine (see :func:`open_reader`)."""
        store = cls.__new__(cls)
        store._attach(url, engine, writable=False, retry_s=retry_budget_s())
        return store

    def _attach(self, url: str, engine: Engine, writable: bool, retry_s: float) -> None:
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

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- transactions and retries ---------------------------------------------------------

    def _write(
        self, work: Callable[[Session], T], landed: Landed | None = None, retry: bool = True
    ) -> T:
        """Run ``work`` in one write transaction and return its result. On a lost connection
        (:func:`storage.engine.is_disconnect`) wait and run it again, within the backoff
        budget; if the connection was lost while committing, first ask ``landed`` whether
        the commit happened (then return the result) or not (then run again); without
        ``landed`` that is a :class:`StorageError`. ``retry=False``: one attempt only."""
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
                self._pause(exc, waits)

    def _pause(self, exc: DBAPIError, waits: Iterator[float]) -> None:
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

    # -- leases ---------------------------------------------------------------------------

    def acquire_lease(self, run_id: int, lease: Lease) -> None:
        """Make ``lease`` the run's, expiring ``lease.duration_s`` from now (the database's
        clock on PostgreSQL). Raises :class:`LeaseHeld` (one line: who, until when) if
        another owner's lease is unexpired and that owner is not a process of this machine
        known to have exited (:func:`storage.leases.owner_gone`). Re-acquiring one's own
        lease renews it."""

        def work(session: Session) -> None:
            run = _run_row(session, run_id, lock=True)
            now = _db_now(session)
            holder, until = run.lease_owner, _utc(run.lease_expires_at)
            if (
                holder is not None
                and holder != lease.owner
                and until is not None
                and until > now
                and not owner_gone(holder)
            ):
                raise LeaseHeld(
                    f"run {run.name!r} is driven by another coordinator "
                    f"({describe_owner(holder)}) whose lease runs until "
                    f"{until:%Y-%m-%d %H:%M:%S} UTC ({(until - now).total_seconds():.0f} s "
                    "from now): let it finish, or resume the run once the lease has expired"
                )
            _extend(run, lease, now)

        self._write(work, _replay)

    def renew_lease(self, run_id: int, lease: Lease, retry: bool = True) -> None:
        """Push the lease's expiry ``lease.duration_s`` past now; :class:`LeaseLost` if the
        run's lease is no longer ``lease.owner``'s."""
        self._write(lambda session: _fence(session, run_id, lease), _replay, retry)

    def release_lease(self, run_id: int, owner: str) -> None:
        """Clear the run's lease if ``owner`` holds it (otherwise nothing changes)."""

        def work(session: Session) -> None:
            run = _run_row(session, run_id, lock=True)
            if run.lease_owner == owner:
                run.lease_owner = run.lease_expires_at = None

        self._write(work, _replay)

    # -- runs ---------------------------------------------------------------------------

    def create_run(
        self, name: str | None, config: dict[str, Any], seed: int, lease: Lease | None = None
    ) -> RunRow:
        """Insert a run in status ``running`` (holding ``lease`` if given, in the same
        transaction); raises :class:`StorageError` on a taken name."""

        def work(session: Session) -> RunRow:
            if name and session.scalar(select(RunRow.id).where(RunRow.name == name)):
                raise StorageError(f"a run named {name!r} already exists")
            run = RunRow(
                name=name or f"pending-{os.getpid()}-{utcnow().timestamp()}",
                status="running",
                config=config,
                seed=seed,
                code_version=code_version(),
            )
            session.add(run)
            if lease is not None:
                _extend(run, lease, _db_now(session))
            session.flush()
            if not name:
                run.name = f"run-{run.id}"
            return run

        def landed(session: Session) -> bool:  # only a lease's owner id tells the run is ours
            assert lease is not None
            owned = select(RunRow.id).where(RunRow.lease_owner == lease.owner)
            return session.scalar(owned) is not None

        return self._write(work, landed if lease is not None else None)

    @_reads
    def run_name_taken(self, name: str) -> bool:
        with self._reader() as session:
            return session.scalar(select(RunRow.id).where(RunRow.name == name)) is not None

    @_reads
    def find_run(self, ref: str | int) -> RunRow:
        """The run with id ``ref`` or name ``ref``; raises :class:`StorageError` if none."""
        with self._reader() as session:
            run = session.scalar(select(RunRow).where(RunRow.name == str(ref)))
            if run is None and str(ref).isdigit():
                run = session.get(RunRow, int(ref))
            if run is None:
                raise StorageError(f"no run {ref!r} in {redact(self.url)}")
            return run

    @_reads
    def latest_run(self) -> RunRow | None:
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
        ``IntegrityError``."""
        batch = list(evaluations)
        scored = [(e, m) for e in batch if (m := e.metrics) is not None]

        def work(session: Session) -> None:
            if lease is not None:
                _fence(session, run_id, lease)
            session.add_all(_evaluation_row(run_id, generation, e) for e in batch)
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
            run = _run_row(session, run_id)
            run.generations_done = generation + 1
            run.best_fitness = best_fitness
            run.best_schedule = best_schedule
            run.updated_at = utcnow()

        def landed(session: Session) -> bool:
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
                and (lease is None or run.lease_owner == lease.owner)
                and (search_state is None or (state is not None and state.state == search_state))
            )

        self._write(work, landed)

    def add_heldout(
        self, run_id: int, label: str, evaluation: Scored, lease: Lease | None = None
    ) -> None:
        """Store held-out window metrics of one schedule under ``label`` (with ``lease``,
        only while it is the run's); a commit lost in flight counts as stored when the run
        holds a row of that label and schedule."""
        m = evaluation.metrics

        def work(session: Session) -> None:
            if lease is not None:
                _fence(session, run_id, lease)
            session.add(
                HeldoutRow(
                    run_id=run_id,
                    label=label,
                    schedule=evaluation.schedule,
                    router=evaluation.router,
                    kl=m.kl,
                    top1=m.top1,
                    ppl=m.ppl,
                    realized_sparsity=m.realized_sparsity,
                )
            )

        def landed(session: Session) -> bool:
            rows = session.scalars(
                select(HeldoutRow.schedule).where(
                    HeldoutRow.run_id == run_id, HeldoutRow.label == label
                )
            )
            return list(evaluation.schedule) in list(rows)

        self._write(work, landed)

    def set_status(
        self, run_id: int, status: str, error: str | None = None, lease: Lease | None = None
    ) -> None:
        """Set the run's status and error (with ``lease``, only while it is the run's)."""

        def work(session: Session) -> None:
            if lease is not None:
                _fence(session, run_id, lease)
            run = _run_row(session, run_id)
            run.status = status
            run.error = error[:2000] if error else None
            run.updated_at = utcnow()
            if status != "running":
                run.finished_at = utcnow()

        self._write(work, _replay)

    # -- routers, evaluation and benchmark results -------------------------------------------

    def add_router(
        self,
        run_id: int,
        label: str,
        schedule: Sequence[float],
        loss_weights: Mapping[str, float],
        checkpoint: str,
        checkpoint_sha256: str,
        curves: Mapping[str, Sequence[float]],
        config: Mapping[str, Any],
        heldout: Metrics | None = None,
        train_s: float | None = None,
    ) -> int:
        """Store a trained router and return its id.

        ``loss_weights`` maps ``guide``, ``sparse`` and ``distill`` to λ; ``curves`` maps a
        series name (``step`` for the x axis, if given) to values of equal length.
        """
        if set(loss_weights) != set(LOSS_WEIGHTS):
            raise StorageError(
                f"loss weights must be exactly {', '.join(LOSS_WEIGHTS)}; "
                f"got {', '.join(sorted(loss_weights)) or 'none'}"
            )
        if len({len(values) for values in curves.values()}) > 1:
            raise StorageError("router curves must all have the same length")
        values = dict(
            run_id=run_id,
            label=label,
            schedule=list(schedule),
            lambda_guide=loss_weights["guide"],
            lambda_sparse=loss_weights["sparse"],
            lambda_distill=loss_weights["distill"],
            config=dict(config),
            checkpoint=checkpoint,
            checkpoint_sha256=checkpoint_sha256,
            curves={name: list(values) for name, values in curves.items()},
            heldout_kl=heldout.kl if heldout else None,
            heldout_top1=heldout.top1 if heldout else None,
            heldout_ppl=heldout.ppl if heldout else None,
            realized_sparsity=heldout.realized_sparsity if heldout else None,
            train_s=train_s,
        )

        def work(session: Session) -> int:
            row = RouterRow(**values)
            session.add(row)
            session.flush()
            return row.id

        return self._write(work)

    def add_eval_results(
        self,
        run_id: int,
        label: str,
        router: str,
        results: Iterable[Mapping[str, Any]],
        router_id: int | None = None,
    ) -> None:
        """Store task results of the schedule ``label`` routed by ``router``: each result has
        ``task``, ``metric``, ``dense`` and ``routed`` and may have ``samples``, ``ci_low``,
        ``ci_high`` (the retention's interval), ``realized_sparsity`` and ``flop_saving``."""
        rows = []
        for result in results:
            missing = [key for key in EVAL_RESULT_KEYS if key not in result]
            if missing:
                raise StorageError(f"evaluation result lacks {', '.join(missing)}: {result!r}")
            rows.append(
                dict(
                    run_id=run_id,
                    router_id=router_id,
                    label=label,
                    router=router,
                    task=result["task"],
                    metric=result["metric"],
                    dense=result["dense"],
                    routed=result["routed"],
                    samples=result.get("samples"),
                    **{key: _finite(result.get(key)) for key in EVAL_RESULT_EXTRAS},
                )
            )
        self._write(lambda session: session.add_all(EvalResultRow(**row) for row in rows))

    def add_benchmark_rows(
        self, kind: str, rows: Iterable[Mapping[str, Any]], run_id: int | None = None
    ) -> None:
        """Store benchmark rows of one kind (``routing``, ``search``, ``coordinator`` or
        ``quality``), each a flat mapping as ``ftprune bench ... --json`` writes it, with no
        field named like a column of :data:`BENCHMARK_META`."""
        if kind not in BENCHMARK_KINDS:
            raise StorageError(
                f"unknown benchmark kind {kind!r}; choose one of {', '.join(BENCHMARK_KINDS)}"
            )
        records = []
        for row in rows:
            reserved = sorted(set(row) & set(BENCHMARK_META))
            if reserved:
                raise StorageError(f"benchmark row fields {reserved} are reserved: {row!r}")
            records.append(
                dict(kind=kind, run_id=run_id, row=dict(row), code_version=code_version())
            )
        self._write(lambda session: session.add_all(BenchmarkRow(**r) for r in records))

    def set_tuned_weights(
        self, study: str, rows: Iterable[Mapping[str, Any]], run_id: int | None = None
    ) -> None:
        """Store the best trials of the tuning study ``study`` (each row holds the fields
        of ``storage.schema.TunedWeightsRow`` but ``id``, ``run_id``, ``study`` and
        ``created_at``), replacing what an earlier call stored for the same study, in one
        transaction."""
        records = []
        for row in rows:
            missing = sorted(set(TUNED_WEIGHTS_KEYS) - set(row))
            if missing:
                raise StorageError(f"tuned weights lack {', '.join(missing)}: {row!r}")
            records.append(
                dict(run_id=run_id, study=study, **{key: row[key] for key in TUNED_WEIGHTS_KEYS})
            )

        def work(session: Session) -> None:  # replaces the study's rows: safe to run again
            session.execute(delete(TunedWeightsRow).where(TunedWeightsRow.study == study))
            session.add_all(TunedWeightsRow(**r) for r in records)

        self._write(work, _replay)

    # -- reads ----------------------------------------------------------------------------

    @_reads
    def evaluations(self, run_id: int) -> list[EvaluationRow]:
        with self._reader() as session:
            return list(
                session.scalars(
                    select(EvaluationRow)
                    .where(EvaluationRow.run_id == run_id)
                    .order_by(EvaluationRow.id)
                )
            )

    @_reads
    def heldout(self, run_id: int) -> list[HeldoutRow]:
        with self._reader() as session:
            return list(
                session.scalars(
                    select(HeldoutRow).where(HeldoutRow.run_id == run_id).order_by(HeldoutRow.id)
                )
            )

    @_reads
    def routers(self, run_id: int) -> list[RouterRow]:
        """The run's trained routers, oldest first."""
        with self._reader() as session:
            return list(
                session.scalars(
                    select(RouterRow).where(RouterRow.run_id == run_id).order_by(RouterRow.id)
                )
            )

    @_reads
    def search_state(self, run_id: int) -> dict[str, Any] | None:
        """The search state stored at the run's last generation boundary, if any."""
        with self._reader() as session:
            row = session.get(SearchStateRow, run_id)
            return row.state if row else None

    @_reads
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

    @_reads
    def run_status(self, ref: str | int) -> dict[str, Any]:
        """The status summary of a run, as ``ftprune search status --json`` prints it."""
        run = self.find_run(ref)
        with self._reader() as session:
            count, failed = session.execute(
                select(func.count(EvaluationRow.id), func.count(EvaluationRow.error)).where(
                    EvaluationRow.run_id == run.id
                )
            ).one()
        expires = _utc(run.lease_expires_at)
        return {
            "run": run.name,
            "id": run.id,
            "status": run.status,
            "generations": run.generations_done,
            "generations_planned": run.config.get("generations"),
            "evaluations": count,
            "failed_evaluations": failed,
            "best_fitness": run.best_fitness,
            "best_schedule": run.best_schedule,
            "target_sparsity": run.config.get("target_sparsity"),
            "model": run.config.get("model"),
            "error": run.error,
            "created_at": run.created_at.isoformat() if run.created_at else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "lease_owner": run.lease_owner,
            "lease_expires_at": expires.isoformat() if expires else None,
        }

    @_reads
    def tuned_weights(
        self, run_id: int | None, model: str, target_sparsity: float
    ) -> TunedWeightsRow | None:
        """The best tuned settings at ``target_sparsity`` (within 1e-9): among the rows of
        the run ``run_id`` (if given and it has any), else of any study tuned for ``model``,
        the row with the lowest held-out KL of the most recently stored study; None if none."""
        at_target = func.abs(TunedWeightsRow.target_sparsity - target_sparsity) < 1e-9
        clauses = [at_target & (TunedWeightsRow.model == model)]
        if run_id is not None:
            clauses.insert(0, at_target & (TunedWeightsRow.run_id == run_id))
        with self._reader() as session:
            for clause in clauses:
                latest = session.scalar(
                    select(TunedWeightsRow)
                    .where(clause)
                    .order_by(TunedWeightsRow.id.desc())
                    .limit(1)
                )
                if latest is not None:
                    return session.scalar(
                        select(TunedWeightsRow)
                        .where(clause, TunedWeightsRow.study == latest.study)
                        .order_by(TunedWeightsRow.heldout_kl, TunedWeightsRow.id)
                        .limit(1)
                    )
        return None


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


class _NoWrites:
    """The write-session factory of a reader store: every write method of :class:`Store`
    opens its transaction with ``self._session.begin()``, which refuses here."""

    def __init__(self, url: str) -> None:
        self.url = url

    def begin(self) -> NoReturn:
        raise StorageError(
            f"{redact(self.url)} is open read-only (storage.open_reader): open a Store to write"
        )


def _finite(value: Any) -> float | None:
    """A float column's value: None for a missing or non-finite number."""
    return None if value is None or not math.isfinite(value) else float(value)


def _run_row(session: Session, run_id: int, lock: bool = False) -> RunRow:
    """The run's row; ``lock``: held until the transaction ends (``FOR UPDATE`` on
    PostgreSQL; SQLite's write transactions hold the whole file already)."""
    run = session.get(RunRow, run_id, with_for_update=lock)
    if run is None:
        raise StorageError(f"no run with id {run_id}")
    return run


def _db_now(session: Session) -> datetime:
    """The time lease expiries are measured in: the server's clock on PostgreSQL (shared by
    every coordinator), this machine's on SQLite (a local file)."""
    if session.get_bind().dialect.name == "postgresql":
        now = session.scalar(select(func.clock_timestamp()))
        assert isinstance(now, datetime)
        return now.astimezone(timezone.utc)
    return utcnow()


def _utc(moment: datetime | None) -> datetime | None:
    """A stored timestamp as an aware UTC time (SQLite hands them back naive, in UTC)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _extend(run: RunRow, lease: Lease, now: datetime) -> None:
    run.lease_owner = lease.owner
    run.lease_expires_at = now + timedelta(seconds=lease.duration_s)


def _fence(session: Session, run_id: int, lease: Lease) -> None:
    """Lock the run's row and renew ``lease`` on it; :class:`LeaseLost` if the run's lease
    is no longer ``lease.owner``'s."""
    run = _run_row(session, run_id, lock=True)
    if run.lease_owner != lease.owner:
        holder = describe_owner(run.lease_owner) if run.lease_owner else "no coordinator"
        raise LeaseLost(
            f"run {run.name!r} is no longer driven by this coordinator ({holder} holds its "
            "lease now): stopping without writing"
        )
    _extend(run, lease, _db_now(session))


def _evaluation_row(
    run_id: int, generation: int, evaluation: Scored | EvaluationRecord
) -> EvaluationRow:
    """The row of one evaluation: its metrics, or (failed) its reason and NULL metrics."""
    detail = _engine_detail(evaluation) if isinstance(evaluation, EvaluationRecord) else {}
    common = dict(
        run_id=run_id,
        generation=generation,
        schedule=evaluation.schedule,
        router=evaluation.router,
        duration_s=evaluation.duration_s,
        worker=evaluation.worker,
        **detail,
    )
    m = evaluation.metrics
    if m is None:
        assert isinstance(evaluation, EvaluationRecord) and evaluation.error is not None
        return EvaluationRow(**common, error=evaluation.error[:2000])
    return EvaluationRow(
        **common,
        fitness=m.kl,
        top1=m.top1,
        ppl=m.ppl,
        realized_sparsity=m.realized_sparsity,
        fidelity=m.positions,
    )


def _engine_detail(record: EvaluationRecord) -> dict[str, Any]:
    return {
        "stage": record.stage,
        "sequences": list(record.sequences),
        "per_sequence": record.per_sequence,
        "forward_tokens": record.forward_tokens,
    }


def _generation_summaries(
    run_id: int,
    generation: int,
    scored: list[tuple[Scored | EvaluationRecord, Metrics]],
    best_so_far: float,
) -> list[GenerationRow]:
    """One summary row per fidelity (stage 0 = lowest); a single empty stage-0 row when the
    generation scored nothing new."""
    by_fidelity = sorted(scored, key=lambda pair: pair[1].positions)
    stages = [
        (fidelity, list(group))
        for fidelity, group in itertools.groupby(by_fidelity, key=lambda pair: pair[1].positions)
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
        fitness = [m.kl for _, m in group]
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
                compute_s=sum(e.duration_s for e, _ in group),
            )
        )
    return rows
