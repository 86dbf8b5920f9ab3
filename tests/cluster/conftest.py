"""Fixtures of the cluster tests: one Ray cluster (a head and the worker node, 2 CPUs each,
and a submitting machine) and one PostgreSQL database for the whole session, and the
README's ``ray job submit`` recipe as a command.

The cluster's hosts are network namespaces (:mod:`tests.cluster.netns`) where this machine
can make them; elsewhere the loopback cluster (:mod:`tests.cluster.loopback`) stands in,
and with ``CI=true`` a machine that cannot make them fails the tests instead. The session's
report says which cluster ran.

The database's role has a password, which lives only in a libpq password file: the URL the
jobs get (``FTPRUNE_DB``) holds none, so none reaches Ray's job table or logs. The tests
themselves reach the database through its server's Unix socket.

Every search here is the tiny random model's (configs/tiny.yaml), on two Ray workers of
half a CPU each unless a test says otherwise; :func:`uninterrupted` runs it once under
``ray job submit``, undisturbed, as the reference the other runs with its seed must reproduce.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from storage import Store
from tests.cluster.hosts import DB_PASSWORD, WORKER_NODE, Cluster
from tests.cluster.loopback import LoopbackCluster
from tests.cluster.netns import NamespaceCluster, NamespacesUnavailable
from tests.storage.conftest import in_ci
from tests.storage.postgres import PostgresUnavailable, start_server

GENERATIONS = 4
SEARCH = {"pool": "ray", "workers": 2, "cpus_per_worker": 0.5, "generations": GENERATIONS}
DB_NAME = "ftprune"  # the README's database and role
RAN: list[str] = []  # which cluster the session's tests ran on, and why


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in RAN:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Cluster]:
    """The session's cluster (see the module docstring)."""
    cluster: Cluster
    try:
        cluster = NamespaceCluster.start()
        RAN.append(f"cluster tests: on {cluster.kind} (hosts 10.0.0.1, 10.0.0.2, 10.0.0.3)")
    except NamespacesUnavailable as exc:
        if in_ci():
            pytest.fail(f"network namespaces are required in CI: {exc}", pytrace=False)
        cluster = LoopbackCluster.start()
        RAN.append(f"cluster tests: on {cluster.kind} (network namespaces unavailable: {exc})")
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster(ray_cluster: Cluster, request: pytest.FixtureRequest) -> Cluster:
    """The session's cluster with both nodes up (a test that killed the worker node or cut
    it off leaves it so)."""
    request.node.user_properties.append(("cluster", ray_cluster.kind))
    ray_cluster.ensure_node(WORKER_NODE)
    return ray_cluster


@dataclass(frozen=True)
class ClusterDb:
    """The cluster tests' database: ``url`` (no password) is what jobs and commands get as
    ``FTPRUNE_DB``, with the password in libpq's password file ``passfile``; ``admin_url``
    (with it, through the server's Unix socket) is the tests' own way in."""

    url: str
    passfile: Path
    admin_url: str

    def env(self) -> dict[str, str]:
        """What a job's runtime environment, or a command's, carries to reach it."""
        return {"FTPRUNE_DB": self.url, "PGPASSFILE": str(self.passfile)}


@pytest.fixture(scope="session")
def cluster_db(ray_cluster: Cluster) -> Iterator[ClusterDb]:
    """The README's database on a throwaway server on the head (its role has a password),
    made ready by the submitting machine's README commands (the password file, ``ftprune
    db upgrade``, the job's directory)."""
    host, port = ray_cluster.db_address
    try:
        server = start_server(host=host, port=port, prefix=ray_cluster.db_prefix())
    except PostgresUnavailable as exc:
        if in_ci():
            pytest.fail(f"PostgreSQL is required in CI: {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        server.create_role(DB_NAME, DB_PASSWORD)
        server.create_database(DB_NAME, owner=DB_NAME)
        ray_cluster.set_up_submitter()
        yield ClusterDb(
            server.url(DB_NAME, DB_NAME),
            ray_cluster.home / ".ftprune.pgpass",
            server.socket_url(DB_NAME, DB_NAME, DB_PASSWORD),
        )
    finally:
        server.stop()


@pytest.fixture(scope="session")
def job_dir(ray_cluster: Cluster, cluster_db: ClusterDb) -> Path:
    """The job's working directory, as the README's commands made it, with the model and
    the workers set in ``cluster.yaml``: the tiny config on Ray workers."""
    config = ray_cluster.checkout / "job" / "cluster.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), **SEARCH}))
    return config.parent


@dataclass
class Job:
    """A submitted search: the ``ray job submit`` process (it tails the job's log until
    the job ends), the run it creates in ``db``, and, once it ended, its submission id."""

    process: subprocess.Popen[str]
    run_name: str
    db: ClusterDb
    output: str = ""
    submission_id: str = ""
    run_id: int = -1

    def finish(self) -> "Job":
        """Wait for the job (at most 5 minutes); it must have succeeded."""
        self.output, _ = self.process.communicate(timeout=300)
        submitted = re.search(r"Job '([^']+)' submitted successfully", self.output)
        assert submitted, self.output[-3000:]
        self.submission_id = submitted.group(1)
        assert self.process.returncode == 0, self.output[-3000:]
        assert f"Job '{self.submission_id}' succeeded" in self.output, self.output[-3000:]
        self.run_id = Store(self.db.admin_url, create=False).find_run(self.run_name).id
        return self


def submit(cluster: Cluster, db: ClusterDb, run_name: str) -> Job:
    """Start the README's ``ray job submit`` of the search ``run_name``."""
    return Job(cluster.submit(run_name), run_name, db)


@pytest.fixture(scope="session")
def uninterrupted(ray_cluster: Cluster, job_dir: Path, cluster_db: ClusterDb) -> Job:
    """The search under ``ray job submit`` on both nodes, undisturbed."""
    ray_cluster.ensure_node(WORKER_NODE)
    return submit(ray_cluster, cluster_db, "uninterrupted").finish()
