"""The development sets. ``configs/devsuite.yaml``: equal to ``--suite dev``, no reserved or
paper task, passage-first, at least 300 examples per task and retrieval family, the recorded
dense accuracy at least 15 points over chance. ``configs/devsuite-bigbench.yaml``, the
earlier BIG-bench suite: well formed, no reserved task, each task a JSON task of the
BIG-bench 1.0.0 release, at least half of them with the key information early in a long
prompt, the recorded dense accuracy at least 10 points over chance; with the release in the
cache, the recorded chance rates are those of the suite's examples."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml

from evaluation.bigbench import RELEASE_TASKS, read_index
from evaluation.suites import SUITES, load_suite
from evaluation.tasks import (
    BIGBENCH_PREFIX,
    RESERVED_TASKS,
    check_not_reserved,
    load_task_file,
    task_name,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SUITE_FILE = CONFIGS / "devsuite-bigbench.yaml"
DEV_FILE = CONFIGS / "devsuite.yaml"
TASK_KEYS = {"task", "key_info_first", "chance", "dense_acc", "why"}


@pytest.fixture(scope="module")
def suite() -> dict[str, Any]:
    data = yaml.safe_load(SUITE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def names(suite: dict[str, Any]) -> list[str]:
    return [str(task_name(entry["task"])) for entry in suite["tasks"]]


def test_suite_is_well_formed(suite: dict[str, Any]) -> None:
    assert set(suite) == {"model", "metric", "limit", "tasks"}
    assert suite["model"] == "smollm2-135m"
    assert suite["metric"] in ("acc", "acc_norm")
    assert isinstance(suite["limit"], int) and suite["limit"] >= 1
    assert 4 <= len(suite["tasks"]) <= 6
    for entry in suite["tasks"]:
        assert set(entry) == TASK_KEYS, entry
        assert entry["task"].startswith(BIGBENCH_PREFIX)
        assert isinstance(entry["key_info_first"], bool)
        assert isinstance(entry["why"], str) and entry["why"].strip()
        assert 0.0 < entry["chance"] < 1.0
        assert 0.0 <= entry["dense_acc"] <= 1.0
    assert len(set(names(suite))) == len(suite["tasks"])


def test_no_reserved_task_and_only_release_tasks(suite: dict[str, Any]) -> None:
    for entry, name in zip(suite["tasks"], names(suite), strict=True):
        check_not_reserved(entry["task"], use="the development suite")
        assert name.split("/")[0] not in RESERVED_TASKS
        assert name.split("/")[0] in RELEASE_TASKS


def test_half_the_suite_puts_the_key_information_first(suite: dict[str, Any]) -> None:
    first = sum(entry["key_info_first"] for entry in suite["tasks"])
    assert 2 * first >= len(suite["tasks"])


def test_dense_accuracy_is_clearly_above_chance(suite: dict[str, Any]) -> None:
    for entry in suite["tasks"]:
        assert entry["dense_acc"] >= entry["chance"] + 0.10, entry["task"]


def test_chance_rates_are_those_of_the_suite_examples(suite: dict[str, Any]) -> None:
    index = read_index()
    if index is None:
        pytest.skip(
            "the BIG-bench 1.0.0 release is not in the cache (fetched on first use "
            "of a bigbench: task)"
        )
    for entry, name in zip(suite["tasks"], names(suite), strict=True):
        assert name in index.tasks, name
        task = load_task_file(index.path(name), suite["limit"], name=name)
        chance = statistics.mean(len(e.correct) / len(e.choices) for e in task.examples)
        assert entry["chance"] == pytest.approx(chance, abs=5e-4), name


def test_the_development_set_is_the_dev_suite() -> None:
    assert load_suite(str(DEV_FILE)) == SUITES["dev"]


def test_the_development_set_has_power_and_no_held_back_data() -> None:
    data = yaml.safe_load(DEV_FILE.read_text())
    assert data["model"] == "smollm2-135m"
    for entry in data["tasks"]:
        check_not_reserved(entry["task"], use="the development set")
        assert entry["key_info_first"] is True
        assert entry["n"] >= 300
        assert entry["dense"] >= entry["chance"] + 0.15, entry["task"]
    grid = data["retrieval"]
    per_family = len(grid["lengths"]) * len(grid["depths"]) * grid["samples"]
    assert per_family >= 300
    for family in grid["families"]:
        check_not_reserved(f"retrieval:{family}", use="the development set")
        assert grid["dense"][family] >= grid["chance"] + 0.15, family
