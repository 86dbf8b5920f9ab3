"""What storage reads about a run gets typed columns: its model, target sparsity and planned
generations (storage.records.RunPlan), so storage no longer reads them out of the run's
stored config. Existing rows are back-filled from their config JSON (the fields ``model``,
``target_sparsity`` and ``generations`` that run configs have always held); a value of
another type, or none, stays NULL.

Revision ID: 0007
Revises: 0006
"""

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

RUNS = sa.table(
    "ftp_runs",
    sa.column("id", sa.Integer()),
    sa.column("config", sa.JSON()),
    sa.column("model", sa.String(500)),
    sa.column("target_sparsity", sa.Float()),
    sa.column("generations_planned", sa.Integer()),
)


def _plan(config: Any) -> dict[str, Any]:
    """The typed columns' values from a stored config (a dict, or JSON text)."""
    if isinstance(config, str):
        config = json.loads(config)
    if not isinstance(config, dict):
        config = {}
    keys = ("model", "target_sparsity", "generations")
    model, target, generations = (config.get(key) for key in keys)
    return {
        "model": model if isinstance(model, str) else None,
        "target_sparsity": float(target) if _is(target, (int, float)) else None,
        "generations_planned": generations if _is(generations, (int,)) else None,
    }


def _is(value: Any, types: tuple[type, ...]) -> bool:
    """Whether ``value`` is one of ``types`` (a JSON true or false is no number)."""
    return isinstance(value, types) and not isinstance(value, bool)


def upgrade() -> None:
    op.add_column("ftp_runs", sa.Column("model", sa.String(500), nullable=True))
    op.add_column("ftp_runs", sa.Column("target_sparsity", sa.Float(), nullable=True))
    op.add_column("ftp_runs", sa.Column("generations_planned", sa.Integer(), nullable=True))
    connection = op.get_bind()
    for run_id, config in connection.execute(sa.select(RUNS.c.id, RUNS.c.config)).all():
        connection.execute(RUNS.update().where(RUNS.c.id == run_id).values(**_plan(config)))
