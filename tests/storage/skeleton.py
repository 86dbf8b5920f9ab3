"""The schema ftprune created before it had migrations (``Base.metadata.create_all`` of the
walking skeleton), frozen as the DDL it emitted on each backend, and rows such a database
held. Migration 0001 must reproduce exactly this; ``ftprune db upgrade`` must adopt it."""

from __future__ import annotations

import json

from sqlalchemy import Connection, text

_TABLES = {
    "ftp_runs": """(
        id {serial} NOT NULL,
        name VARCHAR(200) NOT NULL,
        status VARCHAR(20) NOT NULL,
        config JSON NOT NULL,
        seed INTEGER NOT NULL,
        code_version VARCHAR(40) NOT NULL,
        created_at {timestamp} NOT NULL,
        updated_at {timestamp} NOT NULL,
        finished_at {timestamp},
        generations_done INTEGER NOT NULL,
        best_fitness FLOAT,
        best_schedule JSON,
        error VARCHAR(2000),
        CONSTRAINT pk_ftp_runs PRIMARY KEY (id),
        CONSTRAINT uq_ftp_runs_name UNIQUE (name)
    )""",
    "ftp_evaluations": """(
        id {serial} NOT NULL,
        run_id INTEGER NOT NULL,
        generation INTEGER NOT NULL,
        schedule JSON NOT NULL,
        router VARCHAR(40) NOT NULL,
        fitness FLOAT NOT NULL,
        top1 FLOAT NOT NULL,
        ppl FLOAT NOT NULL,
        realized_sparsity FLOAT NOT NULL,
        duration_s FLOAT NOT NULL,
        worker VARCHAR(200) NOT NULL,
        created_at {timestamp} NOT NULL,
        CONSTRAINT pk_ftp_evaluations PRIMARY KEY (id),
        CONSTRAINT fk_ftp_evaluations_run_id_ftp_runs FOREIGN KEY(run_id)
            REFERENCES ftp_runs (id) ON DELETE CASCADE
    )""",
    "ftp_heldout_results": """(
        id {serial} NOT NULL,
        run_id INTEGER NOT NULL,
        label VARCHAR(100) NOT NULL,
        schedule JSON NOT NULL,
        router VARCHAR(40) NOT NULL,
        kl FLOAT NOT NULL,
        top1 FLOAT NOT NULL,
        ppl FLOAT NOT NULL,
        realized_sparsity FLOAT NOT NULL,
        created_at {timestamp} NOT NULL,
        CONSTRAINT pk_ftp_heldout_results PRIMARY KEY (id),
        CONSTRAINT fk_ftp_heldout_results_run_id_ftp_runs FOREIGN KEY(run_id)
            REFERENCES ftp_runs (id) ON DELETE CASCADE
    )""",
}
_INDEXES = (
    "CREATE INDEX ix_ftp_evaluations_run_id_generation ON ftp_evaluations (run_id, generation)",
    "CREATE INDEX ix_ftp_heldout_results_run_id ON ftp_heldout_results (run_id)",
)
_TYPES = {
    "sqlite": {"serial": "INTEGER", "timestamp": "DATETIME"},
    "postgresql": {"serial": "SERIAL", "timestamp": "TIMESTAMP WITH TIME ZONE"},
}

# Two generations of a finished run: generation 0 scored two schedules, generation 1 one.
RUN = dict(
    id=1,
    name="old-run",
    status="finished",
    seed=7,
    code_version="0.1.0",
    generations_done=2,
    best_fitness=0.3,
    best_schedule=[0.1, 0.5],
    error=None,
    config={"model": "random:llama-tiny", "target_sparsity": 0.3, "generations": 2},
)
EVALUATIONS = [  # (generation, schedule, fitness, duration_s)
    (0, [0.3, 0.3], 0.5, 1.0),
    (0, [0.2, 0.4], 0.4, 2.0),
    (1, [0.1, 0.5], 0.3, 1.5),
]
HELDOUT = [("best", [0.1, 0.5], 0.35), ("uniform", [0.3, 0.3], 0.55)]


def ddl(dialect: str) -> list[str]:
    """The skeleton's CREATE TABLE and CREATE INDEX statements on ``dialect``."""
    types = _TYPES[dialect]
    tables = [f"CREATE TABLE {name} {body.format(**types)}" for name, body in _TABLES.items()]
    return [*tables, *_INDEXES]


def create_skeleton_database(connection: Connection, with_rows: bool = True) -> None:
    """Build the skeleton's tables on ``connection`` and fill them with the rows above."""
    for statement in ddl(connection.dialect.name):
        connection.exec_driver_sql(statement)
    if not with_rows:
        return
    stamp = "2025-01-02 03:04:05"
    connection.execute(
        text(
            "INSERT INTO ftp_runs (id, name, status, config, seed, code_version, created_at, "
            "updated_at, finished_at, generations_done, best_fitness, best_schedule, error) VALUES "
            "(:id, :name, :status, :config, :seed, :code_version, :t, :t, :t, :generations_done, "
            ":best_fitness, :best_schedule, :error)"
        ),
        {
            **RUN,
            "config": json.dumps(RUN["config"]),
            "best_schedule": json.dumps(RUN["best_schedule"]),
            "t": stamp,
        },
    )
    for generation, schedule, fitness, duration in EVALUATIONS:
        connection.execute(
            text(
                "INSERT INTO ftp_evaluations (run_id, generation, schedule, router, fitness, top1, "
                "ppl, realized_sparsity, duration_s, worker, created_at) VALUES (1, :g, :s, "
                "'static', :f, 0.9, 10.0, 0.3, :d, 'host:1', :t)"
            ),
            {"g": generation, "s": json.dumps(schedule), "f": fitness, "d": duration, "t": stamp},
        )
    for label, schedule, kl in HELDOUT:
        connection.execute(
            text(
                "INSERT INTO ftp_heldout_results (run_id, label, schedule, router, kl, top1, ppl, "
                "realized_sparsity, created_at) VALUES (1, :l, :s, 'static', :kl, 0.9, 12.0, 0.3, "
                ":t)"
            ),
            {"l": label, "s": json.dumps(schedule), "kl": kl, "t": stamp},
        )
    if connection.dialect.name == "postgresql":  # explicit ids leave the sequence behind
        connection.exec_driver_sql("SELECT setval('ftp_runs_id_seq', 1)")
