"""``ftprune bench coordinator``: the whole search loop with a zero-cost scorer.

The model is replaced by :class:`ZeroCostScorer` (a closed-form score, no forward pass), so
what is timed is everything else a large cluster depends on: the evolutionary search, the
fitness cache, Ray dispatch to real actors, and the database writes of every evaluation.

Row: workers, candidates, candidates_per_s, db_rows_written, wall_s, database.
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from workers.scoring import Evaluation, ScorerSettings, SplitSequences, WindowStats


class ZeroCostScorer:
    """Scores a schedule by its squared distance to a fixed ramp, per sequence, instantly
    (no model: the pool's shared sequences are ignored)."""

    def __init__(
        self,
        settings: ScorerSettings,
        sequences: SplitSequences | None = None,
        num_blocks: int = 30,
        num_sequences: int = 8,
    ) -> None:
        self.settings = settings
        self.num_blocks = num_blocks
        self._sequences = num_sequences

    def num_sequences(self, split: str) -> int:
        return self._sequences

    def model_device(self) -> str:
        return "cpu"

    def score(
        self,
        schedule: Sequence[float],
        split: str = "calibration",
        router: str = "static",
        sequences: Sequence[int] | None = None,
    ) -> Evaluation:
        n = len(schedule)
        distance = sum((s - 0.6 * i / max(1, n - 1)) ** 2 for i, s in enumerate(schedule))
        indices = range(self._sequences) if sequences is None else sequences
        per_sequence = {
            i: WindowStats(
                kl_sum=distance * (1 + 0.01 * i),
                agree=1,
                nll_sum=1.0,
                positions=1,
                kept=1,
                seen=1,
                tokens=1,
            )
            for i in indices
        }
        return Evaluation(
            schedule=list(schedule),
            split=split,
            router=router,
            per_sequence=per_sequence,
            duration_s=0.0,
        )

    def block_influence(self) -> list[float]:
        return [1.0] * self.num_blocks


def run(
    workers: int, candidates: int, db_url: str | None = None, offspring: int = 64
) -> dict[str, Any]:
    """Search until ``candidates`` candidates have been scored; returns the row."""
    from search.config import RunConfig
    from search.coordinator import run_search
    from search.settings import run_plan
    from storage import Store
    from workers.pool import RayPool

    generations = max(1, candidates // (offspring + 2))
    config = RunConfig(
        model="random:llama-tiny",
        offspring=offspring,
        parents=2,
        generations=generations,
        seq_lens=[64],
        sequences_per_length=8,
        heldout_seq_lens=[64],
        window=8,
        pool="ray",
        workers=workers,
        block_influence_profile=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        url = db_url or f"sqlite:///{Path(tmp) / 'coordinator.db'}"
        store = Store(url)
        run_row = store.create_run(None, config.model_dump(), config.seed, plan=run_plan(config))
        factory = functools.partial(ZeroCostScorer, num_blocks=30, num_sequences=8)
        pool = RayPool(
            ScorerSettings(model=config.model), workers, cpus_per_worker=0.5, scorer_factory=factory
        )
        try:
            started = time.perf_counter()
            evaluations = run_search(
                config, store, pool, run_row.id, show_progress=False
            ).evaluations
            wall = time.perf_counter() - started
        finally:
            pool.close()
        store.close()
    return {
        "workers": workers,
        "candidates": evaluations,
        "candidates_per_s": evaluations / wall,
        "db_rows_written": evaluations,
        "wall_s": wall,
        "database": url.split(":", 1)[0],
    }
