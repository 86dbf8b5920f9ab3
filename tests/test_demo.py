"""The embedded demo (FTP's three steps at quick budgets) on the real pretrained model and a
local Ray instance, and the export of what it produced."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ftprune.cli import app
from storage import Store

pytestmark = [pytest.mark.model, pytest.mark.ray, pytest.mark.usefixtures("ray_instance")]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """(database URL, CLI output) of one quick demo, run in its own directory."""
    root = tmp_path_factory.mktemp("demo")
    db_url = f"sqlite:///{root / 'ftprune.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # router checkpoints go to ./ftprune-artifacts
        result = CliRunner().invoke(app, ["demo", "--quick", "--db", db_url, "--quiet"])
    assert result.exit_code == 0, result.output
    return db_url, result.output


def test_quick_demo_records_every_step(demo_run):
    db_url, output = demo_run
    for text in (
        "searched schedule",
        "uniform + static router",
        "searched + static router",
        "searched + dynamic router",
        "fine-tuned + dynamic router",
    ):
        assert text in output
    store = Store(db_url, create=False)
    child = store.latest_run()
    assert child.name.endswith("-finetune-1") and child.status == "finished"
    main = store.find_run(child.config["seed_run"])
    status = store.run_status(main.id)
    assert status["status"] == "finished"
    rows = store.evaluations(main.id)
    assert len(rows) == status["evaluations"] > 0
    assert {r.router for r in rows} == {"static"}
    best = status["best_schedule"]
    assert len(best) == 30
    assert abs(math.fsum(best) / 30 - 0.3) <= 1e-9
    # The last stage reads every calibration sequence and parents always reach it: the best
    # is the best final-stage score of the whole run (a parent's score is recorded once).
    assert status["best_fitness"] == min(r.fitness for r in rows if r.stage == 1)

    # Step 2: one router row with its curves, held-out metrics and an intact checkpoint.
    (router,) = store.routers(main.id)
    assert router.schedule == best and router.curves["step"] == [0, 1, 2]
    assert len(router.curves["distill"]) == 3
    weights = Path(router.checkpoint) / "router.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == router.checkpoint_sha256
    assert abs(router.realized_sparsity - 0.3) < 0.005

    # Step 3: a child run seeded from step 1's parents, scored with the trained router.
    assert child.config["router"] == f"dynamic:{router.checkpoint}"
    child_rows = store.evaluations(child.id)
    assert child_rows and {r.router for r in child_rows} == {"dynamic"}
    assert best in [r.schedule for r in child_rows if r.generation == 0]
    assert abs(math.fsum(child.best_schedule) / 30 - 0.3) <= 1e-9

    heldout = {h.label: h for h in store.heldout(main.id)}
    assert set(heldout) == {"best", "uniform", "dynamic-1", "finetuned-1"}
    assert heldout["dynamic-1"].router == heldout["finetuned-1"].router == "dynamic"
    assert heldout["finetuned-1"].schedule == child.best_schedule
    for row in heldout.values():
        assert abs(row.realized_sparsity - 0.3) < 0.005


def test_export_loads_into_the_same_routed_model(demo_run, tmp_path):
    from router import load_model, route
    from router.checkpoint import load_routed, load_router

    db_url, _ = demo_run
    store = Store(db_url, create=False)
    main = store.find_run(store.latest_run().config["seed_run"])
    out = tmp_path / "routed"
    result = CliRunner().invoke(
        app, ["export", "--run", main.name, "--out", str(out), "--db", db_url]
    )
    assert result.exit_code == 0, result.output
    model, tokenizer, routing = load_routed(out)
    assert routing.schedule == store.latest_run().best_schedule
    ids = tokenizer(
        "def search(population):\n    return sorted(population)", return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        exported = model(ids).logits
    reference, _ = load_model("smollm2-135m")
    (router_row,) = store.routers(main.id)
    route(reference, routing.schedule, load_router(router_row.checkpoint)[0])
    with torch.no_grad():
        assert torch.equal(exported, reference(ids).logits)
    again = CliRunner().invoke(
        app, ["export", "--run", main.name, "--out", str(out), "--db", db_url]
    )
    assert again.exit_code == 2 and "not empty" in again.output
