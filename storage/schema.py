"""The database schema: SQLAlchemy 2 typed ORM tables, all prefixed ``ftp_``.

The prefix keeps ftprune's tables apart from others sharing the database (Optuna's among
them). Constraint names follow one naming convention so migrations can address them. Every
change here needs a migration in ``storage/migrations/versions``; ``ftprune db check`` fails
until the two agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from storage.records import utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class RunRow(Base):
    """One search run: its resolved config, progress and best schedule so far."""

    __tablename__ = "ftp_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(20))  # running | finished | failed
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    code_version: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    generations_done: Mapped[int] = mapped_column(Integer, default=0)
    best_fitness: Mapped[float | None] = mapped_column(Float)
    best_schedule: Mapped[list[float] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(String(2000))
    # What storage reads about the run (storage.records.RunPlan; the config above is kept
    # whole and never read): NULL where not known.
    model: Mapped[str | None] = mapped_column(String(500))
    target_sparsity: Mapped[float | None] = mapped_column(Float)
    generations_planned: Mapped[int | None] = mapped_column(Integer)
    # The coordinator driving the run and until when its claim holds (NULL: nobody); see
    # storage.store.Store.acquire_lease.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    evaluations: Mapped[list["EvaluationRow"]] = relationship(back_populates="run")


class EvaluationRow(Base):
    """One scored schedule of a run's search (calibration split). A candidate whose scoring
    raised or gave a non-finite fitness has ``error`` set and no metrics (NULL)."""

    __tablename__ = "ftp_evaluations"
    __table_args__ = (Index(None, "run_id", "generation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ftp_runs.id", ondelete="CASCADE"))
    generation: Mapped[int] = mapped_column(Integer)
    schedule: Mapped[list[float]] = mapped_column(JSON)
    router: Mapped[str] = mapped_column(String(40))
    fitness: Mapped[float | None] = mapped_column(Float)
    top1: Mapped[float | None] = mapped_column(Float)
    ppl: Mapped[float | None] = mapped_column(Float)
    realized_sparsity: Mapped[float | None] = mapped_column(Float)
    duration_s: Mapped[float] = mapped_column(Float)
    worker: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    error: Mapped[str | None] = mapped_column(String(2000))  # why scoring failed; NULL if not
    # Window positions the fitness was measured on; NULL for rows recorded before it was kept.
    fidelity: Mapped[int | None] = mapped_column(Integer)
    # Search-engine detail (NULL on older rows): the selection stage, the calibration
    # sequences the fitness covers, the per-sequence window sums computed by this evaluation
    # ({index: [kl_sum, agree, nll_sum, positions, kept, seen, tokens]}; sequences served
    # from the fitness cache are not repeated) and the forward tokens it cost.
    stage: Mapped[int | None] = mapped_column(Integer)
    sequences: Mapped[list[int] | None] = mapped_column(JSON)
    per_sequence: Mapped[dict[str, list[float]] | None] = mapped_column(JSON)
    forward_tokens: Mapped[int | None] = mapped_column(Integer)

    run: Mapped[RunRow] = relationship(back_populates="evaluations")


class SearchStateRow(Base):
    """The search state of a run at its last generation boundary (what resume needs)."""

    __tablename__ = "ftp_search_states"

    run_id: Mapped[int] = mapped_column(
        ForeignKey("ftp_runs.id", ondelete="CASCADE"), primary_key=True
    )
    generation: Mapped[int] = mapped_column(Integer)  # the next generation to run
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class HeldoutRow(Base):
    """Held-out window metrics of a named schedule of a run (e.g. ``best``, ``uniform``)."""

    __tablename__ = "ftp_heldout_results"
    __table_args__ = (Index(None, "run_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ftp_runs.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(100))
    schedule: Mapped[list[float]] = mapped_column(JSON)
    router: Mapped[str] = mapped_column(String(40))
    kl: Mapped[float] = mapped_column(Float)
    top1: Mapped[float] = mapped_column(Float)
    ppl: Mapped[float] = mapped_column(Float)
    realized_sparsity: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class GenerationRow(Base):
    """Summary statistics of one selection stage of a generation: the evaluations the
    generation recorded at one fidelity (stage 0 is the lowest fidelity)."""

    __tablename__ = "ftp_generations"
    __table_args__ = (UniqueConstraint("run_id", "generation", "stage"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ftp_runs.id", ondelete="CASCADE"))
    generation: Mapped[int] = mapped_column(Integer)
    stage: Mapped[int] = mapped_column(Integer)
    fidelity: Mapped[int | None] = mapped_column(Integer)
    evaluations: Mapped[int] = mapped_column(Integer)
    best_fitness: Mapped[float | None] = mapped_column(Float)
    mean_fitness: Mapped[float | None] = mapped_column(Float)
    std_fitness: Mapped[float | None] = mapped_column(Float)
    worst_fitness: Mapped[float | None] = mapped_column(Float)
    best_so_far: Mapped[float] = mapped_column(Float)  # the run's best after this generation
    compute_s: Mapped[float] = mapped_column(Float)  # summed worker time of the evaluations
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RouterRow(Base):
    """A trained dynamic router: loss weights, checkpoint, training curves, held-out metrics."""

    __tablename__ = "ftp_routers"
    __table_args__ = (Index(None, "run_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ftp_runs.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(100))
    schedule: Mapped[list[float]] = mapped_column(JSON)
    lambda_guide: Mapped[float] = mapped_column(Float)
    lambda_sparse: Mapped[float] = mapped_column(Float)
    lambda_distill: Mapped[float] = mapped_column(Float)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    checkpoint: Mapped[str] = mapped_column(String(1000))  # path or URI
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    curves: Mapped[dict[str, list[float]]] = mapped_column(JSON)  # series name -> values
    heldout_kl: Mapped[float | None] = mapped_column(Float)
    heldout_top1: Mapped[float | None] = mapped_column(Float)
    heldout_ppl: Mapped[float | None] = mapped_column(Float)
    realized_sparsity: Mapped[float | None] = mapped_column(Float)
    train_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvalResultRow(Base):
    """One task metric of a routed model next to the dense model's value."""

    __tablename__ = "ftp_eval_results"
    __table_args__ = (Index(None, "run_id", "task"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ftp_runs.id", ondelete="CASCADE"))
    router_id: Mapped[int | None] = mapped_column(ForeignKey("ftp_routers.id", ondelete="SET NULL"))
    label: Mapped[str] = mapped_column(String(100))  # which schedule, e.g. best or uniform
    router: Mapped[str] = mapped_column(String(40))  # static, random or dynamic
    task: Mapped[str] = mapped_column(String(200))
    metric: Mapped[str] = mapped_column(String(100))
    dense: Mapped[float] = mapped_column(Float)
    routed: Mapped[float] = mapped_column(Float)
    samples: Mapped[int | None] = mapped_column(Integer)
    ci_low: Mapped[float | None] = mapped_column(Float)  # paired bootstrap CI of the retention
    ci_high: Mapped[float | None] = mapped_column(Float)
    realized_sparsity: Mapped[float | None] = mapped_column(Float)
    flop_saving: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BenchmarkRow(Base):
    """One benchmark row as ``ftprune bench ... --json`` writes it, kept whole as JSON."""

    __tablename__ = "ftp_benchmarks"
    __table_args__ = (Index(None, "kind", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))  # routing, search, coordinator or quality
    run_id: Mapped[int | None] = mapped_column(ForeignKey("ftp_runs.id", ondelete="SET NULL"))
    row: Mapped[dict[str, Any]] = mapped_column(JSON)
    code_version: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TunedWeightsRow(Base):
    """One best trial of an ``ftprune tune`` study (one row, or one per Pareto-front trial
    of a two-objective study): the router-training settings it sampled and what it scored.
    ``run_id`` is the tuned run, NULL for a study tuned on a config's uniform schedule."""

    __tablename__ = "ftp_tuned_weights"
    __table_args__ = (Index(None, "model", "target_sparsity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("ftp_runs.id", ondelete="CASCADE"))
    study: Mapped[str] = mapped_column(String(200))
    trial: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(500))
    target_sparsity: Mapped[float] = mapped_column(Float)
    schedule: Mapped[list[float]] = mapped_column(JSON)
    lambda_guide: Mapped[float] = mapped_column(Float)
    lambda_sparse: Mapped[float] = mapped_column(Float)
    lambda_distill: Mapped[float] = mapped_column(Float)
    guide_steps: Mapped[int] = mapped_column(Integer)
    lr: Mapped[float] = mapped_column(Float)
    heldout_kl: Mapped[float] = mapped_column(Float)
    objectives: Mapped[dict[str, float]] = mapped_column(JSON)  # objective name -> value
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
