"""The SQL store's own guarantees, on SQLite and on PostgreSQL: the schema it creates,
generation summaries, routers and results, atomic writes, URLs (what every store
guarantees is checked in test_conformance.py)."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError

from storage import StorageError, Store, redact
from storage.migrate import VERSION_TABLE, current_revision, head_revision
from storage.schema import EvaluationRow, GenerationRow, RunRow
from tests.storage.helpers import Metrics, Scored, scored

TABLES = {
    "ftp_runs",
    "ftp_evaluations",
    "ftp_heldout_results",
    "ftp_generations",
    "ftp_routers",
    "ftp_eval_results",
    "ftp_benchmarks",
    "ftp_search_states",
    "ftp_tuned_weights",
    VERSION_TABLE,
}


def _count(store: Store, model) -> int:
    with store.read_engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(model))


def test_latest_run_is_the_newest(db_url):
    store = Store(db_url)
    assert store.latest_run() is None
    store.create_run("alpha", {}, 7)
    beta = store.create_run("beta", {}, 7)
    assert store.latest_run().id == beta.id


def test_database_is_created_at_the_newest_revision_with_prefixed_tables(db_url):
    store = Store(db_url)
    with store.engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) == TABLES
        assert current_revision(connection) == head_revision()


def test_sqlite_is_in_wal_mode(sqlite_url, tmp_path):
    Store(sqlite_url).create_run(None, {}, 0)
    with sqlite3.connect(tmp_path / "ftprune.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_generation_summaries_have_one_stage_per_fidelity(db_url):
    store = Store(db_url)
    run = store.create_run("stages", {}, 0)
    batch = [
        scored(0.6, [0.3], positions=64, duration_s=1.0),
        scored(0.2, [0.1], positions=256, duration_s=4.0),
        scored(0.4, [0.2], positions=64, duration_s=1.0),
    ]
    store.record_generation(run.id, 0, batch, 0.2, [0.1])
    store.record_generation(run.id, 1, [], 0.2, [0.1])
    with store.read_engine.connect() as connection:
        rows = connection.execute(
            select(GenerationRow)
            .where(GenerationRow.run_id == run.id)
            .order_by(GenerationRow.generation, GenerationRow.stage)
        ).all()
    (low, high, empty) = rows
    assert (low.stage, low.fidelity, low.evaluations) == (0, 64, 2)
    assert (low.best_fitness, low.worst_fitness, low.compute_s) == (0.4, 0.6, 2.0)
    assert low.mean_fitness == pytest.approx(0.5) and low.std_fitness == pytest.approx(0.1)
    assert (high.stage, high.fidelity, high.evaluations, high.std_fitness) == (1, 256, 1, 0.0)
    assert (empty.generation, empty.stage, empty.evaluations) == (1, 0, 0)
    assert empty.best_fitness is None and empty.fidelity is None
    assert {r.best_so_far for r in rows} == {0.2}


def test_a_failed_write_leaves_nothing_behind(db_url):
    store = Store(db_url)
    run = store.create_run("atomic", {}, 0)
    store.record_generation(run.id, 0, [scored(0.5, [0.3])], 0.5, [0.3])
    broken = Scored(schedule=[0.2], metrics=Metrics(kl=0.3), worker=None)  # NOT NULL column
    with pytest.raises(IntegrityError):
        store.record_generation(run.id, 1, [scored(0.4, [0.1]), broken], 0.4, [0.1])
    assert _count(store, EvaluationRow) == 1 and _count(store, GenerationRow) == 1
    assert store.find_run("atomic").generations_done == 1
    store.record_generation(run.id, 1, [scored(0.4, [0.1])], 0.4, [0.1])
    assert _count(store, EvaluationRow) == 2


def test_routers_results_and_benchmarks_are_validated(db_url):
    store = Store(db_url)
    run = store.create_run("checks", {}, 0)
    with pytest.raises(StorageError, match="loss weights"):
        store.add_router(run.id, "r", [0.3], {"guide": 1.0}, "ckpt", "0" * 64, {}, {})
    with pytest.raises(StorageError, match="same length"):
        store.add_router(
            run.id,
            "r",
            [0.3],
            {"guide": 1, "sparse": 1, "distill": 1},
            "ckpt",
            "0" * 64,
            {"step": [0, 1], "loss": [1.0]},
            {},
        )
    with pytest.raises(StorageError, match="lacks routed"):
        store.add_eval_results(
            run.id, "best", "static", [{"task": "t", "metric": "acc", "dense": 0.5}]
        )
    with pytest.raises(StorageError, match="unknown benchmark kind"):
        store.add_benchmark_rows("speed", [{"x": 1}])
    with pytest.raises(StorageError, match="reserved"):
        store.add_benchmark_rows("routing", [{"kind": "blocks"}])
    with store.read_engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(RunRow)) == 1


def test_read_only_open_never_creates_a_database(tmp_path):
    with pytest.raises(StorageError, match="no database"):
        Store(f"sqlite:///{tmp_path / 'absent.db'}", create=False)
    assert not (tmp_path / "absent.db").exists()


def test_bad_urls_and_password_redaction():
    with pytest.raises(StorageError, match="unsupported database"):
        Store("mysql://u:p@h/db")
    with pytest.raises(StorageError, match="unsupported PostgreSQL driver"):
        Store("postgresql+psycopg2://u:p@h/db")
    with pytest.raises(StorageError, match="invalid"):
        Store("not a url")
    assert "secret" not in redact("postgresql+psycopg://me:secret@db.example/ftp")


def test_unreachable_server_is_one_line_without_the_password():
    with pytest.raises(StorageError) as caught:
        Store("postgresql://me:s3cr3t-pw@127.0.0.1:1/ftp")
    message = str(caught.value)
    assert "s3cr3t-pw" not in message and "me:***@127.0.0.1:1" in message
    assert "\n" not in message
