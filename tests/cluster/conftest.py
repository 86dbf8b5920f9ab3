"""Fixtures of the cluster tests: one loopback Ray cluster (a head and the worker node
``b``, 2 CPUs each) and one PostgreSQL database for the whole session, and the README's
``ray job submit`` recipe as a command.

The database's role has a password, which lives only in a libpq password file: the URL the
jobs get (``FTPRUNE_DB``) holds none, so none reaches Ray's job table or logs.

Every search here is the tiny random model's (configs/tiny.yaml), on two Ray workers of
half a CPU each unless a test says otherwise; :func:`uninterrupted` runs it once under
``ray job submit``, undisturbed, as the reference the other runs with its seed must reproduce.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from storage import Store
from tests.cluster.loopback import BIN, ROOT, LoopbackCluster
from tests.storage.conftest import postgres  # noqa: F401 (the session's PostgreSQL server)
from tests.storage.postgres import PostgresServer

WORKER_NODE = "b"
NODE_CPUS = 2
GENERATIONS = 4
SEARCH = {"pool": "ray", "workers": 2, "cpus_per_worker": 0.5, "generations": GENERATIONS}
DB_PASSWORD = "cluster-s3cret"  # must never reach Ray or a job's output


@pytest.fixture(scope="session")
def loopback_cluster() -> Iterator[LoopbackCluster]:
    cluster = LoopbackCluster.start(NODE_CPUS, {WORKER_NODE: NODE_CPUS})
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster(loopback_cluster: LoopbackCluster) -> LoopbackCluster:
    """The session's cluster with both nodes up (a test that killed ``b`` leaves it dead)."""
    return ensure_worker_node(loopback_cluster)


@dataclass(frozen=True)
class ClusterDb:
    """The cluster tests' database: ``url`` (no password) is what jobs and commands get as
    ``FTPRUNE_DB``, with the password in libpq's password file ``passfile``; ``admin_url``
    (with it) is the tests' own way in."""

    url: str
    passfile: Path
    admin_url: str

    def env(self) -> dict[str, str]:
        """What a job's runtime environment, or a command's, carries to reach it."""
        return {"FTPRUNE_DB": self.url, "PGPASSFILE": str(self.passfile)}


@pytest.fixture(scope="session")
def cluster_db(
    postgres: PostgresServer,  # noqa: F811 (the fixture imported above)
    tmp_path_factory: pytest.TempPathFactory,
) -> ClusterDb:
    """A database of the session's server, owned by a role with a password, at the
    schema's head (``ftprune db upgrade``, as the README has it)."""
    name = f"cluster_{uuid.uuid4().hex[:8]}"
    postgres.create_role(name, DB_PASSWORD)
    postgres.create_database(name, owner=name)
    passfile = tmp_path_factory.mktemp("pg") / "pgpass"
    passfile.write_text(f"127.0.0.1:{postgres.port}:{name}:{name}:{DB_PASSWORD}\n")
    passfile.chmod(0o600)
    db = ClusterDb(postgres.url(name, name), passfile, postgres.url(name, name, DB_PASSWORD))
    upgrade = subprocess.run(
        [str(BIN / "ftprune"), "db", "upgrade"],
        env={**os.environ, **db.env()},
        capture_output=True,
        text=True,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    return db


@pytest.fixture(scope="session")
def job_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job's working directory: ``cluster.yaml``, the tiny config on Ray workers."""
    directory = tmp_path_factory.mktemp("job")
    config = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    (directory / "cluster.yaml").write_text(yaml.safe_dump({**config, **SEARCH}))
    return directory


def submit_command(
    cluster: LoopbackCluster, job_dir: Path, db: ClusterDb, run_name: str, submission_id: str
) -> list[str]:
    """The README's ``ray job submit`` of a search, with this cluster's addresses."""
    return [
        str(BIN / "ray"), "job", "submit",
        "--address", cluster.dashboard_url,
        "--submission-id", submission_id,
        "--working-dir", str(job_dir),
        "--runtime-env-json", json.dumps({"env_vars": db.env()}),
        "--",
        "ftprune", "search", "launch", "--config", "cluster.yaml",
        "--ray-address", "auto", "--run-name", run_name, "--quiet",
    ]  # fmt: skip


@dataclass
class Job:
    """A submitted search: the ``ray job submit`` process (it tails the job's log until
    the job ends), its submission id, and the run it creates in ``db``."""

    process: subprocess.Popen[str]
    submission_id: str
    run_name: str
    db: ClusterDb
    output: str = ""
    run_id: int = -1

    def finish(self) -> "Job":
        """Wait for the job (at most 5 minutes); it must have succeeded."""
        self.output, _ = self.process.communicate(timeout=300)
        assert self.process.returncode == 0, self.output[-3000:]
        assert f"Job '{self.submission_id}' succeeded" in self.output, self.output[-3000:]
        self.run_id = Store(self.db.admin_url, create=False).find_run(self.run_name).id
        return self


def submit(cluster: LoopbackCluster, job_dir: Path, db: ClusterDb, run_name: str) -> Job:
    """Start the README's ``ray job submit`` of the search ``run_name``."""
    submission_id = f"{run_name}-{uuid.uuid4().hex[:6]}"
    process = subprocess.Popen(
        submit_command(cluster, job_dir, db, run_name, submission_id),
        cwd=ROOT,
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return Job(process, submission_id, run_name, db)


def ensure_worker_node(cluster: LoopbackCluster) -> LoopbackCluster:
    """Start the worker node again if a test killed it."""
    if not cluster.has_raylet(WORKER_NODE):
        cluster.add_node(WORKER_NODE, NODE_CPUS)
    return cluster


@pytest.fixture(scope="session")
def uninterrupted(loopback_cluster: LoopbackCluster, job_dir: Path, cluster_db: ClusterDb) -> Job:
    """The search under ``ray job submit`` on both nodes, undisturbed."""
    cluster = ensure_worker_node(loopback_cluster)
    return submit(cluster, job_dir, cluster_db, "uninterrupted").finish()
