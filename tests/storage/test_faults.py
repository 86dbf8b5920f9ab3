"""Failed evaluations (both backends) and the store's retries on a lost PostgreSQL
connection: a commit lost in flight is checked, never repeated blindly, so a generation is
stored exactly once; what cannot be checked is an error, not a guess."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import psycopg
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, OperationalError

from storage import EvaluationRecord, StorageError, Store, open_reader, queries
from storage.engine import Backoff, is_disconnect
from storage.schema import EvaluationRow, GenerationRow, HeldoutRow
from tests.storage.helpers import Metrics, scored


def _record(schedule: list[float], kl: float | None, error: str | None = None) -> EvaluationRecord:
    return EvaluationRecord(
        schedule=schedule,
        router="static",
        metrics=None if kl is None else Metrics(kl=kl),
        duration_s=0.2,
        worker="w:1",
        stage=0,
        sequences=[0, 1],
        per_sequence={} if kl is None else {"0": [1.0, 7, 2.0, 8, 10, 12, 64]},
        forward_tokens=0 if kl is None else 64,
        error=error,
    )


def test_failed_evaluations_keep_their_reason_and_stay_out_of_the_summaries(db_url):
    store = Store(db_url)
    run = store.create_run("failing", {}, 0)
    batch = [
        _record([0.1, 0.5], None, "OutOfMemoryError: CUDA out of memory"),
        _record([0.3, 0.3], 0.4),
        _record([0.2, 0.4], 0.6),
    ]
    store.record_generation(run.id, 0, batch, 0.4, [0.3, 0.3])
    rows = store.evaluations(run.id)
    assert [r.error for r in rows] == ["OutOfMemoryError: CUDA out of memory", None, None]
    assert (rows[0].fitness, rows[0].top1, rows[0].ppl, rows[0].fidelity) == (None,) * 4
    assert [r.fitness for r in rows[1:]] == [0.4, 0.6]
    status = store.run_status(run.id)
    assert status["evaluations"] == 3 and status["failed_evaluations"] == 1
    summary = queries.generation_stages(store, run.id)
    assert summary["evaluations"].tolist() == [2]
    assert summary["best_fitness"].tolist() == [0.4] and summary["worst_fitness"].tolist() == [0.6]
    with open_reader(db_url) as reader:
        evaluations = queries.evaluations(reader, run.id)
        best = queries.best_per_generation(reader, run.id)
    assert evaluations["error"].tolist()[0] == "OutOfMemoryError: CUDA out of memory"
    assert evaluations["fitness"].isna().tolist() == [True, False, False]
    assert best["schedule"].tolist() == [[0.3, 0.3]]  # a failed row is never the best
    with pytest.raises(ValueError, match="metrics or an error"):
        _record([0.3], 0.4, "both")
    with pytest.raises(ValueError, match="metrics or an error"):
        _record([0.3], None, None)


def test_backoff_is_bounded_and_exponential():
    waits = list(Backoff(budget_s=3.0, first_s=0.25, max_s=1.0).waits())
    assert waits == [0.25, 0.5, 1.0, 1.0]  # the next 1 s wait would end past the budget
    assert list(Backoff(budget_s=0.0).waits()) == []


def test_only_lost_connections_count_as_disconnects(postgresql_url):
    closed = psycopg.OperationalError("server closed the connection")
    lost = OperationalError("SELECT 1", {}, closed)
    shutdown = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    assert is_disconnect(lost)
    assert is_disconnect(OperationalError("SELECT 1", {}, shutdown))
    store = Store(postgresql_url)
    with pytest.raises(DBAPIError) as caught, store.engine.connect() as connection:
        connection.exec_driver_sql("SELECT * FROM no_such_table")
    assert not is_disconnect(caught.value)
    assert not is_disconnect(ValueError("not a database error"))


@contextlib.contextmanager
def _lost_commit(store: Store, lands: bool) -> Iterator[list[int]]:
    """The next commit on ``store``'s engine loses its connection: after committing
    (``lands``) or instead of it. Yields the list of commits that failed so."""
    dialect = store.engine.dialect
    original = dialect.do_commit
    failed: list[int] = []

    def flaky(dbapi_connection):
        if failed:
            return original(dbapi_connection)
        failed.append(1)
        if lands:
            original(dbapi_connection)
        else:
            dbapi_connection.rollback()
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    dialect.do_commit = flaky  # type: ignore[method-assign]
    try:
        yield failed
    finally:
        dialect.do_commit = original  # type: ignore[method-assign]


def _count(store: Store, model, **where) -> int:
    with store.read_engine.connect() as connection:
        statement = select(func.count()).select_from(model)
        for column, value in where.items():
            statement = statement.where(getattr(model, column) == value)
        return connection.scalar(statement)


@pytest.mark.parametrize("lands", [True, False])
def test_a_generation_whose_commit_is_lost_is_stored_exactly_once(postgresql_url, lands):
    store = Store(postgresql_url, retry_s=10)
    run = store.create_run("lost-commit", {}, 0)
    store.record_generation(run.id, 0, [scored(0.5, [0.3, 0.3])], 0.5, [0.3, 0.3], {"g": 1})
    with _lost_commit(store, lands) as failed:
        store.record_generation(
            run.id, 1, [scored(0.4, [0.2, 0.4]), scored(0.6, [0.4, 0.2])], 0.4, [0.2, 0.4], {"g": 2}
        )
    assert failed == [1]
    assert _count(store, EvaluationRow, generation=1) == 2
    assert _count(store, GenerationRow, generation=1) == 1
    assert store.search_state(run.id) == {"g": 2}
    assert store.run_status(run.id)["generations"] == 2


def test_held_out_rows_and_idempotent_writes_survive_a_lost_commit(postgresql_url):
    store = Store(postgresql_url, retry_s=10)
    run = store.create_run("lost-heldout", {}, 0)
    with _lost_commit(store, lands=True):
        store.add_heldout(run.id, "best", scored(0.3, [0.3, 0.3]))
    assert _count(store, HeldoutRow) == 1
    with _lost_commit(store, lands=True):
        store.set_status(run.id, "finished")
    assert store.run_status(run.id)["status"] == "finished"


def test_a_lost_commit_that_cannot_be_checked_is_an_error_not_a_duplicate(postgresql_url):
    store = Store(postgresql_url, retry_s=10)
    with _lost_commit(store, lands=True), pytest.raises(StorageError) as caught:
        store.create_run("unchecked", {}, 0)
    assert "whether the write landed is unknown" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert store.run_name_taken("unchecked")  # it did land: said so, not written twice


def test_a_connection_refused_before_any_statement_is_retried(postgresql_url, monkeypatch):
    store = Store(postgresql_url, retry_s=10)
    pool = store.engine.pool
    original = pool.connect
    refusals = []

    def refusing():
        if len(refusals) < 2:
            refusals.append(time.monotonic())
            raise OperationalError(
                "connect", {}, psycopg.OperationalError("connection refused"), False
            )
        return original()

    monkeypatch.setattr(pool, "connect", refusing)
    run = store.create_run("refused", {}, 0)
    assert len(refusals) == 2 and refusals[1] - refusals[0] >= 0.2  # waited between tries
    assert store.find_run("refused").id == run.id
