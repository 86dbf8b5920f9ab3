"""Router training on a scorer's calibration sequences, measured on its held-out split.

The model stays frozen; only the router learns (see :mod:`router.training`). Held-out
measurements go through the same :class:`~workers.scoring.WindowComparator` path as every
other score, so a trained router's numbers compare directly with the static router's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from router.dynamic import FACTORS, DynamicRouter, HiddenStateRouter
from router.training import TrainConfig, train_router
from workers.scoring import Scorer, WindowComparator, WindowMetrics, merge_stats

ROUTER_KINDS = ("dynamic", "hidden_state")


@dataclass(frozen=True)
class TrainedRouter:
    """A trained router, its loss history and its final held-out window metrics."""

    router: nn.Module
    history: dict[str, list[float]]
    heldout: WindowMetrics
    train_s: float


class HeldoutEvaluator:
    """``evaluate(router)`` for :func:`router.training.train_router`: window KL, top-1,
    perplexity and realized sparsity of ``schedule`` routed by the router; ``last`` holds
    the latest measurement."""

    def __init__(self, comparator: WindowComparator, schedule: Sequence[float]) -> None:
        self.comparator = comparator
        self.schedule = list(schedule)
        self.last: WindowMetrics | None = None

    def __call__(self, router: nn.Module) -> dict[str, float]:
        stats = self.comparator.compare(self.schedule, router)
        self.last = m = merge_stats(list(stats.values())).metrics()
        return {"kl": m.kl, "top1": m.top1, "ppl": m.ppl, "sparsity": m.realized_sparsity}


def new_router(kind: str, hidden_size: int, factors: Sequence[str] = FACTORS) -> nn.Module:
    """An untrained router: FTP's ``dynamic`` router over ``factors``, or the
    ``hidden_state`` baseline (an MLP over the block's input hidden state)."""
    if kind == "dynamic":
        return DynamicRouter(factors)
    if kind == "hidden_state":
        return HiddenStateRouter(hidden_size)
    raise ValueError(f"unknown router kind {kind!r}; choose one of {', '.join(ROUTER_KINDS)}")


def train_on_scorer(scorer: Scorer, schedule: Sequence[float], config: TrainConfig,
                    kind: str = "dynamic", factors: Sequence[str] = FACTORS) -> TrainedRouter:
    """Train a new router for ``schedule`` on the scorer's calibration sequences, evaluating
    on its held-out sequences every ``config.eval_every`` steps and at the end."""
    torch.manual_seed(config.seed)
    router = new_router(kind, scorer.model.config.hidden_size, factors)
    calibration = scorer.comparator("calibration").sequences
    evaluate = HeldoutEvaluator(scorer.comparator("heldout"), schedule)
    started = time.perf_counter()
    history = train_router(scorer.model, router, schedule, calibration, evaluate, config)
    assert evaluate.last is not None  # train_router evaluates after the last step
    return TrainedRouter(router, history, evaluate.last, time.perf_counter() - started)
