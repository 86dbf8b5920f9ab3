"""A worker that fails for some candidates (out of memory, NaN fitness): each is recorded
once as failed with its reason, ranks worst, is never scored again, and the search goes on,
on the local pool and on Ray (where the worker is not replaced); a search whose every
candidate fails stops with the reason instead of spinning."""

from __future__ import annotations

import functools

import pytest

from search.coordinator import SearchFailure, launch
from search.ga import EvolutionarySearch
from search.settings import scorer_settings
from storage import Store
from tests.faults import helpers
from tests.faults.helpers import FailingScorer, rows, tiny
from workers.pool import LocalPool, RayPool

pytestmark = pytest.mark.fault


def _check_failures(store: Store, run_id: int) -> list[tuple]:
    """Every failed candidate: once, with its reason, never a parent or the best."""
    got = rows(store, run_id)
    failed = [r for r in got if r[4] is not None]
    assert failed, "the fault never fired"
    schedules = [r[2] for r in failed]
    assert len(schedules) == len(set(schedules))  # each failed schedule recorded once
    assert all(r[3] is None for r in failed)
    assert all(
        r[4].startswith(("OutOfMemoryError: CUDA out of memory", "non-finite fitness on sequence"))
        for r in failed
    )
    oom = [r for r in failed if r[4].startswith("OutOfMemoryError: CUDA out of memory")]
    assert len(oom) == 1 and helpers.is_uniform(oom[0][2])  # uniform is in generation 0 only
    assert any(r[4].startswith("non-finite fitness") for r in failed)
    status = store.run_status(run_id)
    assert status["status"] == "finished" and status["failed_evaluations"] == len(failed)
    assert not helpers.is_uniform(status["best_schedule"])
    assert not helpers.is_front_loaded(status["best_schedule"])
    state = store.search_state(run_id)
    assert state is not None
    parents = EvolutionarySearch.from_state(state).parents
    assert all(tuple(p) not in set(schedules) for p in parents)
    return got


def test_failing_candidates_on_the_local_pool_are_recorded_once_and_ranked_worst(tmp_path):
    config = tiny(generations=3, run_name="failing-local")
    store = Store(f"sqlite:///{tmp_path / 'local.db'}")
    with LocalPool(scorer_settings(config), FailingScorer) as pool:
        outcome = launch(config, store, show_progress=False, pool=pool)
        calls = pool.scorer.calls
    _check_failures(store, outcome.run_id)
    failed = {r[2] for r in rows(store, outcome.run_id) if r[4] is not None}
    assert all(calls[s] == 1 for s in failed)  # no retry of a failed schedule, ever
    assert outcome.heldout.keys() and all(e.error is None for e in outcome.heldout.values())


def test_every_candidate_failing_stops_the_run_with_the_reason(tmp_path):
    config = tiny(generations=3, run_name="all-fail")
    store = Store(f"sqlite:///{tmp_path / 'all.db'}")
    factory = functools.partial(FailingScorer, oom=helpers.always, nan=helpers.never)
    with LocalPool(scorer_settings(config), factory) as pool:
        with pytest.raises(SearchFailure) as caught:
            launch(config, store, show_progress=False, pool=pool)
        calls = pool.scorer.calls
    message = str(caught.value)
    assert "generation 1, stage 1: none of the 8 candidates could be scored" in message
    assert "OutOfMemoryError: CUDA out of memory" in message and "\n" not in message
    assert sorted(calls.values()) == [1] * 8  # each candidate tried once, then the run stops
    status = store.run_status("all-fail")
    assert status["status"] == "failed" and "none of the 8 candidates" in status["error"]
    assert status["generations"] == 0 and status["evaluations"] == 0
    assert status["lease_owner"] is None  # released: resume may start at once


@pytest.mark.ray
@pytest.mark.usefixtures("ray_instance")
def test_failing_candidates_on_ray_keep_their_worker_and_match_the_local_run(tmp_path):
    import ray

    ray.cloudpickle.register_pickle_by_value(helpers)
    config = tiny(generations=3, run_name="failing-ray", pool="ray", workers=2)
    store = Store(f"sqlite:///{tmp_path / 'ray.db'}")
    pool = RayPool(scorer_settings(config), workers=2, scorer_factory=FailingScorer)
    try:
        pids = pool.worker_pids()
        outcome = launch(config, store, show_progress=False, pool=pool)
        assert pool.replaced == 0 and pool.worker_pids() == pids  # an error is no dead worker
    finally:
        pool.close()
    got = _check_failures(store, outcome.run_id)
    reference = Store(f"sqlite:///{tmp_path / 'reference.db'}")
    local = config.model_copy(update={"pool": "local", "run_name": "reference"})
    with LocalPool(scorer_settings(local), FailingScorer) as local_pool:
        expected = launch(local, reference, show_progress=False, pool=local_pool)
    want = rows(reference, expected.run_id)
    assert [(r[0], r[1], r[2], r[4]) for r in got] == [(r[0], r[1], r[2], r[4]) for r in want]
    scored = [r[3] for r in got if r[4] is None]
    assert scored == pytest.approx([r[3] for r in want if r[4] is None], rel=1e-5)
    assert outcome.search.best_schedule == expected.search.best_schedule
