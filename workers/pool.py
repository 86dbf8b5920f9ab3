"""Two ways to run the scorer behind one interface: in this process, or on Ray actors.

The search only ever calls :meth:`EvaluationPool.evaluate`; it never imports Ray.
Guarantees of every pool: ``evaluate`` returns one :class:`Evaluation` per schedule, in the
order given; each worker loads the model once and keeps it for the pool's lifetime.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Sequence

from workers.scoring import Evaluation, Scorer, ScorerSettings
from workers.data import Split

OnResult = Callable[[Evaluation], None]


class EvaluationPool(abc.ABC):
    """Scores batches of schedules; see the module docstring for the guarantees."""

    num_blocks: int

    @abc.abstractmethod
    def evaluate(self, schedules: Sequence[Sequence[float]], split: Split = "calibration",
                 router: str = "static", on_result: OnResult | None = None) -> list[Evaluation]:
        """Score every schedule; ``on_result`` is called as each result arrives."""

    def close(self) -> None:
        """Release the workers. Idempotent."""

    def __enter__(self) -> "EvaluationPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalPool(EvaluationPool):
    """One scorer in this process; schedules are scored one after another."""

    def __init__(self, settings: ScorerSettings) -> None:
        self.scorer = Scorer(settings)
        self.num_blocks = self.scorer.num_blocks

    def evaluate(self, schedules: Sequence[Sequence[float]], split: Split = "calibration",
                 router: str = "static", on_result: OnResult | None = None) -> list[Evaluation]:
        results = []
        for schedule in schedules:
            results.append(self.scorer.score(schedule, split, router))
            if on_result:
                on_result(results[-1])
        return results


class RayPool(EvaluationPool):
    """``workers`` Ray actors, each holding its own scorer (model loaded once per actor).

    Connects to ``address`` (e.g. ``"auto"`` on a cluster) or starts a local Ray instance.
    Each actor reserves ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs and keeps at most
    one task in flight, so work flows to whichever actor is free.
    """

    def __init__(self, settings: ScorerSettings, workers: int, address: str | None = None,
                 cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0) -> None:
        import ray

        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
            self._owns_ray = True
        else:
            self._owns_ray = False
        threads = settings.threads or max(1, int(cpus_per_worker))
        actor_class = ray.remote(_ScorerActor).options(num_cpus=cpus_per_worker,
                                                      num_gpus=gpus_per_worker)
        self._actors = [actor_class.remote(settings, threads) for _ in range(workers)]
        self.num_blocks = ray.get([a.num_blocks.remote() for a in self._actors])[0]

    def evaluate(self, schedules: Sequence[Sequence[float]], split: Split = "calibration",
                 router: str = "static", on_result: OnResult | None = None) -> list[Evaluation]:
        import ray

        results: list[Evaluation | None] = [None] * len(schedules)
        pending: dict[Any, tuple[int, Any]] = {}
        queue = list(enumerate(schedules))
        idle = list(self._actors)
        while queue or pending:
            while queue and idle:
                index, schedule = queue.pop(0)
                actor = idle.pop()
                pending[actor.score.remote(list(schedule), split, router)] = (index, actor)
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                index, actor = pending.pop(ref)
                results[index] = ray.get(ref)
                idle.append(actor)
                if on_result:
                    on_result(results[index])
        return results  # type: ignore[return-value]

    def close(self) -> None:
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False


class _ScorerActor:
    """The Ray actor body: a :class:`Scorer` built once in the actor process."""

    def __init__(self, settings: ScorerSettings, threads: int) -> None:
        from dataclasses import replace
        self.scorer = Scorer(replace(settings, threads=threads))

    def num_blocks(self) -> int:
        return self.scorer.num_blocks

    def score(self, schedule: list[float], split: Split, router: str) -> Evaluation:
        return self.scorer.score(schedule, split, router)


def make_pool(settings: ScorerSettings, kind: str, workers: int = 1,
              address: str | None = None, cpus_per_worker: float = 1.0,
              gpus_per_worker: float = 0.0) -> EvaluationPool:
    """The pool a run config asks for: ``local`` or ``ray``."""
    if kind == "local":
        return LocalPool(settings)
    if kind == "ray":
        return RayPool(settings, workers, address, cpus_per_worker, gpus_per_worker)
    raise ValueError(f"unknown pool {kind!r}; choose 'local' or 'ray'")
