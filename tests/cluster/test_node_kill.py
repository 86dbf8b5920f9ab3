"""A worker node killed mid-run (SIGKILL of its raylet, agents and workers): the job's search
finishes on the head's workers, records every candidate once and reaches the result of the
undisturbed run with the same seed."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from storage import StorageError, Store
from tests.cluster.conftest import GENERATIONS, ClusterDb, Job, submit
from tests.cluster.hosts import WORKER_NODE, Cluster
from tests.cluster.test_jobs import rows, worker_pid

pytestmark = [pytest.mark.cluster, pytest.mark.ray, pytest.mark.fault]


def wait_for_generation(store: Store, job: Job, deadline_s: float = 240) -> None:
    """Return once the job's run has stored its first generation."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and job.process.poll() is None:
        try:
            if store.run_status(job.run_name)["generations"] >= 1:
                return
        except StorageError:  # the run does not exist yet
            pass
        time.sleep(0.05)
    raise AssertionError(f"no generation stored (job exit status {job.process.poll()})")


def job_drivers(cluster: Cluster, job: Job) -> list[psutil.Process]:
    """The processes on the head that run the job's ``ftprune search launch``."""
    found = []
    for process in cluster.processes("head"):
        try:
            cmdline = process.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "launch" in cmdline and job.run_name in cmdline:
            found.append(process)
    return found


def test_killed_worker_node_leaves_the_search_to_the_head(
    cluster: Cluster, uninterrupted: Job, job_dir: Path, cluster_db: ClusterDb
) -> None:
    store = Store(cluster_db.admin_url, create=False)
    job = submit(cluster, cluster_db, "node-killed")
    wait_for_generation(store, job)
    # The coordinator pauses while the node dies, so the kill lands mid-run however fast the
    # search is; it then finds the node's workers dead.
    drivers = job_drivers(cluster, job)
    assert drivers
    for process in drivers:
        process.suspend()
    try:
        killed = cluster.kill_node(WORKER_NODE)
        at_kill = store.run_status(job.run_name)
    finally:
        for process in drivers:
            process.resume()
    job.finish()

    assert at_kill["status"] == "running"
    assert 1 <= at_kill["generations"] <= GENERATIONS - 2  # a later generation started after
    assert_ends_like(store, job.run_id, uninterrupted.run_id)

    actors = cluster.actor_nodes(job.submission_id)
    on_worker = {pid for pid, node in actors.items() if node == WORKER_NODE}
    assert on_worker and on_worker <= set(killed)  # it had a worker there, which died
    assert "head" in actors.values()  # a replacement is placed only where there is room
    later = [
        r for r in store.evaluations(job.run_id) if r.generation > at_kill["generations"]
    ]  # generations that started after the kill
    assert later and {actors[worker_pid(r.worker)] for r in later} == {"head"}


def assert_ends_like(store: Store, run_id: int, reference_id: int) -> None:
    """Run ``run_id`` finished all its generations with the uninterrupted run's result:
    the same best schedule and fitness, and every candidate recorded once, as there."""
    final, reference = store.run_status(run_id), store.run_status(reference_id)
    assert final["status"] == "finished" and final["generations"] == GENERATIONS
    assert final["best_schedule"] == reference["best_schedule"]
    assert final["best_fitness"] == reference["best_fitness"]
    assert rows(store, run_id) == rows(store, reference_id)  # each candidate once
