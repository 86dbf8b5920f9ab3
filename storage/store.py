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
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any, Iterable, Mapping, NoReturn, Protocol, Sequence

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.engine import (
    StorageError,
    database_errors,
    default_url,
    make_engine,
    make_reader_engine,
    read_only,
    redact,
    require_existing,
)
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
    a record carries them and NULL otherwise."""

    schedule: list[float]
    router: str
    metrics: Metrics
    duration_s: float
    worker: str
    stage: int
    sequences: list[int]
    per_sequence: dict[str, list[float]]
    forward_tokens: int


class Store:
    """ftprune's database; see the module docstring for its guarantees."""

    def __init__(self, url: str | None = None, create: bool = True) -> None:
        """Open the database at ``url`` to write, bringing it to the newest schema first
        (:func:`open_reader` reads without changing anything).

        With ``create=False`` a missing SQLite file is a :class:`StorageError`, so commands
        that need an existing database never leave an empty one behind.
        """
        url = url or default_url()
        if not create:
            require_existing(url)
        engine = make_engine(url)
        with database_errors(url):
            upgrade(engine)
        self._attach(url, engine, writable=True)

    @classmethod
    def _reading(cls, url: str, engine: Engine) -> Store:
        """A store over a reader engine (see :func:`open_reader`)."""
        store = cls.__new__(cls)
        store._attach(url, engine, writable=False)
        return store

    def _attach(self, url: str, engine: Engine, writable: bool) -> None:
        self.url = url
        self.engine = engine
        self.writable = writable
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

    # -- runs ---------------------------------------------------------------------------

    def create_run(self, name: str | None, config: dict[str, Any], seed: int) -> RunRow:
        """Insert a run in status ``running``; raises :class:`StorageError` on a taken name."""
        with self._session.begin() as session:
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
            session.flush()
            if not name:
                run.name = f"run-{run.id}"
            return run

    def run_name_taken(self, name: str) -> bool:
        with self._reader() as session:
            return session.scalar(select(RunRow.id).where(RunRow.name == name)) is not None

    def find_run(self, ref: str | int) -> RunRow:
        """The run with id ``ref`` or name ``ref``; raises :class:`StorageError` if none."""
        with self._reader() as session:
            run = session.scalar(select(RunRow).where(RunRow.name == str(ref)))
            if run is None and str(ref).isdigit():
                run = session.get(RunRow, int(ref))
            if run is None:
                raise StorageError(f"no run {ref!r} in {redact(self.url)}")
            return run

    def latest_run(self) -> RunRow | None:
        with self._reader() as session:
            return session.scalar(select(RunRow).order_by(RunRow.id.desc()).limit(1))

    def record_generation(
        self,
        run_id: int,
        generation: int,
        evaluations: Iterable[Scored],
        best_fitness: float,
        best_schedule: list[float],
        search_state: dict[str, Any] | None = None,
    ) -> None:
        """Store a generation's new evaluations, its summary per stage (one stage per
        fidelity, lowest first), the run's progress and (if given) the search state to
        resume from, in one transaction."""
        scored = [(e, e.metrics) for e in evaluations]
        with self._session.begin() as session:
            session.add_all(
                EvaluationRow(
                    run_id=run_id,
                    generation=generation,
                    schedule=e.schedule,
                    router=e.router,
                    fitness=m.kl,
                    top1=m.top1,
                    ppl=m.ppl,
                    realized_sparsity=m.realized_sparsity,
                    duration_s=e.duration_s,
                    worker=e.worker,
                    fidelity=m.positions,
                    **(_engine_detail(e) if isinstance(e, EvaluationRecord) else {}),
                )
                for e, m in scored
            )
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

    def add_heldout(self, run_id: int, label: str, evaluation: Scored) -> None:
        """Store held-out window metrics of one schedule under ``label``."""
        m = evaluation.metrics
        with self._session.begin() as session:
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

    def set_status(self, run_id: int, status: str, error: str | None = None) -> None:
        with self._session.begin() as session:
            run = _run_row(session, run_id)
            run.status = status
            run.error = error[:2000] if error else None
            run.updated_at = utcnow()
            if status != "running":
                run.finished_at = utcnow()

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
        row = RouterRow(
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
        with self._session.begin() as session:
            session.add(row)
            session.flush()
            return row.id

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
                EvalResultRow(
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
        with self._session.begin() as session:
            session.add_all(rows)

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
                BenchmarkRow(kind=kind, run_id=run_id, row=dict(row), code_version=code_version())
            )
        with self._session.begin() as session:
            session.add_all(records)

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
                TunedWeightsRow(
                    run_id=run_id, study=study, **{key: row[key] for key in TUNED_WEIGHTS_KEYS}
                )
            )
        with self._session.begin() as session:
            session.execute(delete(TunedWeightsRow).where(TunedWeightsRow.study == study))
            session.add_all(records)

    # -- reads ----------------------------------------------------------------------------

    def evaluations(self, run_id: int) -> list[EvaluationRow]:
        with self._reader() as session:
            return list(
                session.scalars(
                    select(EvaluationRow)
                    .where(EvaluationRow.run_id == run_id)
                    .order_by(EvaluationRow.id)
                )
            )

    def heldout(self, run_id: int) -> list[HeldoutRow]:
        with self._reader() as session:
            return list(
                session.scalars(
                    select(HeldoutRow).where(HeldoutRow.run_id == run_id).order_by(HeldoutRow.id)
                )
            )

    def routers(self, run_id: int) -> list[RouterRow]:
        """The run's trained routers, oldest first."""
        with self._reader() as session:
            return list(
                session.scalars(
                    select(RouterRow).where(RouterRow.run_id == run_id).order_by(RouterRow.id)
                )
            )

    def search_state(self, run_id: int) -> dict[str, Any] | None:
        """The search state stored at the run's last generation boundary, if any."""
        with self._reader() as session:
            row = session.get(SearchStateRow, run_id)
            return row.state if row else None

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

    def run_status(self, ref: str | int) -> dict[str, Any]:
        """The status summary of a run, as ``ftprune search status --json`` prints it."""
        run = self.find_run(ref)
        with self._reader() as session:
            count = session.scalar(
                select(func.count(EvaluationRow.id)).where(EvaluationRow.run_id == run.id)
            )
        return {
            "run": run.name,
            "id": run.id,
            "status": run.status,
            "generations": run.generations_done,
            "generations_planned": run.config.get("generations"),
            "evaluations": count,
            "best_fitness": run.best_fitness,
            "best_schedule": run.best_schedule,
            "target_sparsity": run.config.get("target_sparsity"),
            "model": run.config.get("model"),
            "error": run.error,
            "created_at": run.created_at.isoformat() if run.created_at else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        }

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


def _run_row(session: Session, run_id: int) -> RunRow:
    run = session.get(RunRow, run_id)
    if run is None:
        raise StorageError(f"no run with id {run_id}")
    return run


def _engine_detail(record: EvaluationRecord) -> dict[str, Any]:
    return {
        "stage": record.stage,
        "sequences": list(record.sequences),
        "per_sequence": record.per_sequence,
        "forward_tokens": record.forward_tokens,
    }


def _generation_summaries(
    run_id: int, generation: int, scored: list[tuple[Scored, Metrics]], best_so_far: float
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
