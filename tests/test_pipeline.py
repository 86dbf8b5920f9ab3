"""FTP's three steps on a tiny model: the pipeline's records, ``router train``, ``export``,
the seeded fine-tuning search, and input checks that run before the database is touched."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ftprune.cli import app
from search.ga import EvolutionarySearch, GAParams
from storage import Store

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny.yaml"
runner = CliRunner()


def _refused(result, message: str) -> None:
    """Bad input: exit status 2, nothing on stdout, one line on stderr naming ``message``."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines


def _dump(db_url: str) -> list[str]:
    """Every row and schema statement of a SQLite database (what a write would change)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as db:
        return list(db.iterdump())


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    """(database URL, CLI output) of ``ftprune pipeline`` on the tiny config, 2 rounds."""
    root = tmp_path_factory.mktemp("pipeline")
    db_url = f"sqlite:///{root / 'ftprune.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        result = runner.invoke(
            app,
            [
                "pipeline",
                "--config",
                str(TINY),
                "--rounds",
                "2",
                "--run-name",
                "tiny",
                "--db",
                db_url,
                "--quiet",
            ],
        )
    assert result.exit_code == 0, result.output
    return db_url, result.output, root


def test_pipeline_records_each_step_and_round(tiny_pipeline):
    db_url, output, root = tiny_pipeline
    assert "fine-tuned + dynamic router" in output
    # What takes a while is announced: the worker's start, where each checkpoint goes.
    assert "== starting the in-process worker; it loads random:llama-tiny once\n" in output
    store = Store(db_url, create=False)
    main = store.find_run("tiny")
    first, second = store.find_run("tiny-finetune-1"), store.find_run("tiny-finetune-2")
    assert first.config["seed_run"] == "tiny" and second.config["seed_run"] == "tiny-finetune-1"
    assert all(run.status == "finished" for run in (main, first, second))
    assert first.generations_done == second.generations_done == 2
    routers = store.routers(main.id)
    assert [r.label for r in routers] == ["round-1", "round-2"]
    assert routers[0].schedule == main.best_schedule
    assert routers[1].schedule == first.best_schedule  # round 2 starts where round 1 ended
    for router, child in zip(routers, (first, second), strict=True):
        assert child.config["router"] == f"dynamic:{router.checkpoint}"
        assert Path(router.checkpoint).is_relative_to(root / "ftprune-artifacts" / "tiny")
        announced = f"router on a worker; its checkpoint goes to {router.checkpoint}\n"
        assert announced in output
        assert (router.lambda_guide, router.lambda_sparse, router.lambda_distill) == (1, 1, 1)
        assert router.curves["step"] == [0, 1, 2, 3]
        assert router.curves["lambda_guide"] == [1.0, 0.5, 0.0, 0.0]
        assert router.config["heldout_curve"]["eval_step"] == [0, 2, 4]
        assert router.heldout_kl == router.config["heldout_curve"]["heldout_kl"][-1]
        # trained by the local pool's in-process scorer: this process is the worker
        assert router.config["device"] == "cpu"
        assert router.config["worker"].endswith(f":{os.getpid()}")
        assert {r.router for r in store.evaluations(child.id)} == {"dynamic"}
    labels = [h.label for h in store.heldout(main.id)]
    assert labels == ["best", "uniform", "dynamic-1", "finetuned-1", "dynamic-2", "finetuned-2"]
    # Step 3 starts from step 1's parents: they are re-scored with the trained router first.
    parents = EvolutionarySearch.from_state(store.search_state(main.id)).parents
    generation0 = [r.schedule for r in store.evaluations(first.id) if r.generation == 0]
    assert all(parent in generation0 for parent in parents)


def test_an_interrupted_fine_tuning_run_resumes_to_the_pipelines_result(tiny_pipeline):
    """Step 3's run (seeded from step 1, scoring with the trained router) stopped after one
    of its two generations, as a coordinator that died would leave it: ``search resume``
    finishes it with exactly the evaluations and held-out rows of the pipeline's own
    uninterrupted step 3."""
    from search.coordinator import run_search
    from search.settings import scorer_settings
    from search.stored import load_run_config, stored_config
    from workers.pool import LocalPool

    db_url, _, _ = tiny_pipeline
    store = Store(db_url, create=False)
    done = store.find_run("tiny-finetune-1")
    config = load_run_config(done).model_copy(update={"run_name": "tiny-finetune-1-again"})
    assert config.seed_run == "tiny" and config.router.startswith("dynamic:")
    run = store.create_run(config.run_name, stored_config(config), config.seed)
    with LocalPool(scorer_settings(config)) as pool:
        run_search(config.model_copy(update={"generations": 1}), store, pool, run.id, False)
    assert store.run_status(run.id)["generations"] == 1
    result = runner.invoke(app, ["search", "resume", config.run_name, "--db", db_url, "--quiet"])
    assert result.exit_code == 0, result.output

    def stored(run_id: int) -> tuple[list, list]:
        evaluations = sorted(
            (r.generation, r.stage, tuple(r.schedule), r.router, r.fitness)
            for r in store.evaluations(run_id)
        )
        heldout = [(h.label, h.schedule, h.router, h.kl, h.top1) for h in store.heldout(run_id)]
        return evaluations, heldout

    assert stored(run.id) == stored(done.id)
    resumed = store.find_run(run.id)
    assert resumed.status == "finished" and resumed.best_schedule == done.best_schedule


def test_router_train_and_export_round_trip(tiny_pipeline, tmp_path):
    from router import load_model, route
    from router.checkpoint import load_routed, load_router

    db_url, _, root = tiny_pipeline
    store = Store(db_url, create=False)
    schedule = ",".join(["0.5"] * 4)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        result = runner.invoke(
            app,
            [
                "router",
                "train",
                "--run",
                "tiny",
                "--schedule",
                schedule,
                "--any-mean",
                "--label",
                "manual",
                "--steps",
                "2",
                "--db",
                db_url,
                "--quiet",
            ],
        )
    assert result.exit_code == 0, result.output
    manual = store.routers(store.find_run("tiny").id)[-1]
    assert manual.label == "manual" and manual.schedule == [0.5] * 4
    assert manual.curves["step"] == [0, 1]

    out = tmp_path / "export"
    result = runner.invoke(
        app,
        ["export", "--run", "tiny", "--out", str(out), "--router", "manual", "--db", db_url],
    )
    assert result.exit_code == 0, result.output
    assert "router manual" in result.output and "trained schedule" in result.output
    meta = json.loads((out / "router.json").read_text())
    assert meta["schedule"] == [0.5] * 4  # the router's own: it has no fine-tuned schedule
    model, _, routing = load_routed(out)
    reference, _ = load_model("random:llama-tiny")
    route(reference, [0.5] * 4, load_router(manual.checkpoint)[0])
    ids = torch.randint(3, 200, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_export_refuses_a_changed_checkpoint(tiny_pipeline, tmp_path):
    db_url, _, _ = tiny_pipeline
    store = Store(db_url, create=False)
    routers = store.routers(store.find_run("tiny").id)
    exported = next(r for r in routers if r.label == "round-2")  # a plain export's router
    weights = Path(exported.checkpoint) / "router.safetensors"
    original = weights.read_bytes()
    before = _dump(db_url)
    try:
        weights.write_bytes(original[:-4] + bytes(b ^ 0xFF for b in original[-4:]))
        result = runner.invoke(
            app, ["export", "--run", "tiny", "--out", str(tmp_path / "out"), "--db", db_url]
        )
    finally:
        weights.write_bytes(original)
    _refused(result, "changed since it was recorded")
    assert not (tmp_path / "out").exists() and _dump(db_url) == before


@pytest.mark.parametrize(
    "args,message",
    [
        (["--rounds", "0"], "--rounds"),
        (["--pool", "nowhere"], "pool"),
    ],
)
def test_pipeline_bad_input_is_one_line_and_touches_no_database(tmp_path, args, message):
    db = tmp_path / "never.db"
    result = runner.invoke(
        app, ["pipeline", "--config", str(TINY), "--db", f"sqlite:///{db}", *args]
    )
    _refused(result, message)
    assert not db.exists()


def test_pipeline_refuses_a_config_that_is_not_a_step_1(tmp_path):
    config = tmp_path / "step3.yaml"
    config.write_text(TINY.read_text() + "router: random\n")
    db = tmp_path / "never.db"
    result = runner.invoke(app, ["pipeline", "--config", str(config), "--db", f"sqlite:///{db}"])
    _refused(result, "static router")
    assert not db.exists()


@pytest.mark.parametrize(
    "router,message",
    [
        ("dynamic:/no/such/dir", "not a router checkpoint"),
        ("learned", "unknown router"),
    ],
)
def test_bad_router_spec_is_refused_before_the_search(tmp_path, router, message):
    config = tmp_path / "bad.yaml"
    config.write_text(TINY.read_text() + f"router: {router}\n")
    db = tmp_path / "never.db"
    result = runner.invoke(
        app, ["search", "launch", "--config", str(config), "--db", f"sqlite:///{db}"]
    )
    _refused(result, message)
    assert not db.exists()


def test_seeded_search_starts_from_the_given_parents():
    params = GAParams(
        num_blocks=6, target=0.3, s_max=0.8, level_step=0.05, offspring=5, parents=2, seed=1
    )
    parents = [[0.3] * 6, [0.2, 0.4, 0.3, 0.3, 0.2, 0.4]]
    search = EvolutionarySearch(params, seed_parents=parents)
    candidates = search.ask()
    assert [[round(s, 6) for s in c] for c in candidates[:2]] == parents
    assert len(candidates) == 7 and len({tuple(c) for c in candidates}) == 7
    assert all(abs(sum(c) / 6 - 0.3) < 1e-9 for c in candidates)
    again = EvolutionarySearch(params, seed_parents=parents).ask()
    assert again == candidates
    with pytest.raises(ValueError, match="distinct"):
        EvolutionarySearch(params, seed_parents=[parents[0], parents[0]])


def test_bench_quality_rows_cover_every_allocation_seed_and_length(tmp_path):
    out = tmp_path / "quality.json"
    result = runner.invoke(
        app,
        [
            "bench",
            "quality",
            "--config",
            str(TINY),
            "--seeds",
            "2",
            "--seq-len",
            "48",
            "--seq-len",
            "64",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    expected = {
        ("uniform", "static"),
        ("block_influence", "static"),
        ("searched", "static"),
        ("searched", "dynamic"),
        ("finetuned", "dynamic"),
    }
    assert {(r["allocation"], r["router"]) for r in rows} == expected
    assert len(rows) == len(expected) * 2 * 2
    assert {(r["seed"], r["seq_len"]) for r in rows} == {(0, 48), (0, 64), (1, 48), (1, 64)}
    for row in rows:
        assert abs(row["realized_sparsity"] - 0.3) <= 1 / row["seq_len"]
        assert row["heldout_kl"] >= 0 and 0 <= row["heldout_top1"] <= 1
    uniform = [r["heldout_kl"] for r in rows if r["allocation"] == "uniform" and r["seq_len"] == 64]
    assert uniform[0] == uniform[1]  # no seed in it: same schedule, same router, same data
    assert "finetuned" in result.output and "±" in result.output


def test_bench_ablation_trains_every_variant(tmp_path):
    out = tmp_path / "ablation.json"
    result = runner.invoke(
        app, ["bench", "ablation", "--config", str(TINY), "--seeds", "1", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    routers = [r["router"] for r in json.loads(out.read_text())]
    assert routers == [
        "static",
        "random",
        "dynamic",
        "dynamic-no-position",
        "dynamic-no-attention",
        "dynamic-no-rank",
        "dynamic-no-sparsity",
        "hidden_state",
    ]


def test_labels_round_trip_and_refuse_what_they_are_not():
    from search.records import BEST, UNIFORM, HeldoutLabel, RouterLabel

    for label in (UNIFORM, BEST, HeldoutLabel("dynamic", 2), HeldoutLabel("finetuned", 11)):
        assert HeldoutLabel.from_json(label.to_json()) == label
    assert HeldoutLabel("finetuned", 3).to_json() == "finetuned-3"
    for text in ("round-1", "dynamic", "finetuned-0", "best-1", "manual"):
        with pytest.raises(ValueError):
            HeldoutLabel.from_json(text)
    with pytest.raises(ValueError):
        HeldoutLabel("best", 1)
    assert RouterLabel.from_json("round-4") == RouterLabel(round=4)
    assert RouterLabel(round=4).finetuned == HeldoutLabel("finetuned", 4)
    manual = RouterLabel.from_json("manual")
    assert manual.name == "manual" and manual.finetuned is None and manual.to_json() == "manual"
    with pytest.raises(ValueError):
        RouterLabel.from_json("dynamic-1")  # reads as a held-out label


def test_router_train_refuses_a_label_that_reads_as_a_heldout_row(tiny_pipeline):
    db_url, _, _ = tiny_pipeline
    before = _dump(db_url)
    result = runner.invoke(
        app,
        ["router", "train", "--run", "tiny", "--label", "finetuned-1", "--db", db_url, "--quiet"],
    )
    _refused(result, "--label")
    assert _dump(db_url) == before


def test_export_names_what_it_writes_and_keeps_the_last_rounds_schedule(tiny_pipeline, tmp_path):
    """An extra ``router train`` after the pipeline (its default label is the next round)
    does not change what a plain ``export`` writes: the pipeline's last round's router
    with its fine-tuned schedule, as the output says; the extra router exports only when
    asked, with the schedule it was trained for."""
    db_url, _, root = tiny_pipeline
    store = Store(db_url, create=False)
    main = store.find_run("tiny")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        trained = runner.invoke(
            app, ["router", "train", "--run", "tiny", "--steps", "1", "--db", db_url, "--quiet"]
        )
    assert trained.exit_code == 0, trained.output
    extra = store.routers(main.id)[-1]
    assert extra.label.startswith("round-") and extra.label not in ("round-1", "round-2")
    finetuned = {h.label: h.schedule for h in store.heldout(main.id)}["finetuned-2"]

    out = tmp_path / "plain"
    result = runner.invoke(app, ["export", "--run", "tiny", "--out", str(out), "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "router round-2" in result.output and "fine-tuned schedule" in result.output
    assert json.loads((out / "router.json").read_text())["schedule"] == finetuned

    asked = ["export", "--run", "tiny", "--router", extra.label, "--db", db_url]
    refused = runner.invoke(app, [*asked, "--out", str(tmp_path / "refused")])
    _refused(refused, f"router '{extra.label}' of run 'tiny' has no fine-tuned schedule")
    result = runner.invoke(app, [*asked, "--schedule", "trained", "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "t" / "router.json").read_text())
    assert meta["schedule"] == extra.schedule == main.best_schedule


def test_a_pipeline_that_stopped_after_step_1_resumes_to_the_same_result(tiny_pipeline):
    """``pipeline --resume`` of a run whose pipeline stopped after its search (step 1)
    trains the router and fine-tunes, ending where the uninterrupted pipeline's first round
    ended: same router schedule, same fine-tuned schedule and fitness, same held-out KL."""
    db_url, _, root = tiny_pipeline
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        first = runner.invoke(
            app,
            [
                "search",
                "launch",
                "--config",
                str(TINY),
                "--run-name",
                "again",
                "--db",
                db_url,
                "--quiet",
            ],
        )
        assert first.exit_code == 0, first.output
        resumed = runner.invoke(
            app, ["pipeline", "--resume", "again", "--rounds", "1", "--db", db_url, "--quiet"]
        )
    assert resumed.exit_code == 0, resumed.output
    store = Store(db_url, create=False)
    want, got = store.find_run("tiny"), store.find_run("again")
    assert got.best_schedule == want.best_schedule
    (router,) = store.routers(got.id)
    assert router.label == "round-1"
    assert router.schedule == store.routers(want.id)[0].schedule
    assert router.heldout_kl == store.routers(want.id)[0].heldout_kl
    child, reference = store.find_run("again-finetune-1"), store.find_run("tiny-finetune-1")
    assert child.status == "finished"
    assert (child.best_schedule, child.best_fitness) == (
        reference.best_schedule,
        reference.best_fitness,
    )
    heldout = {h.label: h.kl for h in store.heldout(got.id)}
    expected = {h.label: h.kl for h in store.heldout(want.id)}
    assert set(heldout) == {"best", "uniform", "dynamic-1", "finetuned-1"}
    assert all(heldout[label] == expected[label] for label in heldout)
