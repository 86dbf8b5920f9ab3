"""The skeleton store on SQLite: runs, evaluations, status, errors."""

from __future__ import annotations

import sqlite3

import pytest

from storage import Store, StorageError, redact
from workers.scoring import Evaluation, WindowMetrics


def _evaluation(kl: float, schedule: list[float]) -> Evaluation:
    return Evaluation(schedule=schedule, split="calibration", router="static",
                      metrics=WindowMetrics(kl=kl, top1=0.9, ppl=10.0,
                                            realized_sparsity=0.3, positions=64),
                      duration_s=0.5, worker="w:1")


def test_run_lifecycle_and_status(db_url):
    store = Store(db_url)
    run = store.create_run("alpha", {"generations": 2, "target_sparsity": 0.3, "model": "m"}, 7)
    assert run.name == "alpha" and run.status == "running"
    store.record_generation(run.id, 0, [_evaluation(0.5, [0.3, 0.3]), _evaluation(0.4, [0.2, 0.4])],
                            0.4, [0.2, 0.4])
    store.record_generation(run.id, 1, [_evaluation(0.3, [0.1, 0.5])], 0.3, [0.1, 0.5])
    store.add_heldout(run.id, "best", _evaluation(0.35, [0.1, 0.5]))
    store.set_status(run.id, "finished")
    for ref in ("alpha", run.id, str(run.id)):
        status = store.run_status(ref)
        assert status["run"] == "alpha" and status["status"] == "finished"
        assert status["generations"] == 2 and status["evaluations"] == 3
        assert status["best_fitness"] == 0.3 and status["best_schedule"] == [0.1, 0.5]
    rows = store.evaluations(run.id)
    assert [r.generation for r in rows] == [0, 0, 1]
    assert [r.fitness for r in rows] == [0.5, 0.4, 0.3]
    assert store.heldout(run.id)[0].kl == 0.35


def test_sqlite_is_in_wal_mode_with_prefixed_tables(db_url, tmp_path):
    Store(db_url).create_run(None, {}, 0)
    with sqlite3.connect(tmp_path / "ftprune.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"ftp_runs", "ftp_evaluations", "ftp_heldout_results"}


def test_unnamed_runs_get_their_id_as_name(db_url):
    store = Store(db_url)
    run = store.create_run(None, {}, 0)
    assert run.name == f"run-{run.id}"
    assert store.find_run(f"run-{run.id}").id == run.id


def test_duplicate_names_and_missing_runs_are_errors(db_url):
    store = Store(db_url)
    store.create_run("dup", {}, 0)
    with pytest.raises(StorageError, match="already exists"):
        store.create_run("dup", {}, 0)
    with pytest.raises(StorageError, match="no run"):
        store.find_run("nope")


def test_read_only_open_never_creates_a_database(tmp_path):
    with pytest.raises(StorageError, match="no database"):
        Store(f"sqlite:///{tmp_path / 'absent.db'}", create=False)
    assert not (tmp_path / "absent.db").exists()


def test_bad_urls_and_password_redaction():
    with pytest.raises(StorageError, match="unsupported"):
        Store("mysql://u:p@h/db")
    with pytest.raises(StorageError, match="invalid"):
        Store("not a url")
    assert "secret" not in redact("postgresql+psycopg://me:secret@db.example/ftp")
