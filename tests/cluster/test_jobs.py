"""The README's cluster recipe as it is written: the nodes started with its commands, and
``ray job submit`` of ``ftprune search launch --ray-address auto`` from the submitting
machine, the database URL in the job's runtime environment as ``FTPRUNE_DB`` and the role's
password in libpq's password file, so the password reaches neither Ray's job table nor its
logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import Store
from tests.cluster.conftest import GENERATIONS, ClusterDb, Job
from tests.cluster.hosts import DB_PASSWORD, Cluster
from tests.cluster.netns import NamespaceCluster
from tests.cluster.recipe import recipe_block, split

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
    cluster: Cluster, uninterrupted: Job, cluster_db: ClusterDb
) -> None:
    store = Store(cluster_db.admin_url, create=False)
    evaluations = store.evaluations(uninterrupted.run_id)
    keys = [(r.generation, r.stage, tuple(r.schedule)) for r in evaluations]
    assert len(set(keys)) == len(keys) > 2 * GENERATIONS  # no candidate twice at one stage
    assert {r.generation for r in evaluations} == set(range(GENERATIONS))
    assert all(r.error is None and r.fitness is not None for r in evaluations)
    assert {h.label for h in store.heldout(uninterrupted.run_id)} == {"best", "uniform"}

    actors = cluster.actor_nodes(uninterrupted.submission_id)
    assert sorted(actors.values()) == ["head", "worker"]  # one worker per node, none replaced
    assert {actors[worker_pid(r.worker)] for r in evaluations} == {"head", "worker"}

    # the README's status command, on the submitting machine
    shown = cluster.run_recipe("submit", "ftprune search status", "uninterrupted")
    assert DB_PASSWORD not in shown
    fields = dict(line.strip().split(": ", 1) for line in shown.splitlines() if ": " in line)
    assert fields["status"] == "finished" and fields["generations"] == str(GENERATIONS)
    assert fields["evaluations"] == str(len(evaluations))
    assert fields["best_fitness"] == str(store.run_status(uninterrupted.run_id)["best_fitness"])


def test_the_database_password_reaches_neither_ray_nor_the_output(
    cluster: Cluster, uninterrupted: Job, cluster_db: ClusterDb
) -> None:
    assert cluster_db.url in uninterrupted.output  # the report names the database
    assert DB_PASSWORD not in uninterrupted.output
    jobs = cluster.ray(
        "list", "jobs", "--detail", "--format", "json", "--address", cluster.dashboard_url
    )
    assert jobs.returncode == 0 and uninterrupted.submission_id in jobs.stdout
    assert cluster_db.url in jobs.stdout  # Ray keeps the job's runtime environment ...
    assert DB_PASSWORD not in jobs.stdout  # ... and there is no password in it
    ray_files = [path for d in cluster.ray_dirs() for path in d.rglob("*") if path.is_file()]
    assert any(path.name == "runtime_env_agent.log" for path in ray_files)  # it logs env vars
    assert [str(path) for path in ray_files if holds(path, DB_PASSWORD)] == []


def test_the_cluster_ran_the_readme_recipe(cluster: Cluster, uninterrupted: Job) -> None:
    """Every command of the README's recipe ran on its host, as written apart from the
    replaced addresses, resources and names: on the namespace cluster all of them (the
    resume command only where a driver died), on the loopback one the submitting
    machine's."""
    hosts = ["head", "worker", "submit"] if isinstance(cluster, NamespaceCluster) else ["submit"]
    later = ("ftprune search status", "ftprune search resume")  # run by tests when needed
    for host in hosts:
        ran = [command for on, command in cluster.ran if on == host]
        expected = [c for c in cluster.recipe.actions(host) if not c.startswith(later)]
        assert expected and set(expected) <= set(ran), (host, ran)


def test_the_recipe_reader_keeps_every_line_of_the_readme_block() -> None:
    block = recipe_block()
    commands = [line for cmds in split(block).values() for c in cmds for line in c.splitlines()]
    written = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert commands == written


def holds(path: Path, text: str) -> bool:
    try:
        return text.encode() in path.read_bytes()
    except OSError:  # gone meanwhile
        return False
