"""Readers never migrate: :func:`storage.open_reader`, ``ftprune search status`` and the query
API refuse a database that is missing, empty, behind or ahead of this code with one line and
leave it as it was (on SQLite byte for byte, with no ``-wal``/``-shm`` left); on a database at
the head revision they read, beside a live writer too, and cannot write."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from ftprune.cli import app
from storage import StorageError, Store, open_reader, queries
from storage.engine import make_engine, sqlite_path
from storage.migrate import VERSION_TABLE, alembic_config, head_revision
from storage.schema import RunRow
from tests.storage.helpers import schema_snapshot, scored

runner = CliRunner()


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def _previous_revision() -> str:
    down = ScriptDirectory.from_config(alembic_config()).get_revision(head_revision()).down_revision
    assert isinstance(down, str), "the head revision must have one parent"
    return down


def _fingerprint(url: str) -> Any:
    """Everything a reader could change: on SQLite every file of the database (its bytes,
    and which of ``-wal``/``-shm`` exist); on PostgreSQL every table's schema and rows."""
    path = sqlite_path(url)
    if path is not None:
        files = {p.name: p.read_bytes() for p in sorted(path.parent.glob(path.name + "*"))}
        assert path.name in files
        return files
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            schema = schema_snapshot(connection, "")
            return schema, {
                table: connection.execute(text(f"SELECT * FROM {table}")).all() for table in schema
            }
    finally:
        engine.dispose()


def _database_behind(url: str) -> str:
    """A database one migration behind the head, holding one finished run named ``old``."""
    previous = _previous_revision()
    engine = make_engine(url)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), previous)
        now = datetime.now(timezone.utc)
        connection.execute(
            text(
                "INSERT INTO ftp_runs (name, status, config, seed, code_version, created_at, "
                "updated_at, generations_done) VALUES ('old', 'finished', '{}', 0, 'x', :now, "
                ":now, 1)"
            ),
            {"now": now},
        )
    engine.dispose()
    return previous


def test_a_database_one_migration_behind_is_refused_and_left_unchanged(db_url):
    previous = _database_behind(db_url)
    before = _fingerprint(db_url)
    if sqlite_path(db_url) is not None:
        assert set(before) == {"ftprune.db"}, "a closed database has no -wal/-shm files"

    for args in (["search", "status"], ["search", "status", "old", "--json"]):
        result = runner.invoke(app, [*args, "--db", db_url])
        assert result.exit_code == 2, result.output
        line = _one_line(result.stderr)
        assert line.startswith("error: database ") and f"at revision {previous}" in line
        assert "run `ftprune db upgrade`" in line and head_revision() in line
        assert result.stdout == ""
    with pytest.raises(StorageError, match=f"at revision {previous},") as refused:
        queries.runs(open_reader(db_url))
    assert "\n" not in str(refused.value) and "ftprune db upgrade" in str(refused.value)
    assert _fingerprint(db_url) == before

    assert runner.invoke(app, ["db", "upgrade", "--db", db_url]).exit_code == 0
    result = runner.invoke(app, ["search", "status", "--json", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert '"run": "old"' in result.stdout and '"status": "finished"' in result.stdout


def test_empty_and_foreign_only_databases_are_refused(db_url):
    engine = make_engine(db_url)
    with engine.begin() as connection:  # another tool's table, no ftprune schema
        connection.execute(text("CREATE TABLE other_tool (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    before = _fingerprint(db_url)
    with pytest.raises(StorageError, match="at revision none, .*run `ftprune db upgrade`"):
        open_reader(db_url)
    result = runner.invoke(app, ["search", "status", "--db", db_url])
    assert result.exit_code == 2 and "at revision none" in _one_line(result.stderr)
    assert _fingerprint(db_url) == before


def test_a_database_newer_than_this_code_is_refused(db_url):
    Store(db_url).close()
    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999_future'"))
    engine.dispose()
    before = _fingerprint(db_url)
    result = runner.invoke(app, ["search", "status", "--db", db_url])
    assert result.exit_code == 2
    line = _one_line(result.stderr)
    assert "at revision 9999_future, which this ftprune does not know" in line
    assert "upgrade ftprune" in line and "db upgrade" not in line
    with pytest.raises(StorageError, match="does not know"):
        open_reader(db_url)
    assert _fingerprint(db_url) == before


def test_a_missing_sqlite_file_is_refused_and_not_created(tmp_path):
    path = tmp_path / "absent.db"
    url = f"sqlite:///{path}"
    with pytest.raises(StorageError, match=r"no database at .*absent\.db: run `ftprune db upg"):
        open_reader(url)
    result = runner.invoke(app, ["search", "status", "--db", url])
    assert result.exit_code == 2 and "no database at" in _one_line(result.stderr)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StorageError, match="in-memory"):
        open_reader("sqlite://")


def test_a_head_database_reads_and_is_left_unchanged(db_url):
    with Store(db_url) as store:
        run = store.create_run("r", {"model": "m", "generations": 1}, 3)
        store.record_generation(run.id, 0, [scored(0.4, [0.2, 0.4])], 0.4, [0.2, 0.4])
        store.set_status(run.id, "finished")
    before = _fingerprint(db_url)

    with open_reader(db_url) as reader:
        assert reader.run_status("r")["evaluations"] == 1
        assert queries.runs(reader)["name"].tolist() == ["r"]
        assert queries.generation_stages(reader, run.id)["best_fitness"].tolist() == [0.4]
    result = runner.invoke(app, ["search", "status", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "finished" in result.stdout and "[0.200, 0.400]" in result.stdout
    check = runner.invoke(app, ["db", "check", "--db", db_url])
    assert check.exit_code == 0, check.output
    assert _fingerprint(db_url) == before


def test_a_reader_cannot_write(db_url):
    Store(db_url).close()
    with open_reader(db_url) as reader:
        assert not reader.writable
        with pytest.raises(StorageError, match="open read-only"):
            reader.create_run("r", {}, 0)
        with pytest.raises(StorageError, match="open read-only"):
            reader.add_benchmark_rows("routing", [{"speedup": 1.0}])
        # Below the Store's guard the connection itself refuses to write.
        with pytest.raises(DBAPIError, match="read-only|readonly"):
            with reader.engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO ftp_runs (name, status, config, seed, code_version, "
                        "created_at, updated_at, generations_done) VALUES "
                        "('sneaky', 'running', '{}', 0, 'x', :now, :now, 0)"
                    ),
                    {"now": datetime.now(timezone.utc)},
                )
        with reader.engine.connect() as connection:
            assert connection.scalar(select(func.count()).select_from(RunRow)) == 0


def test_a_reader_beside_a_live_writer_sees_its_commits(db_url):
    writer = Store(db_url)
    run = writer.create_run("live", {}, 0)
    path = sqlite_path(db_url)
    if path is not None:  # the writer holds the database open: the reader opens it mode=ro
        assert path.with_name(path.name + "-wal").exists()
    reader = open_reader(db_url)
    assert reader.run_status("live")["generations"] == 0
    writer.record_generation(run.id, 0, [scored(0.3, [0.1, 0.5])], 0.3, [0.1, 0.5])
    assert reader.run_status("live")["generations"] == 1
    assert queries.runs(reader)["evaluations"].tolist() == [1]
    with pytest.raises(StorageError, match="open read-only"):
        reader.set_status(run.id, "failed")
    reader.close()
    writer.set_status(run.id, "finished")
    writer.close()
    if path is not None:
        assert sorted(p.name for p in path.parent.glob(path.name + "*")) == [path.name]


def test_a_reader_never_checkpoints_a_crashed_writers_log(tmp_path):
    """A WAL left behind by a writer that died: the reader sees its commits and leaves the
    database file and the log as they were (only SQLite's shared-memory index is used)."""
    live, crashed = tmp_path / "live", tmp_path / "crashed"
    live.mkdir()
    crashed.mkdir()
    writer = Store(f"sqlite:///{live / 'ftprune.db'}")
    writer.create_run("a", {}, 0)
    writer.create_run("b", {}, 1)
    for name in ("ftprune.db", "ftprune.db-wal", "ftprune.db-shm"):  # the files mid-run
        shutil.copy(live / name, crashed / name)
    writer.close()
    kept = {name: (crashed / name).read_bytes() for name in ("ftprune.db", "ftprune.db-wal")}
    assert kept["ftprune.db-wal"], "the copied log must hold the writer's commits"

    with open_reader(f"sqlite:///{crashed / 'ftprune.db'}") as reader:
        assert reader.run_status("b")["run"] == "b"
    assert {name: (crashed / name).read_bytes() for name in kept} == kept
