"""``ftprune bench routing``: input checks, and the rows of a tiny run."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from ftprune.bench.timing import median_ci95
from ftprune.cli import app

runner = CliRunner()
ROW_KEYS = {
    "model",
    "dtype",
    "batch",
    "seq_len",
    "target_sparsity",
    "realized_sparsity",
    "dense_ms",
    "routed_ms",
    "speedup",
    "ideal_speedup",
    "efficiency",
    "scope",
    "speedup_ci95",
    "efficiency_ci95",
    "heap",
}


def test_help_names_the_options():
    result = runner.invoke(app, ["bench", "routing", "--help"])
    assert result.exit_code == 0
    for option in ("--seq-len", "--batch", "--sparsity", "--json", "--attention-window"):
        assert option in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--sparsity", "1.0"], "--sparsity"),
        (["--seq-len", "2"], "--seq-len"),
        (["--batch", "0"], "--batch"),
        (["--dtype", "int8"], "--dtype"),
        (["--clock", "sundial"], "--clock"),
        (["--router", "oracle"], "--router must be static or dynamic"),
        (["--model", "no-such-model"], "unknown model"),
        (["--json", "/no/such/dir/out.json"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = runner.invoke(app, ["bench", "routing", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_tiny_run_writes_rows_of_every_scope(tmp_path):
    out = tmp_path / "routing.json"
    result = runner.invoke(
        app,
        [
            "bench",
            "routing",
            "--model",
            "random:qwen2-tiny",
            "--seq-len",
            "48",
            "--sparsity",
            "0",
            "--sparsity",
            "0.5",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--clock",
            "cpu",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [(r["scope"], r["target_sparsity"]) for r in rows] == [
        ("blocks", 0.0),
        ("blocks", 0.5),
        ("end_to_end", 0.0),
        ("end_to_end", 0.5),
        ("features", 0.0),
    ]
    for row in rows:
        assert ROW_KEYS <= set(row)
        assert row["clock"] == "cpu" and row["threads"] == torch.get_num_threads()
        # Both are rounded to 4 decimals: allow that much, whatever the magnitude.
        assert row["efficiency"] == pytest.approx(
            row["speedup"] / row["ideal_speedup"], rel=1e-3, abs=1e-4
        )
        low, high = row["speedup_ci95"]
        assert low <= row["speedup"] <= high
        assert row["heap"] in ("tuned", "default")
    # S = 0 runs the whole routing machinery: one token skipped per block, against a dense
    # run on as many tokens.
    assert rows[0]["realized_sparsity"] == pytest.approx(1 / 48, abs=1e-6)
    assert (rows[0]["dense_tokens"], rows[0]["ideal_speedup"]) == (47, 1.0)
    assert (rows[1]["dense_tokens"], rows[2]["ideal_speedup"]) == (48, 1.0)
    blocks, end_to_end = rows[1], rows[3]
    assert blocks["realized_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert blocks["ideal_speedup"] == pytest.approx(1 / (1 - blocks["realized_sparsity"]), rel=1e-3)
    # The LM head and embeddings do not shrink: the end-to-end ideal is lower.
    assert 1.0 <= end_to_end["ideal_speedup"] <= blocks["ideal_speedup"]
    assert rows[4]["feature_share"] == pytest.approx(1 / rows[4]["speedup"] - 1, abs=1e-3)


@pytest.mark.parametrize("n,ranks", [(20, (6, 15)), (100, (40, 61)), (6, (1, 6)), (5, (1, 5))])
def test_median_interval_uses_the_binomial_order_statistics(n, ranks):
    """The textbook ranks for a 95% interval of a median (the whole range below 6)."""
    values = [float(v) for v in range(n, 0, -1)]  # order of arrival must not matter
    assert median_ci95(values) == (float(ranks[0]), float(ranks[1]))


@pytest.mark.parametrize("router", ["static", "dynamic"])
def test_rows_above_zero_route_with_the_chosen_router(router, monkeypatch):
    from ftprune.bench.routing import RoutingBench, run
    from router.dynamic import DynamicRouter

    calls = []
    scores = DynamicRouter.scores

    def counted(self, block, hidden_states, state):
        calls.append(block)
        return scores(self, block, hidden_states, state)

    monkeypatch.setattr(DynamicRouter, "scores", counted)
    bench = RoutingBench(
        model="random:qwen2-tiny",
        seq_lens=(48,),
        sparsities=(0.5,),
        repeats=1,
        warmup=0,
        clock="cpu",
        router=router,
    )
    rows = run(bench)
    prefill = [r for r in rows if r["scope"] != "features"]
    assert [r["router"] for r in prefill] == [router, router]
    assert bool(calls) == (router == "dynamic")  # one timed forward per scope
    assert all(r["realized_sparsity"] == pytest.approx(0.5, abs=0.02) for r in prefill)
