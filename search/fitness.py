"""The coordinator's scoring of one selection stage: the generation's minibatch order, and
the fitness cache (per-sequence window statistics keyed by schedule, router and sequence),
so no candidate is ever scored twice on the same data."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # storage and workers (torch) load lazily
    from storage import EvaluationRecord
    from workers.pool import EvaluationPool
    from workers.scoring import WindowStats

Key = tuple[tuple[float, ...], str, int]  # (schedule, router, sequence index)


@dataclass
class FitnessCache:
    """Per-sequence window statistics keyed by (schedule, router, sequence); counts hits."""

    stats: dict[Key, WindowStats] = field(default_factory=dict)
    hits: int = 0

    def missing(self, schedule: Sequence[float], router: str, data: Sequence[int]) -> list[int]:
        key = tuple(schedule)
        missing = [i for i in data if (key, router, i) not in self.stats]
        self.hits += len(data) - len(missing)
        return missing

    def add(
        self, schedule: Sequence[float], router: str, per_sequence: dict[int, WindowStats]
    ) -> None:
        key = tuple(schedule)
        for index, stats in per_sequence.items():
            self.stats[(key, router, index)] = stats

    def merged(self, schedule: Sequence[float], router: str, data: Sequence[int]) -> WindowStats:
        from workers.scoring import merge_stats

        key = tuple(schedule)
        return merge_stats([self.stats[(key, router, i)] for i in data])


def stats_from_json(per_sequence: dict[str, list[float]]) -> dict[int, WindowStats]:
    """Stored per-sequence window sums (:meth:`WindowStats.to_json`) read back."""
    from workers.scoring import WindowStats

    return {int(i): WindowStats.from_json(values) for i, values in per_sequence.items()}


def minibatch_order(seed: int, generation: int, num_sequences: int) -> list[int]:
    """The generation's shuffle of calibration sequence indices (depends on nothing else)."""
    order = list(range(num_sequences))
    random.Random(f"ftprune:{seed}:{generation}").shuffle(order)
    return order


def score_stage(
    pool: EvaluationPool,
    cache: FitnessCache,
    failed: dict[tuple[float, ...], str],
    candidates: list[list[float]],
    router_spec: str,
    data: list[int],
    generation: int,
    stage: int,
    records: list[EvaluationRecord],
    show_progress: bool,
) -> dict[tuple[float, ...], float]:
    """Score ``candidates`` on ``data`` through the cache; append a record per candidate
    that needed new work (a failure with its reason, added to ``failed``); return each
    candidate's fitness on ``data`` (infinite for a failed one, which is never requested
    again)."""
    from tqdm.auto import tqdm

    from router import router_kind
    from storage import EvaluationRecord
    from workers.pool import ScoreRequest

    router = router_kind(router_spec)  # one router per run: its kind keys the cache
    requests, owners = [], []
    for schedule in candidates:
        if tuple(schedule) in failed:
            continue
        missing = cache.missing(schedule, router, data)
        if missing:
            requests.append(ScoreRequest(schedule, "calibration", router_spec, tuple(missing)))
            owners.append(schedule)
    with tqdm(
        total=len(requests),
        desc=f"generation {generation + 1} stage {stage + 1}",
        unit="cand",
        disable=not show_progress,
        leave=False,
    ) as bar:
        results = pool.evaluate(requests, on_result=lambda _: bar.update())
    for schedule, result in zip(owners, results, strict=True):
        if result.error is not None:
            failed[tuple(schedule)] = result.error
        else:
            cache.add(schedule, router, result.per_sequence)
        records.append(
            EvaluationRecord(
                schedule=schedule,
                router=router,
                metrics=(
                    None
                    if result.error is not None
                    else cache.merged(schedule, router, data).metrics()
                ),
                duration_s=result.duration_s,
                worker=result.worker,
                stage=stage,
                sequences=data,
                forward_tokens=result.forward_tokens,  # 0 for a failure: its work was lost
                per_sequence={str(i): s.to_json() for i, s in result.per_sequence.items()},
                error=result.error,
            )
        )
    return {
        tuple(s): math.inf if tuple(s) in failed else cache.merged(s, router, data).metrics().kl
        for s in candidates
    }
