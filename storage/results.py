"""What a run produces beside its search, on SQL: trained routers, task results, benchmark
rows and the best settings of tuning studies. :class:`storage.store.Store` offers these
methods; each write is one transaction (:mod:`storage.transactions`), each input is
checked, with a one-line :class:`StorageError`, before anything is written.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from storage.engine import StorageError
from storage.records import (
    BENCHMARK_KINDS,
    BENCHMARK_META,
    EVAL_RESULT_EXTRAS,
    EVAL_RESULT_KEYS,
    LOSS_WEIGHTS,
    TUNED_WEIGHTS_KEYS,
    Metrics,
    code_version,
    finite,
)
from storage.schema import BenchmarkRow, EvalResultRow, RouterRow, TunedWeightsRow
from storage.transactions import Transactions, reads, replay


class ResultStore(Transactions):
    """Routers, task results, benchmark rows and tuned settings (see the module docstring)."""

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

        return self.write(work)

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
                    **{key: finite(result.get(key)) for key in EVAL_RESULT_EXTRAS},
                )
            )
        self.write(lambda session: session.add_all(EvalResultRow(**row) for row in rows))

    def add_benchmark_rows(
        self, kind: str, rows: Iterable[Mapping[str, Any]], run_id: int | None = None
    ) -> None:
        """Store benchmark rows of one kind (``routing``, ``search``, ``coordinator`` or
        ``quality``), each a flat mapping as ``ftprune bench ... --json`` writes it, with no
        field named like a column of :data:`storage.records.BENCHMARK_META`."""
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
        self.write(lambda session: session.add_all(BenchmarkRow(**r) for r in records))

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

        self.write(work, replay)

    @reads
    def routers(self, run_id: int) -> list[RouterRow]:
        """The run's trained routers, oldest first."""
        with self._reader() as session:
            return list(
                session.scalars(
                    select(RouterRow).where(RouterRow.run_id == run_id).order_by(RouterRow.id)
                )
            )

    @reads
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
