"""Scoring: turns (model, data, schedule, router) into numbers.

Quality is measured where a routed model's predictions are used: the last ``window``
positions of each sequence (the continuation after a prompt, the next generated token).
Positions earlier in the sequence carry stale hidden states of tokens skipped by late blocks
and are never averaged in. For every window position the scorer compares the routed model
with the dense teacher (same weights, no routing):

- ``kl``: mean KL(dense || routed) of the next-token distributions (the search's fitness);
- ``top1``: fraction of positions whose routed argmax equals the dense argmax;
- ``ppl``: perplexity of the true next tokens under the routed model.

The teacher's outputs are computed once per scorer and data split.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from router import RandomRouter, StaticRouter, TokenRouter, route, unroute
from workers.data import DataSpec, Split, build_batches

ROUTERS = ("static", "random")


@dataclass(frozen=True)
class ScorerSettings:
    """Everything a worker needs to build its scorer; plain data, cheap to ship to workers."""

    model: str
    dtype: str = "float32"
    source: str = "builtin:pydoc"
    calibration_lens: tuple[int, ...] = (256, 512)
    calibration_per_length: int = 4
    heldout_lens: tuple[int, ...] = (512,)
    heldout_per_length: int = 4
    window: int = 32
    batch_size: int = 4
    threads: int | None = None


@dataclass(frozen=True)
class WindowMetrics:
    """Window metrics of one schedule on one split (see the module docstring)."""

    kl: float
    top1: float
    ppl: float
    realized_sparsity: float
    positions: int


@dataclass(frozen=True)
class Evaluation:
    """One scored schedule, as returned by every pool."""

    schedule: list[float]
    split: str
    router: str
    metrics: WindowMetrics
    duration_s: float
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @property
    def fitness(self) -> float:
        """The value the search minimizes: window KL against the dense model."""
        return self.metrics.kl


def make_router(name: str) -> TokenRouter:
    """A router by name (``static`` or ``random``)."""
    if name == "static":
        return StaticRouter()
    if name == "random":
        return RandomRouter(seed=0)
    raise ValueError(f"unknown router {name!r}; choose one of {', '.join(ROUTERS)}")


class WindowComparator:
    """Holds token batches and the dense teacher's window outputs; compares routed runs.

    Guarantees: the teacher is computed once, with the model unrouted; ``compare`` leaves
    the model unrouted again, whatever happens.
    """

    def __init__(self, model: Any, batches: list[torch.Tensor], window: int) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        shortest = min(batch.shape[1] - 1 for batch in batches)
        if window > shortest:
            raise ValueError(f"window {window} is longer than the shortest sequence ({shortest})")
        self.model = model
        self.batches = batches
        self.window = window
        unroute(model)
        self.teacher = [self._window_log_probs(batch) for batch in batches]
        self.dense_ppl = self._perplexity(self.teacher)

    def compare(self, schedule: Sequence[float], router: TokenRouter) -> WindowMetrics:
        routing = route(self.model, schedule, router)
        kl_sum = agree = 0.0
        kept = seen = positions = 0
        routed_all = []
        try:
            for batch, dense in zip(self.batches, self.teacher):
                routed = self._window_log_probs(batch)
                kl_sum += (dense.exp() * (dense - routed)).sum(-1).sum().item()
                agree += (dense.argmax(-1) == routed.argmax(-1)).sum().item()
                positions += dense.shape[0] * dense.shape[1]
                kept += sum(routing.last_state.kept)
                seen += sum(routing.last_state.seen)
                routed_all.append(routed)
        finally:
            unroute(self.model)
        return WindowMetrics(kl=kl_sum / positions, top1=agree / positions,
                             ppl=self._perplexity(routed_all),
                             realized_sparsity=1.0 - kept / seen, positions=positions)

    @torch.inference_mode()
    def _window_log_probs(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=batch[:, :-1], use_cache=False,
                            logits_to_keep=self.window).logits
        return logits.float().log_softmax(-1)

    def _perplexity(self, log_probs: list[torch.Tensor]) -> float:
        nll = count = 0.0
        for batch, lp in zip(self.batches, log_probs):
            targets = batch[:, -self.window:]
            nll -= lp.gather(-1, targets.unsqueeze(-1)).sum().item()
            count += targets.numel()
        return float(torch.tensor(nll / count).exp())


class Scorer:
    """Loads the model once and scores schedules on the calibration or held-out split.

    The held-out comparator is built on first use, so search workers that never evaluate
    held-out text never pay for its teacher outputs.
    """

    def __init__(self, settings: ScorerSettings) -> None:
        from router import load_model

        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.settings = settings
        self.model, self.tokenizer = load_model(settings.model, settings.dtype)
        self.num_blocks = len(self.model.model.layers)
        self._comparators: dict[str, WindowComparator] = {}

    def comparator(self, split: Split) -> WindowComparator:
        if split not in self._comparators:
            s = self.settings
            lens, per = ((s.calibration_lens, s.calibration_per_length) if split == "calibration"
                         else (s.heldout_lens, s.heldout_per_length))
            batches = build_batches(DataSpec(s.source, split, lens, per, s.batch_size),
                                    self.tokenizer)
            self._comparators[split] = WindowComparator(self.model, batches, s.window)
        return self._comparators[split]

    def score(self, schedule: Sequence[float], split: Split = "calibration",
              router: str = "static") -> Evaluation:
        comparator = self.comparator(split)
        start = time.perf_counter()
        metrics = comparator.compare(schedule, make_router(router))
        return Evaluation(schedule=[float(s) for s in schedule], split=split, router=router,
                          metrics=metrics, duration_s=time.perf_counter() - start)
