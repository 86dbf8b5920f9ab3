"""Fixtures of the evaluation tests: BIG-bench-format task files written by the tests, and
lm-eval kept off the network."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

EXAMPLES = [
    {"input": "The sky is", "target_scores": {"blue": 1, "green": 0, "a long answer": 0}},
    {"input": "2 + 2 =", "target_scores": {"4": 1, "5": 0, "22": 0}},
    {"input": "Water is", "target_scores": {"wet": 1, "dry": 0}},
    {"input": "Fire is", "target_scores": {"cold": 0, "hot": 1}},
    {"input": "A cat says", "target_scores": {"woof": 0, "meow": 1, "moo": 0, "quack": 0}},
]


@pytest.fixture
def write_task(tmp_path: Path) -> Callable[..., Path]:
    """Write a task file ``<tmp>/<name>/task.json`` holding ``data`` (or the standard
    examples) and return its path."""

    def write(name: str = "toy_task", data: Any = None, text: str | None = None) -> Path:
        directory = tmp_path / name
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "task.json"
        path.write_text(
            text
            if text is not None
            else json.dumps(data if data is not None else {"examples": EXAMPLES})
        )
        return path

    return write
