"""Named evaluation suites: which tasks, how many examples of each, which retrieval grid.

- ``paper``: the FTP paper's suite (ARC-Easy, ARC-Challenge, HellaSwag, WinoGrande, MMLU),
  zero-shot with lm-eval's prompts and metrics (:mod:`evaluation.olmo`), on fixed subsets
  sized for 2 CPU cores: the first ``n`` of each task's fixed order (a seeded permutation;
  MMLU stratified, 6 questions of each of its 57 subjects). ``--limit`` takes fewer (a
  smoke run); ``paper-full`` is every example of the same splits (ARC-E 2376, ARC-C 1172,
  HellaSwag 10042, WinoGrande 1267, MMLU 14042), for a GPU.
- ``dev``: the development set for choosing between designs, passage-first tasks on which
  the dense model is clearly capable; ``configs/devsuite.yaml`` documents it (with the
  measurements behind each choice) and a test keeps it equal to :data:`DEV`.

A suite can also be read from a YAML file of the same shape (:func:`load_suite`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.examples import TaskError
from evaluation.retrieval import MIN_LENGTH, check_family

FULL = 1_000_000  # n larger than any task: every example


@dataclass(frozen=True)
class SuiteTask:
    spec: str  # a task spec (olmo:<task>, bigbench:<name>, a task.json)
    n: int  # the first n examples of the task's fixed order


@dataclass(frozen=True)
class RetrievalGrid:
    """Retrieval prompts: every family at every length and depth, ``samples`` each."""

    families: tuple[str, ...]
    lengths: tuple[int, ...]
    depths: tuple[float, ...]  # fractions of the haystack, 0..1
    samples: int

    def __post_init__(self) -> None:
        for family in self.families:
            check_family(family)
        if not self.families or not self.lengths or not self.depths:
            raise TaskError("a retrieval grid needs families, lengths and depths")
        if any(length < MIN_LENGTH for length in self.lengths):
            raise TaskError(f"retrieval lengths must be at least {MIN_LENGTH} tokens")
        if any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise TaskError("retrieval depths must lie in [0, 100] percent")
        if self.samples < 1:
            raise TaskError("retrieval samples must be at least 1")


@dataclass(frozen=True)
class Suite:
    name: str
    tasks: tuple[SuiteTask, ...]
    retrieval: RetrievalGrid | None = None


DEPTHS = tuple(d / 10 for d in range(11))  # 0%, 10%, ..., 100%
PAPER = Suite(
    "paper",
    (
        SuiteTask("olmo:arc_easy", 300),
        SuiteTask("olmo:arc_challenge", 300),
        SuiteTask("olmo:hellaswag", 300),
        SuiteTask("olmo:winogrande", 300),
        SuiteTask("olmo:mmlu", 342),
    ),
)
DEV = Suite(
    "dev",
    (SuiteTask("olmo:sciq", 1000),),
    RetrievalGrid(("niah_multikey", "qa"), (1024,), DEPTHS, 28),
)
PAPER_FULL = Suite("paper-full", tuple(SuiteTask(t.spec, FULL) for t in PAPER.tasks))
SUITES = {suite.name: suite for suite in (PAPER, PAPER_FULL, DEV)}


def load_suite(spec: str) -> Suite:
    """A suite by name (``paper``, ``dev``) or from a YAML file; TaskError (one line) for an
    unknown name or a malformed file. Reads no task data."""
    if spec in SUITES:
        return SUITES[spec]
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml"):
        raise TaskError(f"unknown suite {spec!r} (known: {', '.join(SUITES)}, or a YAML file)")
    if not path.is_file():
        raise TaskError(f"suite file not found: {spec}")
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return _suite(data)
    except (yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        if isinstance(error, TaskError):
            raise TaskError(f"{spec}: {error}") from None
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TaskError(f"{spec}: not a suite file ({detail})") from None


def _suite(data: Any) -> Suite:
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise TaskError("a suite file holds 'name' and a 'tasks' list")
    tasks = tuple(SuiteTask(str(t["task"]), int(t["n"])) for t in data["tasks"])
    if any(t.n < 1 for t in tasks):
        raise TaskError("every task's n must be at least 1")
    grid = data.get("retrieval")
    retrieval = None
    if grid is not None:
        retrieval = RetrievalGrid(
            tuple(str(f) for f in grid["families"]),
            tuple(int(n) for n in grid["lengths"]),
            tuple(float(d) / 100 for d in grid["depths"]),
            int(grid["samples"]),
        )
    return Suite(str(data["name"]), tasks, retrieval)
