"""Migrations on SQLite and PostgreSQL: 0001 is the skeleton's schema, a skeleton database
upgrades in place with its rows, 0007 fills each run's typed columns from its stored config,
``ftprune db check`` catches drift, unknown states are refused."""

from __future__ import annotations

import json

import pytest
from alembic import command
from sqlalchemy import MetaData, text
from typer.testing import CliRunner

from ftprune.cli import app
from storage import StorageError, Store, open_reader, queries
from storage.engine import make_engine
from storage.migrate import SKELETON_TABLES, TABLE_PREFIX, VERSION_TABLE, alembic_config
from tests.storage import skeleton
from tests.storage.helpers import schema_snapshot, scored

runner = CliRunner()


def _one_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    return lines[0]


def test_migration_0001_reproduces_the_skeleton_schema(db_url):
    engine = make_engine(db_url)
    with engine.begin() as connection:
        skeleton.create_skeleton_database(connection, with_rows=False)
    with engine.connect() as connection:
        frozen = schema_snapshot(connection, TABLE_PREFIX)
    assert set(frozen) == SKELETON_TABLES
    with engine.begin() as connection:
        metadata = MetaData()
        metadata.reflect(connection)
        metadata.drop_all(connection)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0001")
    with engine.connect() as connection:
        migrated = schema_snapshot(connection, TABLE_PREFIX)
    del migrated[VERSION_TABLE]
    assert migrated == frozen


def test_fresh_database_upgrades_and_matches_the_models(db_url):
    result = runner.invoke(app, ["db", "upgrade", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "upgraded from an empty database to revision" in result.output
    again = runner.invoke(app, ["db", "upgrade", "--db", db_url])
    assert again.exit_code == 0 and "already at revision" in again.output
    check = runner.invoke(app, ["db", "check", "--db", db_url])
    assert check.exit_code == 0, check.output
    assert "tables match the models" in _one_line(check.output)


def test_skeleton_database_upgrades_in_place_keeping_its_rows(db_url):
    with make_engine(db_url).begin() as connection:
        skeleton.create_skeleton_database(connection)
    result = runner.invoke(app, ["db", "upgrade", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "adopted a database made before migrations existed" in _one_line(result.output)
    check = runner.invoke(app, ["db", "check", "--db", db_url])
    assert check.exit_code == 0, check.output

    store = Store(db_url, create=False)
    status = store.run_status("old-run")
    assert status["status"] == "finished" and status["evaluations"] == 3
    assert status["best_schedule"] == [0.1, 0.5] and status["model"] == "random:llama-tiny"
    assert [(e.generation, e.schedule, e.fitness, e.fidelity) for e in store.evaluations(1)] == [
        (g, s, f, None) for g, s, f, _ in skeleton.EVALUATIONS
    ]
    assert [(h.label, h.kl) for h in store.heldout(1)] == [
        (label, kl) for label, _, kl in skeleton.HELDOUT
    ]
    summary = queries.generation_stages(store, 1)
    assert summary["evaluations"].tolist() == [2, 1]
    assert summary["best_fitness"].tolist() == [0.4, 0.3]
    assert summary["best_so_far"].tolist() == [0.4, 0.3]
    assert summary["mean_fitness"].tolist() == pytest.approx([0.45, 0.3])
    assert summary["compute_s"].tolist() == [3.0, 1.5]
    assert summary["fidelity"].isna().all()

    run = store.create_run("new-run", {}, 1)
    assert run.id == 2
    store.record_generation(run.id, 0, [scored(0.2, [0.2, 0.4])], 0.2, [0.2, 0.4])
    assert queries.generation_stages(store, run.id)["fidelity"].tolist() == [64]


def test_drift_between_models_and_database_fails_the_check(db_url):
    Store(db_url)
    with make_engine(db_url).begin() as connection:
        connection.execute(text("ALTER TABLE ftp_runs ADD COLUMN stray INTEGER"))
        connection.execute(text("CREATE INDEX ix_ftp_routers_label ON ftp_routers (label)"))
    result = runner.invoke(app, ["db", "check", "--db", db_url])
    assert result.exit_code == 1
    line = _one_line(result.stderr)
    assert line.startswith("error:")
    assert "remove_column ftp_runs.stray" in line and "remove_index ix_ftp_routers_label" in line


def test_check_of_a_database_not_at_the_newest_revision_fails(db_url):
    with make_engine(db_url).begin() as connection:
        skeleton.create_skeleton_database(connection)
    result = runner.invoke(app, ["db", "check", "--db", db_url])
    assert result.exit_code == 1
    assert "at revision none" in _one_line(result.stderr)
    assert "ftprune db upgrade" in result.stderr


def test_unknown_states_are_refused_and_left_alone(db_url):
    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE ftp_mystery (id INTEGER PRIMARY KEY)"))
    with pytest.raises(StorageError, match="match no known schema"):
        Store(db_url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE ftp_mystery"))
    Store(db_url)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    result = runner.invoke(app, ["db", "upgrade", "--db", db_url])
    assert result.exit_code == 2
    assert "written by a newer ftprune" in _one_line(result.stderr) and "9999" in result.stderr


def test_migration_0007_fills_each_runs_plan_from_its_stored_config(db_url):
    """Runs stored before the typed columns keep what status and the dashboard showed: the
    upgrade copies model, target sparsity and planned generations out of each config."""
    engine = make_engine(db_url)
    configs = {
        "full": {"model": "random:llama-tiny", "target_sparsity": 0.3, "generations": 4},
        "empty": {},
        "odd": {"model": 5, "target_sparsity": "0.3", "generations": True},
        "whole": {"model": "m", "target_sparsity": 1, "generations": 2, "seed_run": None},
    }
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0006")
        for name, config in configs.items():
            connection.execute(
                text(
                    "INSERT INTO ftp_runs (name, status, config, seed, code_version, created_at, "
                    "updated_at, generations_done) VALUES (:name, 'finished', :config, 0, '0.1.0', "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 1)"
                ),
                {"name": name, "config": json.dumps(config)},
            )
    engine.dispose()
    result = runner.invoke(app, ["db", "upgrade", "--db", db_url])
    assert result.exit_code == 0, result.output
    with open_reader(db_url) as reader:
        plans = {
            name: (status["model"], status["target_sparsity"], status["generations_planned"])
            for name in configs
            for status in [reader.run_status(name)]
        }
        assert reader.find_run("whole").config == configs["whole"]  # the config is kept whole
        frame = queries.runs(reader).set_index("name")
    assert plans == {
        "full": ("random:llama-tiny", 0.3, 4),
        "empty": (None, None, None),
        "odd": (None, None, None),
        "whole": ("m", 1.0, 2),
    }
    assert frame.loc["full", "model"] == "random:llama-tiny"
    assert frame.loc["full", "target_sparsity"] == 0.3
    assert frame.loc["full", "generations_planned"] == 4
