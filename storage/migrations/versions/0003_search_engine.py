"""Search-engine detail on evaluations (stage, sequences, per-sequence sums, forward tokens)
and the resumable search state of each run.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for column in (sa.Column("stage", sa.Integer(), nullable=True),
                   sa.Column("sequences", sa.JSON(), nullable=True),
                   sa.Column("per_sequence", sa.JSON(), nullable=True),
                   sa.Column("forward_tokens", sa.Integer(), nullable=True)):
        op.add_column("ftp_evaluations", column)
    op.create_table(
        "ftp_search_states",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name="pk_ftp_search_states"),
        sa.ForeignKeyConstraint(["run_id"], ["ftp_runs.id"], ondelete="CASCADE",
                                name="fk_ftp_search_states_run_id_ftp_runs"),
    )
