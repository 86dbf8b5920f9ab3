"""The embedded demo, quick budgets, on the real pretrained model and a local Ray instance."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from search.cli import app
from storage import Store

pytestmark = [pytest.mark.model, pytest.mark.ray]


def test_quick_demo_records_run_and_every_evaluation(db_url):
    result = CliRunner().invoke(app, ["demo", "--quick", "--db", db_url, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "best schedule" in result.output
    assert "uniform + static router" in result.output
    store = Store(db_url, create=False)
    run = store.latest_run()
    status = store.run_status(run.id)
    assert status["status"] == "finished"
    rows = store.evaluations(run.id)
    assert len(rows) == status["evaluations"] > 0
    best = status["best_schedule"]
    assert len(best) == 30
    assert abs(math.fsum(best) / 30 - 0.3) <= 1e-9
    final = [r for r in rows if r.generation == status["generations"] - 1 and r.stage == 1]
    assert status["best_fitness"] == min(r.fitness for r in final)
    labels = {h.label: h for h in store.heldout(run.id)}
    assert set(labels) == {"best", "uniform"}
    assert abs(labels["uniform"].realized_sparsity - 0.3) < 0.01
