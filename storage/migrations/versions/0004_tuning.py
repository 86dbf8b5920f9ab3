"""Tuned router-training settings: the best trials of ``ftprune tune`` studies.

Revision ID: 0004_tuning
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_tuning"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ftp_tuned_weights",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("study", sa.String(200), nullable=False),
        sa.Column("trial", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(500), nullable=False),
        sa.Column("target_sparsity", sa.Float(), nullable=False),
        sa.Column("schedule", sa.JSON(), nullable=False),
        sa.Column("lambda_guide", sa.Float(), nullable=False),
        sa.Column("lambda_sparse", sa.Float(), nullable=False),
        sa.Column("lambda_distill", sa.Float(), nullable=False),
        sa.Column("guide_steps", sa.Integer(), nullable=False),
        sa.Column("lr", sa.Float(), nullable=False),
        sa.Column("heldout_kl", sa.Float(), nullable=False),
        sa.Column("objectives", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ftp_tuned_weights"),
        sa.ForeignKeyConstraint(["run_id"], ["ftp_runs.id"], ondelete="CASCADE",
                                name="fk_ftp_tuned_weights_run_id_ftp_runs"),
    )
    op.create_index("ix_ftp_tuned_weights_model_target_sparsity", "ftp_tuned_weights",
                    ["model", "target_sparsity"])
