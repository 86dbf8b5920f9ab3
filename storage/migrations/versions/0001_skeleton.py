"""The first schema: runs, evaluations and held-out results.

Exactly the tables ftprune created before it had migrations, so such a database is stamped
at this revision and upgraded from here.

Revision ID: 0001
Revises: (none)
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ftp_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("code_version", sa.String(40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("generations_done", sa.Integer(), nullable=False),
        sa.Column("best_fitness", sa.Float(), nullable=True),
        sa.Column("best_schedule", sa.JSON(), nullable=True),
        sa.Column("error", sa.String(2000), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_ftp_runs"),
        sa.UniqueConstraint("name", name="uq_ftp_runs_name"),
    )
    op.create_table(
        "ftp_evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("schedule", sa.JSON(), nullable=False),
        sa.Column("router", sa.String(40), nullable=False),
        sa.Column("fitness", sa.Float(), nullable=False),
        sa.Column("top1", sa.Float(), nullable=False),
        sa.Column("ppl", sa.Float(), nullable=False),
        sa.Column("realized_sparsity", sa.Float(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ftp_evaluations"),
        sa.ForeignKeyConstraint(["run_id"], ["ftp_runs.id"], ondelete="CASCADE",
                                name="fk_ftp_evaluations_run_id_ftp_runs"),
    )
    op.create_index("ix_ftp_evaluations_run_id_generation", "ftp_evaluations",
                    ["run_id", "generation"])
    op.create_table(
        "ftp_heldout_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("schedule", sa.JSON(), nullable=False),
        sa.Column("router", sa.String(40), nullable=False),
        sa.Column("kl", sa.Float(), nullable=False),
        sa.Column("top1", sa.Float(), nullable=False),
        sa.Column("ppl", sa.Float(), nullable=False),
        sa.Column("realized_sparsity", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ftp_heldout_results"),
        sa.ForeignKeyConstraint(["run_id"], ["ftp_runs.id"], ondelete="CASCADE",
                                name="fk_ftp_heldout_results_run_id_ftp_runs"),
    )
    op.create_index("ix_ftp_heldout_results_run_id", "ftp_heldout_results", ["run_id"])

