"""What a store is given and what it hands back, independent of where it keeps them: the
shapes of scored schedules, the limits rows are checked
against, and the one computation of the values an evaluation row and a run's status hold.

Every store (:class:`storage.store.Store` on SQL, :class:`storage.memory.MemoryStore`)
builds its rows from these functions, so the backends cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Protocol

from storage.engine import StorageError

if TYPE_CHECKING:
    from storage.protocol import StoredRun

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


def run_status(run: StoredRun, evaluations: int, failed: int) -> dict[str, Any]:
    """The status summary of ``run`` with ``evaluations`` stored evaluations, ``failed`` of
    them failed, as ``ftprune search status --json`` prints it."""
    expires = as_utc(run.lease_expires_at)
    return {
        "run": run.name,
        "id": run.id,
        "status": run.status,
        "generations": run.generations_done,
        "generations_planned": run.config.get("generations"),
        "evaluations": evaluations,
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
