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

    config = build_config(Path(__file__).resolve().parents[1] / "configs/tiny.yaml",
                          pool="ray", workers=2, run_name="ray-e2e", generations=3)
    store = Store(db_url)
    outcome = launch(config, store, show_progress=False)
    rows = store.evaluations(outcome.run_id)
    schedules = [tuple(r.schedule) for r in rows]
    assert len(rows) == outcome.evaluations > config.population
    assert len(set(schedules)) == len(schedules)  # no schedule scored twice
    assert {r.generation for r in rows} == {0, 1, 2}
    assert len({r.worker for r in rows}) == 2  # both actors did work
    assert all(is_feasible(s, 0.3, config.max_block_sparsity) for s in schedules)
    best = min(rows, key=lambda r: r.fitness)
    status = store.run_status("ray-e2e")
    assert status["status"] == "finished" and status["evaluations"] == len(rows)
    assert status["best_fitness"] == best.fitness and status["best_schedule"] == best.schedule
    assert {h.label for h in store.heldout(outcome.run_id)} == {"best", "uniform"}
