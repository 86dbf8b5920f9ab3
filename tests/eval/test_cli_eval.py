"""``ftprune eval``: input checked before any model loads, data hygiene, reserved tasks,
and the ad-hoc, run and comparison paths end to end on the tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftprune.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
ROW_FIELDS = {
    "task",
    "metric",
    "dense",
    "routed",
    "retention",
    "ci_low",
    "ci_high",
    "n",
    "realized_sparsity",
    "flop_saving",
}


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: errors must come first."""
    import router

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(router, "load_model", refuse)


def one_error_line(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], lines


def make_run(db_url: str, name: str = "r1", **overrides) -> list[float]:
    """A run of the tiny config with a best schedule, as a finished search leaves it."""
    from search.config import build_config
    from storage import Store
    from tests.storage.helpers import scored

    config = build_config(ROOT / "configs/tiny.yaml", run_name=name, **overrides)
    store = Store(db_url)
    run = store.create_run(name, config.model_dump(), seed=0)
    best = [0.1, 0.3, 0.4, 0.4]
    store.record_generation(run.id, 0, [scored(0.5, best)], 0.5, best)
    store.close()
    return best


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("{not json", "not a JSON file"),
        (
            json.dumps({"examples": [{"input": "q", "target_scores": {"a": 0, "b": 0}}]}),
            "no correct choice",
        ),
        (json.dumps({"examples": [{"input": "q", "target_scores": {}}]}), "has no choices"),
        (json.dumps({"tasks": []}), "no 'examples'"),
    ],
)
def test_bad_task_file_is_one_line_before_any_model(write_task, no_model_load, text, fragment):
    result = runner.invoke(
        app,
        [
            "eval",
            "--model",
            "random:llama-tiny",
            "--sparsity",
            "0.3",
            "--task-file",
            str(write_task(text=text)),
        ],
    )
    one_error_line(result, fragment)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--sparsity", "0.3"], "exactly one of"),
        (["--model", "random:llama-tiny"], "--model needs --sparsity, --schedule or both"),
        (
            ["--model", "random:llama-tiny", "--sparsity", "0.3", "--router", "static,dynamic"],
            "--router with --model must be static or random",
        ),
        (
            ["--model", "random:llama-tiny", "--schedule", "0.1,0.2"],
            "--schedule has 2 entries but random:llama-tiny has 4 decoder blocks",
        ),
        (["--model", "random:llama-tiny", "--schedule", "0.1,lots"], "comma-separated"),
        (["--model", "random:llama-tiny", "--schedule", "0,0,0,1"], "[0, 1)"),
        (["--model", "random:llama-tiny", "--sparsity", "1.2"], "[0, 1)"),
        (
            ["--model", "random:llama-tiny", "--sparsity", "0.3", "--router", "dynamic"],
            "static or random",
        ),
        (
            ["--model", "random:llama-tiny", "--sparsity", "0.3", "--task-file", "/no/task.json"],
            "not found",
        ),
        (["--model", "random:llama-tiny", "--sparsity", "0.3", "--limit", "0"], "--limit"),
        (["--model", "nope", "--sparsity", "0.3"], "unknown model"),
        (["--export", "/no/such/dir"], "not a router checkpoint"),
    ],
)
def test_bad_options_are_one_line(no_model_load, args, fragment):
    one_error_line(runner.invoke(app, ["eval", *args]), fragment)


def test_task_the_run_calibrated_on_is_refused(write_task, db_url, no_model_load):
    task = write_task("calib_task")
    make_run(db_url, calibration=str(task))
    for spec in (str(task), str(task.parent)):
        result = runner.invoke(app, ["eval", "--run", "r1", "--task-file", spec, "--db", db_url])
        one_error_line(result, "calibrated and trained on")


@pytest.mark.parametrize(
    "spec",
    [
        "bigbench:physics",
        "bigbench:physics/some_subtask",
        "/data/bigbench/general_knowledge/task.json",
        "/data/contextual_parametric_knowledge_conflicts/sub/task.json",
    ],
)
def test_reserved_task_as_calibration_is_refused(tmp_path, spec):
    db = tmp_path / "never.db"
    result = runner.invoke(
        app,
        [
            "search",
            "launch",
            "--config",
            str(ROOT / "configs/tiny.yaml"),
            "--calibration",
            spec,
            "--db",
            f"sqlite:///{db}",
        ],
    )
    one_error_line(result, "reserved task")
    assert not db.exists()


def test_reserved_task_in_a_config_file_is_refused_for_training(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        (ROOT / "configs/tiny.yaml")
        .read_text()
        .replace("calibration: builtin:pydoc", "calibration: bigbench:vitaminc_fact_verification")
    )
    db = tmp_path / "never.db"
    result = runner.invoke(app, ["pipeline", "--config", str(config), "--db", f"sqlite:///{db}"])
    one_error_line(result, "reserved task")
    assert not db.exists()


def test_reserved_task_as_data_spec_is_refused():
    from workers import DataSpec, DataSpecError

    with pytest.raises(DataSpecError, match="reserved task"):
        DataSpec("bigbench:physics", "calibration", (64,), 1)
    DataSpec("bigbench:physics", "heldout", (64,), 1)  # evaluating on it is allowed


@pytest.mark.parametrize(
    "option, value, schedule",
    [("--sparsity", "0.4", [0.4] * 4), ("--schedule", "0,0.2,0.6,0.8", [0.0, 0.2, 0.6, 0.8])],
)
def test_ad_hoc_eval_matches_the_scorer(write_task, tmp_path, option, value, schedule):
    from evaluation.choice import score_choices
    from evaluation.tasks import load_task_file
    from router import load_model, route

    task = write_task()
    out = tmp_path / "rows.json"
    result = runner.invoke(
        app,
        [
            "eval",
            "--model",
            "random:llama-tiny",
            option,
            value,
            "--task-file",
            str(task),
            "--json",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [r["metric"] for r in rows] == ["acc", "acc_norm"]
    assert all(ROW_FIELDS <= set(r) and r["n"] == 5 for r in rows)
    model, tokenizer = load_model("random:llama-tiny")
    examples = load_task_file(task).examples
    dense = score_choices(model, tokenizer, examples, progress=False)
    route(model, schedule)
    routed = score_choices(model, tokenizer, examples, progress=False)
    assert rows[0]["dense"] == pytest.approx(sum(dense.acc) / 5)
    assert rows[0]["routed"] == pytest.approx(sum(routed.acc) / 5)
    assert rows[0]["realized_sparsity"] == pytest.approx(routed.realized_sparsity)
    assert "acc_norm" in result.output and "retention" in result.output


def test_run_eval_stores_rows_and_text_metrics(write_task, db_url, tmp_path):
    from storage import Store, queries

    make_run(db_url)
    out = tmp_path / "rows.json"
    result = runner.invoke(app, ["eval", "--run", "r1", "--db", db_url, "--json", str(out), "-q"])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert {r["metric"] for r in rows} == {"window_kl", "top1_agreement", "window_ppl"}
    assert all(
        r["task"] == "text:builtin:pydoc" and r["n"] == 2 and r["label"] == "best" for r in rows
    )
    kl = next(r for r in rows if r["metric"] == "window_kl")
    assert kl["routed"] > 0 and 0.2 < kl["realized_sparsity"] < 0.4
    stored = queries.eval_results(Store(db_url, create=False))
    assert len(stored) == 3 and set(stored["label"]) == {"best"}


def test_compare_writes_one_table_and_plot(write_task, db_url, tmp_path):
    make_run(db_url)
    plot, out = tmp_path / "cmp.png", tmp_path / "cmp.json"
    result = runner.invoke(
        app,
        [
            "eval",
            "--compare",
            "r1",
            "--task-file",
            str(write_task()),
            "--db",
            db_url,
            "--plot",
            str(plot),
            "--json",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    pairs = {(r["label"], r["router"]) for r in rows}
    assert pairs == {
        (a, r) for a in ("uniform", "block_influence", "searched") for r in ("static", "random")
    }
    dense = {r["dense"] for r in rows if r["metric"] == "acc"}
    assert len(dense) == 1  # the same dense scores for every row
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_eval_uses_its_router_and_schedule(write_task, tmp_path):
    import torch

    from router.checkpoint import save_router
    from router.dynamic import DynamicRouter

    torch.manual_seed(0)
    schedule = [0.0, 0.3, 0.4, 0.5]
    export = save_router(tmp_path / "export", DynamicRouter(), schedule, "random:llama-tiny")
    out = tmp_path / "rows.json"
    result = runner.invoke(
        app,
        [
            "eval",
            "--export",
            str(export),
            "--task-file",
            str(write_task()),
            "--json",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert {(r["label"], r["router"]) for r in rows} == {("export", "dynamic")}
    assert rows[0]["realized_sparsity"] == pytest.approx(sum(schedule) / 4, abs=0.05)
