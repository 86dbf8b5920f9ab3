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
