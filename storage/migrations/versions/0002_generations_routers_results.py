"""Fidelity of evaluations; generation summaries, routers, evaluation and benchmark results.

Existing runs get their generation summaries from their evaluations (one stage per
generation; fidelity unknown, so NULL).

Revision ID: 0002
Revises: 0001
"""

import itertools
import statistics

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ftp_evaluations", sa.Column("fidelity", sa.Integer(), nullable=True))
    generations = op.create_table(
        "ftp_generations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("fidelity", sa.Integer(), nullable=True),
        sa.Column("evaluations", sa.Integer(), nullable=False),
        sa.Column("best_fitness", sa.Float(), nullable=True),
        sa.Column("mean_fitness", sa.Float(), nullable=True),
        sa.Column("std_fitness", sa.Float(), nullable=True),
        sa.Column("worst_fitness", sa.Float(), nullable=True),
        sa.Column("best_so_far", sa.Float(), nullable=False),
        sa.Column("compute_s", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ftp_generations"),
        sa.ForeignKeyConstraint(["run_id"], ["ftp_runs.id"], ondelete="CASCADE",
                                name="fk_ftp_generations_run_id_ftp_runs"),
        sa.UniqueConstraint("run_id", "generation", "stage",
                            name="uq_ftp_generations_run_id_generation_stage"),
    )
    op.create_table(
        "ftp_routers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("schedule", sa.JSON(), nullable=False),
        sa.Column("lambda_guide", sa.Float(), nullable=False),
        sa.Column("lambda_sparse", sa.Float(), nullable=False),
        sa.Column("lambda_distill", sa.Float(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("checkpoint", sa.String(1000), nullable=False),
        sa.Column("checkpoint_sha256", sa.String(64), nullable=False),
        sa.Column("curves", sa.JSON(), nullable=False),
        sa.Column("heldout_kl", sa.Float(), nullable=True),
        sa.Column("heldout_top1", sa.Float(), nullable=True),
        sa.Column("heldout_ppl", sa.Float(), nullable=True),
        sa.Column("realized_sparsity", sa.Float(), nullable=True),
        sa.Column("train_s", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ftp_routers"),
        sa.ForeignKeyConstraint(["run_id"], ["ftp_runs.id"], ondelete="CASCADE",
                                name="fk_ftp_routers_run_id_ftp_runs"),
    )
    op.create_index("ix_ftp_routers_run_id", "ftp_routers", ["run_id"])
    op.create_table(
        "ftp_eval_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("router_id", sa.Integer(), nullable=True),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("router", sa.String(40), nullable=False),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("metric", sa.String(100), nullable=False),
        sa.Column("dense", sa.Float(), nullable=False),
        sa.Column("routed", sa.Float(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ftp_eval_results"),
        sa.ForeignKeyConstraint(["run_id"], ["ftp_runs.id"], ondelete="CASCADE",
                                name="fk_ftp_eval_results_run_id_ftp_runs"),
        sa.ForeignKeyConstraint(["router_id"], ["ftp_routers.id"], ondelete="SET NULL",
                                name="fk_ftp_eval_results_router_id_ftp_routers"),
    )
    op.create_index("ix_ftp_eval_results_run_id_task", "ftp_eval_results", ["run_id", "task"])
    op.create_table(
        "ftp_benchmarks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("row", sa.JSON(), nullable=False),
        sa.Column("code_version", sa.String(40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ftp_benchmarks"),
        sa.ForeignKeyConstraint(["run_id"], ["ftp_runs.id"], ondelete="SET NULL",
                                name="fk_ftp_benchmarks_run_id_ftp_runs"),
    )
    op.create_index("ix_ftp_benchmarks_kind_created_at", "ftp_benchmarks",
                    ["kind", "created_at"])
    _summarize_existing_generations(generations)


def _summarize_existing_generations(generations: sa.Table) -> None:
    """One stage-0 summary per (run, generation) that already has evaluations."""
    evaluations = sa.table(
        "ftp_evaluations", sa.column("id", sa.Integer()), sa.column("run_id", sa.Integer()),
        sa.column("generation", sa.Integer()), sa.column("fitness", sa.Float()),
        sa.column("duration_s", sa.Float()),
        sa.column("created_at", sa.DateTime(timezone=True)))
    rows = op.get_bind().execute(sa.select(
        evaluations.c.run_id, evaluations.c.generation, evaluations.c.fitness,
        evaluations.c.duration_s, evaluations.c.created_at,
    ).order_by(evaluations.c.run_id, evaluations.c.generation, evaluations.c.id)).all()
    summaries = []
    for run_id, run_rows in itertools.groupby(rows, key=lambda r: r.run_id):
        best_so_far = float("inf")
        for generation, group in itertools.groupby(run_rows, key=lambda r: r.generation):
            members = list(group)
            fitness = [r.fitness for r in members]
            best_so_far = min(best_so_far, min(fitness))
            summaries.append(dict(
                run_id=run_id, generation=generation, stage=0, fidelity=None,
                evaluations=len(members), best_fitness=min(fitness),
                mean_fitness=statistics.fmean(fitness), std_fitness=statistics.pstdev(fitness),
                worst_fitness=max(fitness), best_so_far=best_so_far,
                compute_s=sum(r.duration_s for r in members),
                created_at=max(r.created_at for r in members)))
    if summaries:
        op.bulk_insert(generations, summaries)
