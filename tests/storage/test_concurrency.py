"""Eight processes writing evaluations at once, on SQLite and on PostgreSQL: they race to
create the schema on an empty database, then each records a run; nothing is lost and no
writer raises."""

from __future__ import annotations

import multiprocessing
import time

from sqlalchemy import func, select

from storage import Store, queries
from storage.schema import EvaluationRow, GenerationRow
from tests.storage.helpers import write_run

WRITERS = 8
GENERATIONS = 12
PER_GENERATION = 10


def test_eight_writers_lose_nothing_and_raise_nothing(db_url, capsys):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(WRITERS), context.Queue()
    processes = [
        context.Process(
            target=write_run, args=(db_url, writer, GENERATIONS, PER_GENERATION, barrier, results)
        )
        for writer in range(WRITERS)
    ]
    started = time.perf_counter()
    for process in processes:
        process.start()
    reports = sorted(results.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    wall = time.perf_counter() - started

    failures = [error for *_, error in reports if error]
    assert not failures, failures[0]
    assert [p.exitcode for p in processes] == [0] * WRITERS
    first_end, last_start = min(r[2] for r in reports), max(r[1] for r in reports)
    assert last_start < first_end, "the writers did not overlap: nothing was concurrent"

    store = Store(db_url, create=False)
    runs = queries.runs(store)
    assert sorted(runs["name"]) == sorted(f"writer-{w}" for w in range(WRITERS))
    assert set(runs["status"]) == {"finished"}
    assert runs["evaluations"].tolist() == [GENERATIONS * PER_GENERATION] * WRITERS
    with store.read_engine.connect() as connection:
        rows = connection.execute(select(EvaluationRow.schedule)).scalars().all()
        summaries = connection.scalar(select(func.count()).select_from(GenerationRow))
    expected = {
        (w, g, i) for w in range(WRITERS) for g in range(GENERATIONS) for i in range(PER_GENERATION)
    }
    assert sorted(tuple(s) for s in rows) == sorted(expected)  # each exactly once
    assert summaries == WRITERS * GENERATIONS
    for run_id in runs["id"]:
        assert (
            queries.generation_stages(store, run_id)["evaluations"].tolist()
            == [PER_GENERATION] * GENERATIONS
        )

    span = max(end for _, _, end, _ in reports) - min(start for _, start, _, _ in reports)
    total = WRITERS * GENERATIONS * PER_GENERATION
    with capsys.disabled():
        print(
            f"\n{db_url.split(':')[0]}: {WRITERS} writers, {WRITERS * GENERATIONS} "
            f"generation transactions, {total} evaluations in {span:.2f} s of writing "
            f"({total / span:.0f} rows/s; {wall:.1f} s with process start-up)"
        )
