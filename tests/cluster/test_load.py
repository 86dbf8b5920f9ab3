"""Four searches at once on one PostgreSQL database and one Ray cluster: every run's rows are
its own, none lost or written twice, and each run's result equals its solo run with the same
seed (run alone, in this process, into SQLite)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from search.config import build_config
from search.coordinator import launch
from search.settings import scorer_settings
from storage import Store
from tests.cluster.conftest import GENERATIONS, ClusterDb
from tests.cluster.hosts import Cluster
from tests.cluster.test_jobs import rows
from workers.pool import LocalPool

pytestmark = [pytest.mark.cluster, pytest.mark.ray]

SEEDS = (0, 1, 2, 3)


def solo_runs(config_file: Path, db_url: str) -> dict[int, int]:
    """Seed -> run id of each seed's search run alone on one in-process worker, which scores
    with one thread like a Ray worker of half a CPU."""
    import torch

    threads = torch.get_num_threads()
    config = build_config(config_file, pool="local")
    store = Store(db_url)
    pool = LocalPool(replace(scorer_settings(config), threads=1))
    try:
        return {
            seed: launch(
                config.model_copy(update={"seed": seed, "run_name": f"solo-{seed}"}),
                store,
                show_progress=False,
                pool=pool,
            ).run_id
            for seed in SEEDS
        }
    finally:
        pool.close()
        torch.set_num_threads(threads)


def launch_command(cluster: Cluster, config: Path, seed: int) -> list[str]:
    """``ftprune search launch`` of one Ray worker, joining the cluster by its address (the
    database: ``FTPRUNE_DB``)."""
    return [
        "ftprune", "search", "launch", "--config", str(config),
        "--ray-address", cluster.gcs_address, "--workers", "1",
        "--seed", str(seed), "--run-name", f"load-{seed}", "--quiet",
    ]  # fmt: skip


def test_four_searches_at_once_each_reach_their_solo_result(
    cluster: Cluster, job_dir: Path, cluster_db: ClusterDb, tmp_path: Path
) -> None:
    started = time.monotonic()
    launches = {  # on the head, whose raylet the drivers use
        seed: cluster.command(
            "head", launch_command(cluster, job_dir / "cluster.yaml", seed), **cluster_db.env()
        )
        for seed in SEEDS
    }
    outputs = {seed: process.communicate(timeout=400)[0] for seed, process in launches.items()}
    for seed, process in launches.items():
        assert process.returncode == 0, outputs[seed][-3000:]
    print(f"four searches at once: {time.monotonic() - started:.0f} s")

    solo_url = f"sqlite:///{tmp_path / 'solo.db'}"
    solos, solo_store = solo_runs(job_dir / "cluster.yaml", solo_url), Store(solo_url)
    store = Store(cluster_db.admin_url, create=False)
    run_ids = {seed: store.find_run(f"load-{seed}").id for seed in SEEDS}
    assert len(set(run_ids.values())) == len(SEEDS)
    for seed, run_id in run_ids.items():
        status, solo = store.run_status(run_id), solo_store.run_status(solos[seed])
        assert status["status"] == "finished" and status["generations"] == GENERATIONS
        assert status["best_schedule"] == solo["best_schedule"]
        assert status["best_fitness"] == solo["best_fitness"]
        got = rows(store, run_id)
        assert got == rows(solo_store, solos[seed])  # none lost, none twice, none foreign
        assert status["evaluations"] == len(got)
        labels = sorted(h.label for h in store.heldout(run_id))
        assert labels == ["best", "uniform"]
    # the seeds' searches differ, so a row written into another run shows above
    assert len({tuple(rows(store, i)) for i in run_ids.values()}) == len(SEEDS)
