"""A database whose tables differ from the models: writers refuse it in one line (nothing is
written into a drifted schema), ``db upgrade`` recreates a dropped table (rows elsewhere
kept) or refuses what it cannot repair, and a database written by a newer ftprune is
named as such, never with Alembic's own message."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftprune.cli import app
from search.config import build_config
from search.stored import stored_config
from storage import StorageError, Store

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _database(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "drift.db"
    url = f"sqlite:///{path}"
    with Store(url) as store:
        store.create_run("kept", stored_config(build_config(ROOT / "configs/tiny.yaml")), 0)
    return path, url


def _execute(path: Path, statement: str) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute(statement)
    connection.close()


def test_a_dropped_table_is_refused_by_writers_and_recreated_by_db_upgrade(tmp_path):
    path, url = _database(tmp_path)
    _execute(path, "DROP TABLE ftp_routers")
    with pytest.raises(StorageError, match="lacks ftprune tables ftp_routers"):
        Store(url)
    check = runner.invoke(app, ["db", "check", "--db", url])
    assert check.exit_code == 1 and "ftp_routers" in check.stderr
    upgrade = runner.invoke(app, ["db", "upgrade", "--db", url])
    assert upgrade.exit_code == 0, upgrade.output
    assert "recreated the missing tables ftp_routers" in upgrade.output
    assert runner.invoke(app, ["db", "check", "--db", url]).exit_code == 0
    with Store(url) as store:
        assert store.find_run("kept").name == "kept" and store.routers(1) == []


def test_drift_beyond_missing_tables_is_refused_and_left_alone(tmp_path):
    path, url = _database(tmp_path)
    _execute(path, "DROP TABLE ftp_routers")
    _execute(path, "ALTER TABLE ftp_runs ADD COLUMN stray TEXT")
    before = path.read_bytes()
    upgrade = runner.invoke(app, ["db", "upgrade", "--db", url])
    assert upgrade.exit_code == 2
    (line,) = upgrade.stderr.strip().splitlines()
    assert "beyond missing tables" in line and "stray" in line and "cannot repair it" in line
    assert path.read_bytes() == before


def test_a_newer_schema_is_named_for_writers(tmp_path):
    path, url = _database(tmp_path)
    _execute(path, "UPDATE ftp_alembic_version SET version_num = '0099'")
    with pytest.raises(StorageError, match="0099, which this ftprune does not know") as refused:
        Store(url)
    assert "Can't locate revision" not in str(refused.value)
