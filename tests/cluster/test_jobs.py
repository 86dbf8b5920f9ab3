"""The README's cluster recipe as it is written: ``ray job submit`` of ``ftprune search
launch --ray-address auto`` on a two-node loopback cluster, the database URL in the job's
runtime environment as ``FTPRUNE_DB`` and the role's password in libpq's password file,
so the password reaches neither Ray's job table nor its logs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from storage import Store
from tests.cluster.conftest import DB_PASSWORD, GENERATIONS, ClusterDb, Job
from tests.cluster.loopback import BIN, LoopbackCluster

pytestmark = [pytest.mark.cluster, pytest.mark.ray]


def rows(store: Store, run_id: int) -> list[tuple]:
    """(generation, stage, schedule, fitness) of every evaluation of the run, sorted."""
    return sorted(
        (r.generation, r.stage, tuple(r.schedule), r.fitness) for r in store.evaluations(run_id)
    )


def worker_pid(worker: str) -> int:
    """The process id in an evaluation's ``worker`` (``host:pid``)."""
    return int(worker.rsplit(":", 1)[1])


def test_job_searches_on_both_nodes_and_records_every_candidate_once(
    cluster: LoopbackCluster, uninterrupted: Job, cluster_db: ClusterDb
) -> None:
    store = Store(cluster_db.admin_url, create=False)
    evaluations = store.evaluations(uninterrupted.run_id)
    keys = [(r.generation, r.stage, tuple(r.schedule)) for r in evaluations]
    assert len(set(keys)) == len(keys) > 2 * GENERATIONS  # no candidate twice at one stage
    assert {r.generation for r in evaluations} == set(range(GENERATIONS))
    assert all(r.error is None and r.fitness is not None for r in evaluations)
    assert {h.label for h in store.heldout(uninterrupted.run_id)} == {"best", "uniform"}

    actors = cluster.actor_nodes(uninterrupted.submission_id)
    assert sorted(actors.values()) == ["b", "head"]  # one worker per node, none replaced
    assert {actors[worker_pid(r.worker)] for r in evaluations} == {"b", "head"}

    # the README's status command, from anywhere with FTPRUNE_DB set
    status = subprocess.run(
        [str(BIN / "ftprune"), "search", "status", "uninterrupted", "--json"],
        env={**os.environ, **cluster_db.env()},
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0, status.stderr
    assert DB_PASSWORD not in status.stdout + status.stderr
    shown = json.loads(status.stdout)
    assert shown["status"] == "finished" and shown["generations"] == GENERATIONS
    assert shown["evaluations"] == len(evaluations)
    assert shown["best_schedule"] == store.run_status(uninterrupted.run_id)["best_schedule"]


def test_the_database_password_reaches_neither_ray_nor_the_output(
    cluster: LoopbackCluster, uninterrupted: Job, cluster_db: ClusterDb
) -> None:
    assert cluster_db.url in uninterrupted.output  # the report names the database
    assert DB_PASSWORD not in uninterrupted.output
    jobs = cluster.ray(
        "list", "jobs", "--detail", "--format", "json", "--address", cluster.dashboard_url
    )
    assert jobs.returncode == 0 and uninterrupted.submission_id in jobs.stdout
    assert cluster_db.url in jobs.stdout  # Ray keeps the job's runtime environment ...
    assert DB_PASSWORD not in jobs.stdout  # ... and there is no password in it
    ray_files = [path for path in cluster.root.rglob("*") if path.is_file()]
    assert any(path.name == "runtime_env_agent.log" for path in ray_files)  # it logs env vars
    assert [str(path) for path in ray_files if holds(path, DB_PASSWORD)] == []


def holds(path: Path, text: str) -> bool:
    try:
        return text.encode() in path.read_bytes()
    except OSError:  # gone meanwhile
        return False
