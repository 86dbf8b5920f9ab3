"""The database schema: SQLAlchemy 2 typed ORM tables, all prefixed ``ftp_``.

The prefix keeps ftprune's tables apart from others sharing the database (Optuna's among
them). Constraint names follow one naming convention so migrations can address them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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

    evaluations: Mapped[list["EvaluationRow"]] = relationship(back_populates="run")


class EvaluationRow(Base):
    """One scored schedule of a run's search (calibration split)."""

    __tablename__ = "ftp_evaluations"
    __table_args__ = (Index(None, "run_id", "generation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ftp_runs.id", ondelete="CASCADE"))
    generation: Mapped[int] = mapped_column(Integer)
    schedule: Mapped[list[float]] = mapped_column(JSON)
    router: Mapped[str] = mapped_column(String(40))
    fitness: Mapped[float] = mapped_column(Float)
    top1: Mapped[float] = mapped_column(Float)
    ppl: Mapped[float] = mapped_column(Float)
    realized_sparsity: Mapped[float] = mapped_column(Float)
    duration_s: Mapped[float] = mapped_column(Float)
    worker: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    run: Mapped[RunRow] = relationship(back_populates="evaluations")


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
