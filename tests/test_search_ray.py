"""Searches on a local Ray instance: every evaluation stored, workers that hang or die on a
candidate, a run resumed on a Ray pool; and a finished run resumed (nothing changes)."""

from __future__ import annotations

import functools
import os
import socket
import time
from pathlib import Path
from typing import Sequence

import pytest

from search.config import build_config
from search.coordinator import RunFinished, launch, resume, run_search
from search.ga import is_feasible
from search.settings import scorer_settings
from storage import Store
from workers import Scorer, ScorerSettings
from workers.pool import LocalPool, RayPool, ScoreRequest, WorkerFailure
from workers.scoring import Evaluation, SplitSequences

TINY = Path(__file__).resolve().parents[1] / "configs/tiny.yaml"
VICTIM = [0.2, 0.4, 0.3, 0.3]  # the schedule the faulty scorer misbehaves on
REQUESTS = [ScoreRequest(s) for s in ([0.3] * 4, VICTIM, [0.4, 0.2, 0.3, 0.3], [0.1] * 4)]


class FaultyScorer(Scorer):
    """A scorer that misbehaves whenever it is asked to score :data:`VICTIM`: ``fault``
    ``"hang"`` sleeps ``hang_s`` the first time any worker of the pool meets it (after that
    it scores normally), ``"die"`` ends its process every time. Each attempt appends the
    worker's pid to the file ``attempts`` first."""

    def __init__(
        self,
        settings: ScorerSettings,
        sequences: SplitSequences | None = None,
        *,
        fault: str,
        attempts: str,
        hang_s: float = 300.0,
    ) -> None:
        super().__init__(settings, sequences)
        self.fault, self.attempts, self.hang_s = fault, Path(attempts), hang_s

    def score(
        self,
        schedule: Sequence[float],
        split: str = "calibration",
        router: str = "static",
        sequences: Sequence[int] | None = None,
    ) -> Evaluation:
        if [float(s) for s in schedule] == VICTIM:
            with self.attempts.open("a") as log:
                log.write(f"{os.getpid()}\n")
            first = len(self.attempts.read_text().split()) == 1
            if self.fault == "die":
                os._exit(1)
            if self.fault == "hang" and first:
                time.sleep(self.hang_s)
        return super().score(schedule, split, router, sequences)  # type: ignore[arg-type]


def _settings() -> ScorerSettings:
    return scorer_settings(build_config(TINY))


def _rows(store: Store, run_id: int) -> list[tuple]:
    return sorted(
        (r.generation, r.stage, tuple(r.schedule), r.fitness) for r in store.evaluations(run_id)
    )


@pytest.mark.ray
@pytest.mark.usefixtures("ray_instance")
def test_search_on_local_ray_stores_every_evaluation(db_url):
    config = build_config(TINY, pool="ray", workers=2, run_name="ray-e2e", generations=3)
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


@pytest.mark.ray
@pytest.mark.usefixtures("ray_instance")
@pytest.mark.fault
def test_hung_worker_is_replaced_after_the_task_timeout(tmp_path):
    """The worker that hangs on the victim is killed once its task has run longer than
    ``task_timeout_s``; the request runs again on a fresh worker, and every request gets
    its one result, equal to the in-process scorer's, long before the hang would end."""
    attempts = tmp_path / "attempts"
    settings = _settings()
    with LocalPool(settings) as local:
        expected = local.evaluate(REQUESTS)
    factory = functools.partial(FaultyScorer, fault="hang", attempts=str(attempts))
    pool = RayPool(settings, workers=2, task_timeout_s=5.0, max_retries=2, scorer_factory=factory)
    delivered: list[Evaluation] = []
    try:
        started = time.monotonic()
        results = pool.evaluate(REQUESTS, on_result=delivered.append)
        elapsed = time.monotonic() - started
    finally:
        pool.close()
    hung, retried = attempts.read_text().split()
    assert hung != retried  # the second attempt ran in another process
    assert pool.replaced == 1
    assert 5.0 < elapsed < 300.0
    assert len(delivered) == len(REQUESTS) and sorted(map(id, delivered)) == sorted(
        map(id, results)
    )
    for got, want in zip(results, expected, strict=True):
        assert got.schedule == want.schedule
        assert got.fitness == pytest.approx(want.fitness, rel=1e-5)


@pytest.mark.ray
@pytest.mark.usefixtures("ray_instance")
@pytest.mark.fault
def test_a_request_whose_worker_dies_every_time_raises_worker_failure(tmp_path):
    """A worker that dies on the victim every time is replaced ``max_retries`` times, then
    the pool gives up with :class:`WorkerFailure` naming the request (no endless loop)."""
    attempts = tmp_path / "attempts"
    factory = functools.partial(FaultyScorer, fault="die", attempts=str(attempts))
    pool = RayPool(_settings(), workers=2, max_retries=2, scorer_factory=factory)
    try:
        with pytest.raises(WorkerFailure, match="request 1 failed 3 times"):
            pool.evaluate(REQUESTS)
        replaced = pool.replaced
    finally:
        pool.close()
    pids = attempts.read_text().split()
    assert len(pids) == 3 and len(set(pids)) == 3  # one attempt per fresh worker
    assert replaced == 2


@pytest.mark.ray
@pytest.mark.usefixtures("ray_instance")
def test_a_run_resumed_on_a_ray_pool_ends_like_an_uninterrupted_one(tmp_path):
    """Two of four generations stored (as a coordinator that died would leave them), the
    run resumes on two Ray workers to the result of an uninterrupted in-process run."""
    config = build_config(TINY, generations=4, run_name="ray-resume")
    store = Store(f"sqlite:///{tmp_path / 'resumed.db'}")
    run = store.create_run(config.run_name, config.model_dump(), config.seed)
    with LocalPool(scorer_settings(config)) as local:
        partial = config.model_copy(update={"generations": 2})
        run_search(partial, store, local, run.id, show_progress=False)
    assert store.run_status("ray-resume")["generations"] == 2
    pool = RayPool(scorer_settings(config), workers=2)
    try:
        outcome = resume("ray-resume", store, show_progress=False, pool=pool)
        workers = {f"{socket.gethostname()}:{pid}" for pid in pool.worker_pids()}
    finally:
        pool.close()
    reference = Store(f"sqlite:///{tmp_path / 'reference.db'}")
    expected = launch(config.model_copy(update={"run_name": "reference"}), reference, False)
    got, want = _rows(store, run.id), _rows(reference, expected.run_id)
    assert [row[:3] for row in got] == [row[:3] for row in want]  # each candidate once
    assert [row[3] for row in got] == pytest.approx([row[3] for row in want], rel=1e-5)
    later = {r.worker for r in store.evaluations(run.id) if r.generation >= 2}
    assert later <= workers  # the resumed generations were scored on the Ray workers
    status = store.run_status("ray-resume")
    assert status["status"] == "finished" and status["generations"] == 4
    assert outcome.search.best_schedule == expected.search.best_schedule
    assert [h.label for h in store.heldout(run.id)] == ["best", "uniform"]


def test_resuming_a_finished_run_changes_no_stored_result(db_url):
    """A finished run has nothing left to search: resuming it is refused in one line naming
    ``search status``, and its evaluations, best and held-out rows stay as they were."""
    config = build_config(TINY, generations=2, run_name="done")
    store = Store(db_url)
    launch(config, store, show_progress=False)
    run_id = store.find_run("done").id

    def stored() -> tuple:
        heldout = [
            (h.id, h.label, h.schedule, h.router, h.kl, h.top1, h.ppl, h.realized_sparsity)
            for h in store.heldout(run_id)
        ]
        run = store.find_run(run_id)
        return heldout, _rows(store, run_id), run.best_schedule, run.best_fitness

    before = stored()
    with pytest.raises(RunFinished, match="nothing to resume; `ftprune search status done`"):
        resume("done", store, show_progress=False)
    assert stored() == before
    assert store.run_status("done")["status"] == "finished"
    assert [label for _, label, *_ in before[0]] == ["best", "uniform"]
