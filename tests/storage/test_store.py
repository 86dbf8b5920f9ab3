"""The Store's guarantees, on SQLite and on PostgreSQL: runs, evaluations, generation
summaries, routers and results, atomic writes, errors, URLs."""

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


def test_run_lifecycle_and_status(db_url):
    store = Store(db_url)
    run = store.create_run("alpha", {"generations": 2, "target_sparsity": 0.3, "model": "m"}, 7)
    assert run.name == "alpha" and run.status == "running"
    store.record_generation(
        run.id, 0, [scored(0.5, [0.3, 0.3]), scored(0.4, [0.2, 0.4])], 0.4, [0.2, 0.4]
    )
    store.record_generation(run.id, 1, [scored(0.3, [0.1, 0.5])], 0.3, [0.1, 0.5])
    store.add_heldout(run.id, "best", scored(0.35, [0.1, 0.5]))
    store.set_status(run.id, "finished")
    for ref in ("alpha", run.id, str(run.id)):
        status = store.run_status(ref)
        assert status["run"] == "alpha" and status["status"] == "finished"
        assert status["generations"] == 2 and status["evaluations"] == 3
        assert status["best_fitness"] == 0.3 and status["best_schedule"] == [0.1, 0.5]
        assert status["finished_at"] is not None
    rows = store.evaluations(run.id)
    assert [r.generation for r in rows] == [0, 0, 1]
    assert [r.fitness for r in rows] == [0.5, 0.4, 0.3]
    assert [r.fidelity for r in rows] == [64, 64, 64]
    assert rows[1].schedule == [0.2, 0.4]
    assert store.heldout(run.id)[0].kl == 0.35
    assert store.latest_run().id == run.id


def test_database_is_created_at_the_newest_revision_with_prefixed_tables(db_url):
    store = Store(db_url)
    with store.engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) == TABLES
        assert current_revision(connection) == head_revision()


def test_sqlite_is_in_wal_mode(sqlite_url, tmp_path):
    Store(sqlite_url).create_run(None, {}, 0)
    with sqlite3.connect(tmp_path / "ftprune.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unnamed_runs_get_their_id_as_name(db_url):
    store = Store(db_url)
    first, second = store.create_run(None, {}, 0), store.create_run(None, {}, 0)
    assert (first.name, second.name) == (f"run-{first.id}", f"run-{second.id}")
    assert store.find_run(f"run-{second.id}").id == second.id


def test_duplicate_names_and_missing_runs_are_errors(db_url):
    store = Store(db_url)
    store.create_run("dup", {}, 0)
    assert store.run_name_taken("dup") and not store.run_name_taken("other")
    with pytest.raises(StorageError, match="already exists"):
        store.create_run("dup", {}, 0)
    with pytest.raises(StorageError, match="no run"):
        store.find_run("nope")


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


def test_recording_a_generation_twice_is_an_error(db_url):
    store = Store(db_url)
    run = store.create_run("twice", {}, 0)
    store.record_generation(run.id, 0, [scored(0.5, [0.3])], 0.5, [0.3])
    with pytest.raises(IntegrityError):
        store.record_generation(run.id, 0, [scored(0.4, [0.2])], 0.4, [0.2])
    assert [e.fitness for e in store.evaluations(run.id)] == [0.5]
    assert store.find_run("twice").best_fitness == 0.5


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


def test_engine_detail_and_search_state_round_trip(db_url):
    from storage import EvaluationRecord

    store = Store(db_url)
    run = store.create_run("engine", {}, 0)
    assert store.search_state(run.id) is None
    assert store.run_totals(run.id) == {"evaluations": 0, "forward_tokens": 0}
    record = EvaluationRecord(
        schedule=[0.2, 0.4],
        router="static",
        metrics=Metrics(kl=0.25),
        duration_s=0.1,
        worker="w:2",
        stage=1,
        sequences=[0, 3, 5],
        per_sequence={"3": [0.5, 7, 9.25, 8, 10, 12, 64]},
        forward_tokens=64,
    )
    state = {"generation": 1, "random_state": [3, [1, 2, 3], None], "seen": [[1, 2]]}
    store.record_generation(run.id, 0, [record, scored(0.3, [0.3, 0.3])], 0.25, [0.2, 0.4], state)
    store.record_generation(run.id, 1, [record], 0.2, [0.2, 0.4], {**state, "generation": 2})
    assert store.search_state(run.id) == {**state, "generation": 2}
    assert store.run_totals(run.id) == {"evaluations": 3, "forward_tokens": 128}
    first, plain, _ = store.evaluations(run.id)
    assert (first.stage, first.sequences, first.forward_tokens) == (1, [0, 3, 5], 64)
    assert first.per_sequence == {"3": [0.5, 7, 9.25, 8, 10, 12, 64]}
    assert (plain.stage, plain.sequences, plain.per_sequence) == (None, None, None)
