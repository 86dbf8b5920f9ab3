"""Evaluation rows keep what ``ftprune eval`` reports beside the two accuracies: the paired
bootstrap interval of the retention and the routed model's realized sparsity and FLOP
saving (NULL on rows stored before).

Revision ID: 0005
Revises: 0004_tuning
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004_tuning"
branch_labels = None
depends_on = None

COLUMNS = ("ci_low", "ci_high", "realized_sparsity", "flop_saving")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("ftp_eval_results", sa.Column(name, sa.Float(), nullable=True))
