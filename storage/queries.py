"""Read-only queries returning pandas DataFrames: everything dashboards and reports show.

Guarantees:

- Every function reads in one transaction that never blocks writers (a deferred ``BEGIN`` on
  SQLite), so a dashboard can poll while a search writes.
- Columns and dtypes are the same on SQLite and PostgreSQL and do not depend on the data:
  timestamps are UTC-aware (``datetime64[us, UTC]``), nullable integers ``Int64``, JSON
  columns Python lists or dicts, and an empty result has the same columns as a full one.
- Rows come in a stable order (stated per function).
"""

from __future__ import annotations

from typing import Any, Unpack

import pandas as pd
from sqlalchemy import DateTime, Float, Integer, Select, String, func, select

from storage.schema import (
    BenchmarkRow,
    EvalResultRow,
    EvaluationRow,
    GenerationRow,
    HeldoutRow,
    RouterRow,
    RunRow,
)
from storage.store import Store

CURVE_X = "step"


def _frame(store: Store, statement: Select[Unpack[tuple[Any, ...]]]) -> pd.DataFrame:
    """The statement's rows as a DataFrame whose dtypes follow the SQL types, whatever the
    backend and the data: integers ``int64`` (``Int64`` where nullable), floats ``float64``,
    strings ``str``, timestamps UTC at microseconds; JSON stays Python objects."""
    with store.read_engine.connect() as connection:
        result = connection.execute(statement)
        frame = pd.DataFrame([tuple(row) for row in result], columns=list(result.keys()))
    for name, column in zip(frame.columns, statement.selected_columns, strict=True):
        if isinstance(column.type, DateTime):
            frame[name] = pd.to_datetime(frame[name], utc=True).dt.as_unit("us")
        elif isinstance(column.type, Integer):
            frame[name] = frame[name].astype(
                "Int64" if getattr(column, "nullable", False) else "int64"
            )
        elif isinstance(column.type, Float):
            frame[name] = frame[name].astype("float64")
        elif isinstance(column.type, String):
            frame[name] = frame[name].astype("str")
    return frame


def runs(store: Store) -> pd.DataFrame:
    """One row per run, newest first: identity, status, model, target sparsity, progress,
    evaluation count, best fitness and schedule, timings (``wall_s``: created to finished,
    or to the last update while running), the resolved ``config`` and any error."""
    counts = (
        select(EvaluationRow.run_id, func.count(EvaluationRow.id).label("evaluations"))
        .group_by(EvaluationRow.run_id)
        .subquery()
    )
    frame = _frame(
        store,
        select(
            RunRow.id,
            RunRow.name,
            RunRow.status,
            RunRow.model,
            RunRow.target_sparsity,
            RunRow.seed,
            RunRow.code_version,
            RunRow.generations_planned,
            RunRow.generations_done,
            func.coalesce(counts.c.evaluations, 0).label("evaluations"),
            RunRow.best_fitness,
            RunRow.best_schedule,
            RunRow.config,
            RunRow.error,
            RunRow.created_at,
            RunRow.updated_at,
            RunRow.finished_at,
        )
        .outerjoin(counts, counts.c.run_id == RunRow.id)
        .order_by(RunRow.id.desc()),
    )
    end = frame["finished_at"].fillna(frame["updated_at"])
    frame["wall_s"] = (end - frame["created_at"]).dt.total_seconds()
    return frame


def generation_stages(store: Store, run_id: int) -> pd.DataFrame:
    """Summary statistics per generation and stage (ordered so): fidelity, evaluations,
    best/mean/std/worst fitness of the stage, the run's best so far, summed worker time."""
    return _frame(
        store,
        select(
            GenerationRow.generation,
            GenerationRow.stage,
            GenerationRow.fidelity,
            GenerationRow.evaluations,
            GenerationRow.best_fitness,
            GenerationRow.mean_fitness,
            GenerationRow.std_fitness,
            GenerationRow.worst_fitness,
            GenerationRow.best_so_far,
            GenerationRow.compute_s,
            GenerationRow.created_at,
        )
        .where(GenerationRow.run_id == run_id)
        .order_by(GenerationRow.generation, GenerationRow.stage),
    )


def _evaluation_columns() -> tuple[Any, ...]:
    return (
        EvaluationRow.id,
        EvaluationRow.generation,
        EvaluationRow.stage,
        EvaluationRow.fidelity,
        EvaluationRow.schedule,
        EvaluationRow.router,
        EvaluationRow.fitness,
        EvaluationRow.top1,
        EvaluationRow.ppl,
        EvaluationRow.realized_sparsity,
        EvaluationRow.duration_s,
        EvaluationRow.forward_tokens,
        EvaluationRow.worker,
        EvaluationRow.created_at,
        EvaluationRow.error,
    )


def best_per_generation(store: Store, run_id: int) -> pd.DataFrame:
    """Per generation (ordered), its best evaluation at the generation's highest fidelity
    (ties go to the earlier evaluation; failed evaluations never count), with the same
    columns as :func:`evaluations`."""
    ranked = (
        select(
            *_evaluation_columns(),
            func.row_number()
            .over(
                partition_by=EvaluationRow.generation,
                order_by=(
                    func.coalesce(EvaluationRow.fidelity, 0).desc(),
                    EvaluationRow.fitness,
                    EvaluationRow.id,
                ),
            )
            .label("rank"),
        )
        .where(EvaluationRow.run_id == run_id, EvaluationRow.error.is_(None))
        .subquery()
    )
    columns = [ranked.c[c.key] for c in _evaluation_columns()]
    return _frame(store, select(*columns).where(ranked.c.rank == 1).order_by(ranked.c.generation))


def evaluations(store: Store, run_id: int, generation: int | None = None) -> pd.DataFrame:
    """Every evaluation of a run (or of one generation), in the order recorded: selection
    stage, fidelity, schedule, router, window metrics, duration, forward tokens, worker and
    the reason of a failed evaluation (``error``; its metrics are NA). Stage and forward
    tokens are NA on rows recorded before they were kept."""
    statement = select(*_evaluation_columns()).where(EvaluationRow.run_id == run_id)
    if generation is not None:
        statement = statement.where(EvaluationRow.generation == generation)
    return _frame(store, statement.order_by(EvaluationRow.id))


def heldout_results(store: Store, run_id: int) -> pd.DataFrame:
    """Held-out window metrics of a run's labelled schedules, in the order recorded."""
    return _frame(
        store,
        select(
            HeldoutRow.id,
            HeldoutRow.label,
            HeldoutRow.router,
            HeldoutRow.kl,
            HeldoutRow.top1,
            HeldoutRow.ppl,
            HeldoutRow.realized_sparsity,
            HeldoutRow.schedule,
            HeldoutRow.created_at,
        )
        .where(HeldoutRow.run_id == run_id)
        .order_by(HeldoutRow.id),
    )


def routers(store: Store, run_id: int | None = None) -> pd.DataFrame:
    """Trained routers (of one run, or all), in the order recorded: loss weights, checkpoint
    location and SHA-256, held-out metrics, training time and settings (curves: see
    :func:`training_curves`)."""
    statement = select(
        RouterRow.id,
        RouterRow.run_id,
        RouterRow.label,
        RouterRow.lambda_guide,
        RouterRow.lambda_sparse,
        RouterRow.lambda_distill,
        RouterRow.heldout_kl,
        RouterRow.heldout_top1,
        RouterRow.heldout_ppl,
        RouterRow.realized_sparsity,
        RouterRow.train_s,
        RouterRow.checkpoint,
        RouterRow.checkpoint_sha256,
        RouterRow.schedule,
        RouterRow.config,
        RouterRow.created_at,
    )
    if run_id is not None:
        statement = statement.where(RouterRow.run_id == run_id)
    return _frame(store, statement.order_by(RouterRow.id))


def training_curves(store: Store, run_id: int | None = None) -> pd.DataFrame:
    """Training curves in long form, one row per (router, series, point): ``router_id``,
    ``label``, ``series``, ``step`` (the curve's ``step`` values, else 0, 1, ...) and
    ``value``; ordered by router, series name, then point."""
    statement = select(RouterRow.id, RouterRow.label, RouterRow.curves)
    if run_id is not None:
        statement = statement.where(RouterRow.run_id == run_id)
    records: list[tuple[Any, ...]] = []
    for router_id, label, curves in _frame(store, statement.order_by(RouterRow.id)).itertuples(
        index=False
    ):
        length = max((len(values) for values in curves.values()), default=0)
        steps = curves.get(CURVE_X, range(length))
        for series in sorted(set(curves) - {CURVE_X}):
            records.extend(
                (router_id, label, series, step, value)
                for step, value in zip(steps, curves[series], strict=False)
            )
    frame = pd.DataFrame(records, columns=["router_id", "label", "series", "step", "value"])
    return frame.astype(
        {
            "router_id": "int64",
            "label": "str",
            "series": "str",
            "step": "float64",
            "value": "float64",
        }
    )


def eval_results(store: Store, run_id: int | None = None) -> pd.DataFrame:
    """Task results (of one run, or all), in the order recorded: task, metric, dense and
    routed values, ``retention`` (routed / dense; NaN where dense is 0), its paired bootstrap
    interval ``ci_low`` / ``ci_high`` and the routed model's ``realized_sparsity`` and
    ``flop_saving`` (NaN where not recorded)."""
    statement = select(
        EvalResultRow.id,
        EvalResultRow.run_id,
        EvalResultRow.router_id,
        EvalResultRow.label,
        EvalResultRow.router,
        EvalResultRow.task,
        EvalResultRow.metric,
        EvalResultRow.dense,
        EvalResultRow.routed,
        EvalResultRow.samples,
        EvalResultRow.ci_low,
        EvalResultRow.ci_high,
        EvalResultRow.realized_sparsity,
        EvalResultRow.flop_saving,
        EvalResultRow.created_at,
    )
    if run_id is not None:
        statement = statement.where(EvalResultRow.run_id == run_id)
    frame = _frame(store, statement.order_by(EvalResultRow.id))
    frame["retention"] = frame["routed"] / frame["dense"].where(frame["dense"] != 0)
    return frame


def benchmark_rows(store: Store, kind: str | None = None) -> pd.DataFrame:
    """Benchmark rows (of one kind, or all), oldest first: the columns of
    :data:`storage.records.BENCHMARK_META`, then each row's own fields (NaN where a row lacks
    one)."""
    statement = select(
        BenchmarkRow.id,
        BenchmarkRow.kind,
        BenchmarkRow.run_id,
        BenchmarkRow.code_version,
        BenchmarkRow.created_at,
        BenchmarkRow.row,
    )
    if kind is not None:
        statement = statement.where(BenchmarkRow.kind == kind)
    frame = _frame(store, statement.order_by(BenchmarkRow.id))
    fields = pd.DataFrame(list(frame.pop("row")), index=frame.index)
    return pd.concat([frame, fields], axis=1)
