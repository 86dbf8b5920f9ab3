"""What a store is given and what it hands back, independent of where it keeps them: the
shapes of scored schedules and of stored runs, evaluations and held-out rows, the limits
rows are checked against, and the one computation of the values each row holds.

Every store (:class:`storage.store.Store` on SQL, :class:`storage.memory.MemoryStore`)
builds its rows from these functions, so the backends cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Mapping, Protocol

from storage.engine import StorageError

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
MESSAGE_CHARS = 2000  # a stored error message (a run's, a failed evaluation's) is cut here


class GenerationExists(StorageError):
    """The run already holds the generation being recorded (nothing was written)."""


def code_version() -> str:
    """The installed ``ftprune`` distribution's version, stored with every run and bench row."""
    try:
        return version("ftprune")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def utcnow() -> datetime:
    """Now, as an aware UTC time."""
    return datetime.now(timezone.utc)


def as_utc(moment: datetime | None) -> datetime | None:
    """A stored timestamp as an aware UTC time (SQLite hands them back naive, in UTC)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


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


# What a store hands back about a run: the SQL store's ORM rows and the in-memory store's
# records alike satisfy these. Each is a snapshot taken when it was read: later writes do
# not change it, and changing it changes nothing stored. JSON-valued fields come back as
# JSON gives them (lists for tuples, string keys).


class StoredRun(Protocol):
    """A run: identity, its config (stored whole, never read by storage), what its
    :class:`RunPlan` said, progress, best schedule so far and lease."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def seed(self) -> int: ...
    @property
    def generations_done(self) -> int: ...
    @property
    def model(self) -> str | None: ...
    @property
    def target_sparsity(self) -> float | None: ...
    @property
    def generations_planned(self) -> int | None: ...
    @property
    def best_fitness(self) -> float | None: ...
    @property
    def best_schedule(self) -> list[float] | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def finished_at(self) -> datetime | None: ...
    @property
    def lease_owner(self) -> str | None: ...
    @property
    def lease_expires_at(self) -> datetime | None: ...


class StoredEvaluation(Protocol):
    """One scored (or failed) schedule of a run's search; a failed one has ``error`` and
    None for every metric, and the engine's detail is None where it was not recorded."""

    @property
    def generation(self) -> int: ...
    @property
    def schedule(self) -> list[float]: ...
    @property
    def router(self) -> str: ...
    @property
    def fitness(self) -> float | None: ...
    @property
    def top1(self) -> float | None: ...
    @property
    def ppl(self) -> float | None: ...
    @property
    def realized_sparsity(self) -> float | None: ...
    @property
    def fidelity(self) -> int | None: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def worker(self) -> str: ...
    @property
    def error(self) -> str | None: ...
    @property
    def stage(self) -> int | None: ...
    @property
    def sequences(self) -> list[int] | None: ...
    @property
    def per_sequence(self) -> dict[str, list[float]] | None: ...
    @property
    def forward_tokens(self) -> int | None: ...


class StoredHeldout(Protocol):
    """Held-out window metrics of one labelled schedule of a run."""

    @property
    def label(self) -> str: ...
    @property
    def schedule(self) -> list[float]: ...
    @property
    def router(self) -> str: ...
    @property
    def kl(self) -> float: ...
    @property
    def top1(self) -> float: ...
    @property
    def ppl(self) -> float: ...
    @property
    def realized_sparsity(self) -> float: ...


@dataclass(frozen=True)
class EvaluationRecord:
    """A :class:`Scored` candidate with the search engine's detail: its selection stage, the
    calibration sequences its fitness covers, the per-sequence sums this evaluation computed
    and the forward tokens it cost. ``record_generation`` stores these fields when a record
    carries them and NULL otherwise. A failed candidate has ``error`` (why) and no
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


@dataclass(frozen=True)
class RunPlan:
    """What storage keeps about a run in typed columns (beside the run's config, which it
    stores whole and never reads): the model, the target sparsity and the generations
    planned. None: not known (a run stored without them reads back NULL)."""

    model: str | None = None
    target_sparsity: float | None = None
    generations_planned: int | None = None


def finite(value: float | None) -> float | None:
    """A float column's value: None for a missing or non-finite number."""
    return None if value is None or not math.isfinite(value) else float(value)


def evaluation_values(
    run_id: int, generation: int, evaluation: Scored | EvaluationRecord
) -> dict[str, Any]:
    """The fields of one stored evaluation: its metrics, or (failed) its reason, cut to
    :data:`MESSAGE_CHARS`, and no metrics; the engine's detail when it carries it."""
    values: dict[str, Any] = dict(
        run_id=run_id,
        generation=generation,
        schedule=list(evaluation.schedule),
        router=evaluation.router,
        duration_s=evaluation.duration_s,
        worker=evaluation.worker,
    )
    if isinstance(evaluation, EvaluationRecord):
        values.update(
            stage=evaluation.stage,
            sequences=list(evaluation.sequences),
            per_sequence=evaluation.per_sequence,
            forward_tokens=evaluation.forward_tokens,
        )
    m = evaluation.metrics
    if m is None:
        assert isinstance(evaluation, EvaluationRecord) and evaluation.error is not None
        return {**values, "error": evaluation.error[:MESSAGE_CHARS]}
    return {
        **values,
        "fitness": m.kl,
        "top1": m.top1,
        "ppl": m.ppl,
        "realized_sparsity": m.realized_sparsity,
        "fidelity": m.positions,
    }


def assign(row: object, values: Mapping[str, Any]) -> None:
    """Set the fields of ``row`` (a run as a backend keeps it) to ``values``."""
    for name, value in values.items():
        setattr(row, name, value)


def new_run_values(
    name: str, config: dict[str, Any], seed: int, plan: RunPlan | None
) -> dict[str, Any]:
    """The fields of a run as created: status ``running``, this code's version, and what
    ``plan`` says (None where it is not given)."""
    plan = plan or RunPlan()
    return dict(
        name=name,
        status="running",
        config=config,
        seed=seed,
        code_version=code_version(),
        model=plan.model,
        target_sparsity=plan.target_sparsity,
        generations_planned=plan.generations_planned,
    )


def unnamed_run(run_id: int) -> str:
    """The name of a run created without one."""
    return f"run-{run_id}"


def progress_values(
    generation: int, best_fitness: float, best_schedule: list[float]
) -> dict[str, Any]:
    """The run's fields once ``generation`` is stored with this best fitness and schedule."""
    return dict(
        generations_done=generation + 1,
        best_fitness=best_fitness,
        best_schedule=list(best_schedule),
        updated_at=utcnow(),
    )


def status_values(status: str, error: str | None) -> dict[str, Any]:
    """The run's fields once its status is ``status`` with ``error`` (cut to
    :data:`MESSAGE_CHARS`; None or empty clears it): any status but ``running`` is an end,
    and sets ``finished_at``."""
    now = utcnow()
    values: dict[str, Any] = dict(
        status=status, error=error[:MESSAGE_CHARS] if error else None, updated_at=now
    )
    if status != "running":
        values["finished_at"] = now
    return values


def heldout_values(run_id: int, label: str, evaluation: Scored) -> dict[str, Any]:
    """The fields of a held-out row of ``evaluation``'s schedule under ``label``."""
    m = evaluation.metrics
    return dict(
        run_id=run_id,
        label=label,
        schedule=list(evaluation.schedule),
        router=evaluation.router,
        kl=m.kl,
        top1=m.top1,
        ppl=m.ppl,
        realized_sparsity=m.realized_sparsity,
    )


def no_run(run_id: int) -> StorageError:
    """The error of a write or lookup naming a run id the store does not hold."""
    return StorageError(f"no run with id {run_id}")


def name_taken(name: str) -> StorageError:
    """The error of creating a run under a name another run has."""
    return StorageError(f"a run named {name!r} already exists")


def generation_exists(run: str, generation: int) -> GenerationExists:
    """The error of recording generation ``generation`` of the run ``run`` a second time."""
    return GenerationExists(
        f"run {run!r} already holds generation {generation}: a generation is recorded once"
    )


def run_status(run: StoredRun, evaluations: int, failed: int) -> dict[str, Any]:
    """The status summary of ``run`` with ``evaluations`` stored evaluations, ``failed`` of
    them failed, as ``ftprune search status --json`` prints it."""
    expires = as_utc(run.lease_expires_at)
    return {
        "run": run.name,
        "id": run.id,
        "status": run.status,
        "generations": run.generations_done,
        "generations_planned": run.generations_planned,
        "evaluations": evaluations,
        "failed_evaluations": failed,
        "best_fitness": run.best_fitness,
        "best_schedule": run.best_schedule,
        "target_sparsity": run.target_sparsity,
        "model": run.model,
        "error": run.error,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "lease_owner": run.lease_owner,
        "lease_expires_at": expires.isoformat() if expires else None,
    }
