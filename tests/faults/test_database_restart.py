"""The PostgreSQL server restarted during a search: between generations and while a
generation is being scored (the database still down when the generation is stored). The
coordinator reconnects with backoff and goes on; every generation is stored exactly once
and the result equals an uninterrupted run's. A database down for longer than the backoff
budget stops the run with one line, and the run resumes from its last stored generation."""

from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy import func, select

from search.coordinator import launch, resume
from search.settings import scorer_settings
from storage import Store
from storage.engine import DatabaseUnavailable
from storage.schema import GenerationRow
from tests.faults.helpers import later, rows, tiny
from tests.storage.postgres import PostgresServer
from workers.pool import LocalPool

pytestmark = pytest.mark.fault
GENERATIONS = 3


class BreakingPool(LocalPool):
    """A local pool that calls ``faults[n]()`` before scoring its n-th batch (batches go
    stage by stage: 2 per generation on the tiny config, then the held-out one)."""

    def __init__(self, settings, faults):
        super().__init__(settings)
        self.faults, self.batches = faults, 0

    def evaluate(self, requests, on_result=None):
        fault = self.faults.get(self.batches)
        self.batches += 1
        if fault:
            fault()
        return super().evaluate(requests, on_result)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its evaluations and its search's outcome."""
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('reference') / 'reference.db'}")
    outcome = launch(tiny(generations=GENERATIONS, run_name="reference"), store, False)
    return rows(store, outcome.run_id), outcome.search


def _summaries(store: Store, run_id: int) -> list[tuple[int, int]]:
    with store.read_engine.connect() as connection:
        return connection.execute(
            select(GenerationRow.generation, func.count())
            .where(GenerationRow.run_id == run_id)
            .group_by(GenerationRow.generation)
            .order_by(GenerationRow.generation)
        ).all()


def test_restarts_between_and_during_generations_lose_and_repeat_nothing(
    pg_server: PostgresServer, pg_url, reference, monkeypatch, caplog
):
    monkeypatch.setenv("FTPRUNE_LEASE_S", "1.5")  # heartbeats every 0.5 s hit the outage too
    caplog.set_level(logging.WARNING)
    config = tiny(generations=GENERATIONS, run_name="restarted")
    restarts: list = []

    def down_while_scoring():  # back 2 s later: storing this generation meets the outage
        pg_server.halt()
        restarts.append(later(2.0, pg_server.start))

    faults = {2: pg_server.restart, 5: down_while_scoring}
    store = Store(pg_url, retry_s=60)
    with BreakingPool(scorer_settings(config), faults) as pool:
        outcome = launch(config, store, show_progress=False, pool=pool)
    for thread in restarts:
        thread.join()
    retried = [r.message for r in caplog.records if r.name == "storage.transactions"]
    assert any("retrying in" in message for message in retried), "no write met the outage"

    want, search = reference
    assert rows(store, outcome.run_id) == want  # every evaluation once, same fitness
    assert [g for g, _ in _summaries(store, outcome.run_id)] == list(range(GENERATIONS))
    status = store.run_status("restarted")
    assert status["status"] == "finished" and status["generations"] == GENERATIONS
    assert status["best_schedule"] == search.best_schedule
    assert status["best_fitness"] == search.best_fitness
    assert len(store.heldout(outcome.run_id)) == 2


def test_a_database_down_past_the_budget_stops_the_run_in_one_line_and_it_resumes(
    pg_server: PostgresServer, pg_url, reference, monkeypatch
):
    monkeypatch.setenv("FTPRUNE_LEASE_S", "1.0")
    config = tiny(generations=GENERATIONS, run_name="outage")
    store = Store(pg_url, retry_s=2)
    started = time.monotonic()
    with BreakingPool(scorer_settings(config), {3: pg_server.halt}) as pool:
        with pytest.raises(DatabaseUnavailable) as caught:
            launch(config, store, show_progress=False, pool=pool)
    waited = time.monotonic() - started
    message = str(caught.value)
    assert "\n" not in message and "still unreachable after 2 s of retries" in message
    assert "`ftprune search resume outage` continues it" in message
    pg_server.start()
    status = store.run_status("outage")
    assert status["generations"] == 1 and status["status"] == "running"
    time.sleep(1.2)  # the stopped coordinator could not release its lease: let it expire
    resumed = resume("outage", store, show_progress=False)
    want, search = reference
    assert rows(store, resumed.run_id) == want
    assert resumed.search.best_schedule == search.best_schedule
    assert store.run_status("outage")["status"] == "finished" and waited < 60
