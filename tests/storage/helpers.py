"""Values and workers shared by the storage tests.

:class:`Scored` and :class:`Metrics` are plain records with the fields
:class:`storage.store.Scored` asks for, so the suite needs no model (and no torch).
:func:`write_run` is what each of several concurrent writer processes runs.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any

from sqlalchemy import inspect


@dataclass(frozen=True)
class Metrics:
    kl: float
    top1: float = 0.9
    ppl: float = 10.0
    realized_sparsity: float = 0.3
    positions: int = 64


@dataclass(frozen=True)
class Scored:
    schedule: list[float]
    metrics: Metrics
    router: str = "static"
    duration_s: float = 0.5
    worker: str = "w:1"


def scored(
    kl: float, schedule: list[float], positions: int = 64, duration_s: float = 0.5
) -> Scored:
    return Scored(
        schedule=schedule, metrics=Metrics(kl=kl, positions=positions), duration_s=duration_s
    )


def write_run(
    url: str, writer: int, generations: int, per_generation: int, barrier: Any, results: Any
) -> None:
    """Open the store (racing the others to create the schema), create one run and record
    ``generations`` generations of ``per_generation`` evaluations; report to ``results``
    ``(writer, start, end, None)`` (wall-clock times) or ``(writer, start, end, traceback)``."""
    from storage import Store

    barrier.wait(timeout=120)
    started = time.time()
    try:
        store = Store(url)
        run = store.create_run(f"writer-{writer}", {"writer": writer}, seed=writer)
        best = float("inf")
        for generation in range(generations):
            batch = [
                scored(
                    kl=writer + generation / 100 + i / 10_000,
                    schedule=[writer, generation, i],
                    duration_s=0.01,
                )
                for i in range(per_generation)
            ]
            best = min(best, min(e.metrics.kl for e in batch))
            store.record_generation(run.id, generation, batch, best, [writer, generation, 0])
        store.set_status(run.id, "finished")
        store.close()
        results.put((writer, started, time.time(), None))
    except BaseException:
        results.put((writer, started, time.time(), traceback.format_exc()))


def schema_snapshot(connection: Any, prefix: str) -> dict[str, Any]:
    """Every table named ``prefix*`` as reflection sees it: columns (type, nullability,
    default), primary key, foreign keys, indexes and unique constraints, by name."""
    inspector = inspect(connection)
    snapshot = {}
    for table in sorted(t for t in inspector.get_table_names() if t.startswith(prefix)):
        snapshot[table] = {
            "columns": [
                (c["name"], repr(c["type"]), c["nullable"], c.get("default"))
                for c in inspector.get_columns(table)
            ],
            "primary_key": inspector.get_pk_constraint(table),
            "foreign_keys": sorted(
                (
                    fk["name"] or "",
                    fk["constrained_columns"],
                    fk["referred_table"],
                    fk["referred_columns"],
                    sorted(fk["options"].items()),
                )
                for fk in inspector.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (ix["name"], ix["column_names"], bool(ix["unique"]))
                for ix in inspector.get_indexes(table)
            ),
            "unique": sorted(
                (uq["name"] or "", uq["column_names"])
                for uq in inspector.get_unique_constraints(table)
            ),
        }
    return snapshot
