"""The worker node cut off mid-run (its network interface set down) and reconnected once
the cluster has given it up, its processes still running: the job's search finishes on the
head's workers, records every candidate once and reaches the result of the undisturbed run
with the same seed."""

from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from storage import Store
from tests.cluster.conftest import GENERATIONS, ClusterDb, Job, submit
from tests.cluster.hosts import WORKER_NODE, Cluster, names
from tests.cluster.netns import ADDRESSES, NamespaceCluster
from tests.cluster.test_jobs import worker_pid
from tests.cluster.test_node_kill import assert_ends_like, job_drivers, wait_for_generation

pytestmark = [pytest.mark.cluster, pytest.mark.ray, pytest.mark.fault]

# Prints "alive" once Ray's node table holds the node at the given address alive (within
# two minutes), then "dead" as soon as it no longer does (polled through the jobs API every
# 0.1 s).
WATCH = """
import sys, time
from ray.util.state import list_nodes
def alive():
    nodes = list_nodes(address=sys.argv[1], detail=True)
    return sys.argv[2] in {n.node_ip for n in nodes if n.state == "ALIVE"}
deadline = time.monotonic() + 120
while not alive():
    if time.monotonic() > deadline:
        sys.exit("the node is not alive")
    time.sleep(0.1)
print("alive", flush=True)
while alive():
    time.sleep(0.1)
print("dead", flush=True)
"""


@contextmanager
def paused(cluster: Cluster, job: Job) -> Iterator[None]:
    """The job's coordinator stopped (SIGSTOP) inside the block."""
    drivers = job_drivers(cluster, job)
    assert drivers
    for process in drivers:
        process.suspend()
    try:
        yield
    finally:
        for process in drivers:
            process.resume()


def until_alive(watcher: subprocess.Popen[str]) -> str:
    """The watcher's first line of its own ("alive"), or how it ended without one."""
    assert watcher.stdout is not None
    for line in watcher.stdout:
        if line.strip() == "alive":
            return "alive"
    return f"ended with exit status {watcher.wait(timeout=30)}"


def test_worker_node_cut_off_mid_run_leaves_the_search_to_the_head(
    cluster: Cluster, uninterrupted: Job, job_dir: Path, cluster_db: ClusterDb
) -> None:
    if not isinstance(cluster, NamespaceCluster):
        pytest.skip(f"a partition needs the namespace cluster (this one: {cluster.kind})")
    watch = ["python", "-c", WATCH, cluster.dashboard_url, ADDRESSES[WORKER_NODE]]
    watcher = cluster.command("submit", watch)
    try:
        assert until_alive(watcher) == "alive"
        store = Store(cluster_db.admin_url, create=False)
        job = submit(cluster, cluster_db, "partitioned")
        wait_for_generation(store, job)
        # The coordinator pauses while the link goes down, so the cut lands mid-run however
        # fast the search is; it then runs on, its calls to the worker node unanswered,
        # until the cluster declares the node dead. The link comes back while it pauses
        # again, so it also lands mid-run.
        with paused(cluster, job):
            cluster.cut(WORKER_NODE)
            cut, at_cut = time.monotonic(), store.run_status(job.run_name)
        said, _ = watcher.communicate(timeout=120)  # the watcher ends once it saw it dead
        assert "dead" in said.split(), said[-2000:]
        with paused(cluster, job):
            cluster.restore(WORKER_NODE)
            at_restore = store.run_status(job.run_name)
        print(f"link down for {time.monotonic() - cut:.1f} s")
    finally:
        watcher.kill()
        watcher.communicate(timeout=30)
    job.finish()

    assert at_cut["status"] == "running"
    assert 1 <= at_cut["generations"] <= GENERATIONS - 2  # a later generation started after
    assert at_restore["status"] == "running"  # the link came back while the search ran
    assert_ends_like(store, job.run_id, uninterrupted.run_id)

    actors = cluster.actor_nodes(job.submission_id)
    assert WORKER_NODE in actors.values() and "head" in actors.values()
    later = [r for r in store.evaluations(job.run_id) if r.generation > at_cut["generations"]]
    assert later and {actors[worker_pid(r.worker)] for r in later} == {"head"}
    # back on the network, the node stays out: Ray declared it dead and its raylet left
    assert WORKER_NODE not in cluster.alive_nodes()
    assert "raylet" not in names(cluster.processes(WORKER_NODE))
