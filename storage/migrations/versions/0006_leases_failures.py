"""Fault tolerance: a run's lease (which coordinator drives it, and until when), and failed
evaluations (the reason in ``error``, no metrics: the four metric columns become nullable).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

METRICS = ("fitness", "top1", "ppl", "realized_sparsity")


def upgrade() -> None:
    op.add_column("ftp_runs", sa.Column("lease_owner", sa.String(200), nullable=True))
    op.add_column(
        "ftp_runs", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("ftp_evaluations", sa.Column("error", sa.String(2000), nullable=True))
    # SQLite cannot drop NOT NULL in place: batch mode copies the table (rows, indexes and
    # foreign keys kept); PostgreSQL alters the columns.
    with op.batch_alter_table("ftp_evaluations") as batch:
        for name in METRICS:
            batch.alter_column(name, existing_type=sa.Float(), nullable=True)
