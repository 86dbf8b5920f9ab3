"""``ftprune bench routing``: input checks, and the rows of a tiny run."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from search.cli import app

runner = CliRunner()
ROW_KEYS = {"model", "dtype", "batch", "seq_len", "target_sparsity", "realized_sparsity",
            "dense_ms", "routed_ms", "speedup", "ideal_speedup", "efficiency", "scope"}


def test_help_names_the_options():
    result = runner.invoke(app, ["bench", "routing", "--help"])
    assert result.exit_code == 0
    for option in ("--seq-len", "--batch", "--sparsity", "--json", "--attention-window"):
        assert option in result.output


@pytest.mark.parametrize("args,message", [
    (["--sparsity", "1.0"], "--sparsity"),
    (["--seq-len", "1"], "--seq-len"),
    (["--batch", "0"], "--batch"),
    (["--dtype", "int8"], "--dtype"),
    (["--clock", "sundial"], "--clock"),
    (["--model", "no-such-model"], "unknown model"),
    (["--json", "/no/such/dir/out.json"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = runner.invoke(app, ["bench", "routing", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_tiny_run_writes_rows_of_every_scope(tmp_path):
    out = tmp_path / "routing.json"
    result = runner.invoke(app, ["bench", "routing", "--model", "random:qwen2-tiny",
                                 "--seq-len", "48", "--sparsity", "0", "--sparsity", "0.5",
                                 "--repeats", "1", "--warmup", "1", "--clock", "cpu",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [(r["scope"], r["target_sparsity"]) for r in rows] == [
        ("blocks", 0.0), ("blocks", 0.5), ("end_to_end", 0.0), ("end_to_end", 0.5),
        ("features", 0.0)]
    for row in rows:
        assert ROW_KEYS <= set(row)
        assert row["clock"] == "cpu" and row["threads"] == torch.get_num_threads()
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["ideal_speedup"], rel=1e-3)
    # S = 0 runs the whole routing machinery: one token skipped per block.
    assert rows[0]["realized_sparsity"] == pytest.approx(1 / 48, abs=1e-6)
    blocks, end_to_end = rows[1], rows[3]
    assert blocks["realized_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert blocks["ideal_speedup"] == pytest.approx(1 / (1 - blocks["realized_sparsity"]), rel=1e-3)
    # The LM head and embeddings do not shrink: the end-to-end ideal is lower.
    assert 1.0 <= end_to_end["ideal_speedup"] <= blocks["ideal_speedup"]
    assert rows[4]["feature_share"] == pytest.approx(1 / rows[4]["speedup"] - 1, abs=1e-3)
