"""Scorers that fail on purpose and pools that break the database mid-search."""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from search.config import RunConfig, build_config
from storage import Store
from workers import Scorer
from workers.data import Split
from workers.scoring import Evaluation, ScorerSettings, SplitSequences

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/tiny.yaml"


def tiny(**overrides: Any) -> RunConfig:
    return build_config(TINY, **overrides)


def is_uniform(schedule: Sequence[float]) -> bool:
    return max(schedule) - min(schedule) < 1e-9


def is_front_loaded(schedule: Sequence[float]) -> bool:
    """Block 0 skips the most (the initial population's falling ramp, and offspring)."""
    return not is_uniform(schedule) and schedule[0] == max(schedule)


class FailingScorer(Scorer):
    """A real scorer that fails on the calibration split for chosen schedules: it raises
    ``torch.OutOfMemoryError`` where ``oom(schedule)``, returns a NaN fitness where
    ``nan(schedule)``. ``calls`` counts calibration requests per schedule."""

    def __init__(
        self,
        settings: ScorerSettings,
        sequences: SplitSequences | None = None,
        oom: Callable[[Sequence[float]], bool] = is_uniform,
        nan: Callable[[Sequence[float]], bool] = is_front_loaded,
    ) -> None:
        super().__init__(settings, sequences)
        self.oom, self.nan = oom, nan
        self.calls: dict[tuple[float, ...], int] = {}

    def score(
        self,
        schedule: Sequence[float],
        split: Split = "calibration",
        router: str = "static",
        sequences: Sequence[int] | None = None,
    ) -> Evaluation:
        if split == "calibration":
            key = tuple(schedule)
            self.calls[key] = self.calls.get(key, 0) + 1
            if self.oom(schedule):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        result = super().score(schedule, split, router, sequences)
        if split == "calibration" and self.nan(schedule):
            first = min(result.per_sequence)
            poisoned = replace(result.per_sequence[first], kl_sum=math.nan)
            return replace(result, per_sequence={**result.per_sequence, first: poisoned})
        return result


def always(_schedule: Sequence[float]) -> bool:
    return True


def never(_schedule: Sequence[float]) -> bool:
    return False


def rows(store: Store, run_id: int) -> list[tuple]:
    """Every evaluation of the run as (generation, stage, schedule, fitness, error)."""
    return sorted(
        (r.generation, r.stage, tuple(r.schedule), r.fitness, r.error)
        for r in store.evaluations(run_id)
    )


def later(seconds: float, action: Callable[[], None]) -> threading.Thread:
    """Run ``action`` in a thread after ``seconds``; join the returned thread."""
    thread = threading.Timer(seconds, action)
    thread.start()
    return thread
