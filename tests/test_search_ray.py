"""An end-to-end search on a local Ray instance stores every evaluation."""

from __future__ import annotations

import pytest

from search.config import build_config
from search.coordinator import launch
from search.ga import is_feasible
from storage import Store

pytestmark = pytest.mark.ray


def test_search_on_local_ray_stores_every_evaluation(db_url, tmp_path):
    from pathlib import Path

    config = build_config(
        Path(__file__).resolve().parents[1] / "configs/tiny.yaml",
        pool="ray",
        workers=2,
        run_name="ray-e2e",
        generations=3,
    )
    store = Store(db_url)
    outcome = launch(config, store, show_progress=False)
    rows = store.evaluations(outcome.run_id)
    assert len(rows) == outcome.search.evaluations > config.offspring + config.parents
    keys = [(r.generation, r.stage, tuple(r.schedule)) for r in rows]
    assert len(set(keys)) == len(keys)  # no candidate recorded twice at one stage
    schedules = [tuple(r.schedule) for r in rows]
    assert {r.generation for r in rows} == {0, 1, 2}
    assert len({r.worker for r in rows}) == 2  # both actors did work
    assert all(is_feasible(s, 0.3, config.max_block_sparsity) for s in schedules)
    last = [r for r in rows if r.generation == 2 and r.stage == 1]
    best = min(last, key=lambda r: r.fitness)
    status = store.run_status("ray-e2e")
    assert status["status"] == "finished" and status["evaluations"] == len(rows)
    assert status["best_schedule"] == outcome.search.best_schedule
    assert status["best_fitness"] == outcome.search.best_fitness
    assert best.fitness <= status["best_fitness"]
    assert {h.label for h in store.heldout(outcome.run_id)} == {"best", "uniform"}
