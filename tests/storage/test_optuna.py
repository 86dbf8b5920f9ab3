"""An Optuna study sharing the database survives ``ftprune db upgrade`` and ``db check``
untouched, on SQLite and PostgreSQL: same tables, same rows, same Alembic revision, and the
study reloads with the same trials."""

from __future__ import annotations

from typing import Any

import optuna
from sqlalchemy import MetaData, func, select
from typer.testing import CliRunner

from ftprune.cli import app
from storage import Store
from storage.engine import make_engine
from storage.migrate import TABLE_PREFIX
from tests.storage.helpers import schema_snapshot, scored

runner = CliRunner()


def _objective(trial: optuna.Trial) -> float:
    return (trial.suggest_float("lambda_guide", 0.0, 2.0) - 1.0) ** 2 + trial.suggest_int(
        "steps", 1, 3
    )


def _trials(url: str) -> list[tuple[Any, ...]]:
    study = optuna.load_study(study_name="lambdas", storage=url)
    return [(t.number, t.state, t.params, t.value) for t in study.trials]


def _optuna_state(url: str) -> tuple[dict[str, Any], dict[str, int], list[tuple[Any, ...]]]:
    """Optuna's tables (everything not ftprune's): schema, row counts, Alembic revision."""
    with make_engine(url).connect() as connection:
        metadata = MetaData()
        metadata.reflect(connection, only=lambda name, _: not name.startswith(TABLE_PREFIX))
        counts = {
            name: connection.scalar(select(func.count()).select_from(table))
            for name, table in metadata.tables.items()
        }
        snapshot = {
            name: value
            for name, value in schema_snapshot(connection, "").items()
            if not name.startswith(TABLE_PREFIX)
        }
        revision = connection.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    return snapshot, counts, revision


def test_optuna_study_survives_upgrade_and_check(db_url):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=db_url,
        study_name="lambdas",
        direction="minimize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.optimize(_objective, n_trials=3)
    trials, before = _trials(db_url), _optuna_state(db_url)
    assert len(trials) == 3 and before[1]["trials"] == 3

    upgrade = runner.invoke(app, ["db", "upgrade", "--db", db_url])
    assert upgrade.exit_code == 0, upgrade.output
    check = runner.invoke(app, ["db", "check", "--db", db_url])
    assert check.exit_code == 0, check.output
    store = Store(db_url)
    run = store.create_run("beside-optuna", {}, 0)
    store.record_generation(run.id, 0, [scored(0.1, [0.1])], 0.1, [0.1])

    assert _optuna_state(db_url) == before
    assert _trials(db_url) == trials
    study = optuna.load_study(study_name="lambdas", storage=db_url)
    study.optimize(_objective, n_trials=1)
    assert len(study.trials) == 4
    assert runner.invoke(app, ["db", "check", "--db", db_url]).exit_code == 0
