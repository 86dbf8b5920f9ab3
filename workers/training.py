"""Router training on a scorer's calibration sequences, measured on its held-out split.

The model stays frozen; only the router learns (see :mod:`router.training`). Held-out
measurements go through the same :class:`~workers.scoring.WindowComparator` path as every
other score, so a trained router's numbers compare directly with the static router's.

Training runs where the scorer's model is (its device, its calibration sequences and teacher
outputs): a pool worker, never a process that would load a model of its own for it.
:func:`train_request` is the worker's side of :meth:`workers.pool.EvaluationPool.train`: a
plain-data request in, a plain-data :class:`TrainedRouterState` out (CPU tensors), which the
caller turns back into the router with :meth:`TrainedRouterState.router`.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, cast

import torch
from torch import nn

from router import TokenRouter
from router.dynamic import FACTORS, DynamicRouter
from router.registry import LearnedRouter, kind_of, new_router, restore_router, router_fields
from router.training import TrainConfig, train_router
from workers.scoring import Scorer, WindowComparator, WindowMetrics, merge_stats


@dataclass(frozen=True)
class TrainedRouter:
    """A trained router, its loss history and its final held-out window metrics."""

    router: LearnedRouter
    history: dict[str, list[float]]
    heldout: WindowMetrics
    train_s: float


@dataclass(frozen=True)
class TrainRequest:
    """Train a router of checkpoint kind ``kind`` (inputs ``factors``) for ``schedule``,
    with ``threads`` torch CPU threads for the duration (None: the worker's own)."""

    schedule: list[float]
    config: TrainConfig
    kind: str = "dynamic"
    factors: tuple[str, ...] = FACTORS
    threads: int | None = None


@dataclass(frozen=True)
class TrainedRouterState:
    """A trained router as plain data: its kind, the fields that rebuild it (see
    :data:`router.registry.TRAINED`), its state dict on the CPU, the loss and held-out
    curves, the final held-out metrics, the training time and the worker (host:pid) and
    device it trained on."""

    kind: str
    fields: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    history: dict[str, list[float]]
    heldout: WindowMetrics
    train_s: float
    device: str
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @classmethod
    def of(cls, trained: TrainedRouter, device: str) -> "TrainedRouterState":
        router = trained.router
        kind = kind_of(router)
        assert kind is not None  # train_on_scorer builds trained kinds only
        return cls(
            kind,
            router_fields(router),
            {name: t.detach().cpu().clone() for name, t in router.state_dict().items()},
            trained.history,
            trained.heldout,
            trained.train_s,
            device,
        )

    def router(self) -> LearnedRouter:
        """The trained router, on the CPU, in eval mode."""
        router = restore_router(self.kind, self.fields)
        router.load_state_dict(self.state_dict)
        return router.eval()


class HeldoutEvaluator:
    """``evaluate(router)`` for :func:`router.training.train_router`: window KL, top-1,
    perplexity and realized sparsity of ``schedule`` routed by the router; ``last`` holds
    the latest measurement."""

    def __init__(self, comparator: WindowComparator, schedule: Sequence[float]) -> None:
        self.comparator = comparator
        self.schedule = list(schedule)
        self.last: WindowMetrics | None = None

    def __call__(self, router: nn.Module) -> dict[str, float]:
        stats = self.comparator.compare(self.schedule, cast(TokenRouter, router))
        self.last = m = merge_stats(list(stats.values())).metrics()
        return {"kl": m.kl, "top1": m.top1, "ppl": m.ppl, "sparsity": m.realized_sparsity}


def train_on_scorer(
    scorer: Scorer,
    schedule: Sequence[float],
    config: TrainConfig,
    kind: str = "dynamic",
    factors: Sequence[str] = FACTORS,
    observe: Callable[[dict[str, float]], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainedRouter:
    """Train a new router for ``schedule`` on the scorer's calibration sequences, evaluating
    on its held-out sequences every ``config.eval_every`` steps and at the end; the router
    starts where ``config.init`` says and routes with nested selection if ``config.nested``.
    The dense teacher's window outputs are the scorer's own (computed once per worker for
    scoring and training alike). ``observe`` gets each evaluation's metrics as it happens,
    ``on_step`` each finished step's number; an exception either raises stops training
    (the model is left unrouted) and propagates."""
    torch.manual_seed(config.seed)
    router = new_router(kind, scorer.model.config.hidden_size, factors, config.nested)
    if config.init == "static":
        if not isinstance(router, DynamicRouter):
            raise ValueError(f"a {kind} router has no static start")
        router.start_at_static()
    router = router.to(scorer.device)
    comparator = scorer.comparator("calibration")
    teachers = comparator.teacher_log_probs() if config.distill == "kl" else None
    evaluate = HeldoutEvaluator(scorer.comparator("heldout"), schedule)

    def measured(module: nn.Module) -> dict[str, float]:
        metrics = evaluate(module)
        if observe is not None:
            observe(metrics)
        return metrics

    started = time.perf_counter()
    history = train_router(
        scorer.model, router, schedule, comparator.sequences, measured, config, teachers, on_step
    )
    assert evaluate.last is not None  # train_router evaluates after the last step
    return TrainedRouter(router, history, evaluate.last, time.perf_counter() - started)


def train_request(
    scorer: Scorer, request: TrainRequest, on_step: Callable[[int], None] | None = None
) -> TrainedRouterState:
    """Serve a pool's training request on ``scorer`` (see the module docstring), with the
    request's torch threads if it names them (the worker's own again afterwards);
    ``on_step`` gets each finished step's number."""
    threads = torch.get_num_threads()
    if request.threads:
        torch.set_num_threads(request.threads)
    try:
        trained = train_on_scorer(
            scorer,
            request.schedule,
            request.config,
            request.kind,
            request.factors,
            on_step=on_step,
        )
    finally:
        torch.set_num_threads(threads)
    return TrainedRouterState.of(trained, str(scorer.device))
