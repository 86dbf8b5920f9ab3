"""Scoring: turns (model, data, schedule, router) into numbers.

Quality is measured where a routed model's predictions are used: the last ``window``
positions of each sequence (the continuation after a prompt, the next generated token).
Positions earlier in the sequence carry stale hidden states of tokens skipped by late blocks
and are never averaged in. For every window position the scorer compares the routed model
with the dense teacher (same weights, no routing):

- ``kl``: mean KL(dense || routed) of the next-token distributions (the search's fitness);
- ``top1``: fraction of positions whose routed argmax equals the dense argmax;
- ``ppl``: perplexity of the true next tokens under the routed model.

Results are kept per sequence (:class:`WindowStats`, additive), so a caller can cache them
by (schedule, router, sequence) and score a larger slice later without recomputing the
sequences it already has. The teacher's outputs are computed once per sequence, on first
use; with ``teacher_top_k`` only the top-K dense probabilities are kept (bounded memory) and
KL is taken between the distributions coarsened to those K tokens plus one "rest" bucket.

A scorer puts its model, its token sequences, its teacher outputs and the routers it loads on
one device (``ScorerSettings.device``, resolved in the worker: see :mod:`workers.devices`);
what it returns is plain host data.
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import astuple, dataclass, field, fields
from typing import Any, Mapping, Sequence

import torch

from router import TokenRouter, route, unroute
from router.checkpoint import make_router
from router.registry import RouterSpecError as RouterSpecError  # re-exported
from router.registry import check_router_spec as check_router_spec  # re-exported
from router.registry import checkpoint_dir, router_kind
from workers.data import SPLITS, Split, build_sequences
from workers.devices import resolve_device
from workers.settings import ScorerSettings as ScorerSettings  # re-exported

SplitSequences = Mapping[Split, list[torch.Tensor]]  # token sequences of each split


def build_splits(settings: ScorerSettings, tokenizer: Any) -> dict[Split, list[torch.Tensor]]:
    """Both splits' token sequences (on the CPU), as a scorer would build them itself."""
    return {split: build_sequences(settings.data_spec(split), tokenizer) for split in SPLITS}


@dataclass(frozen=True)
class WindowMetrics:
    """Window metrics of one schedule on a set of sequences (see the module docstring)."""

    kl: float
    top1: float
    ppl: float
    realized_sparsity: float
    positions: int


@dataclass(frozen=True)
class WindowStats:
    """Sums over the window positions of one or more sequences; ``+`` merges them.

    Stored as JSON by :meth:`to_json` (the fields' values in declaration order) and read
    back by :meth:`from_json`, which refuses a list of any other length.
    """

    kl_sum: float
    agree: int
    nll_sum: float
    positions: int
    kept: int
    seen: int
    tokens: int  # forward tokens the routed model read

    def __add__(self, other: "WindowStats") -> "WindowStats":
        return WindowStats(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def to_json(self) -> list[float]:
        return list(astuple(self))

    @classmethod
    def from_json(cls, values: Sequence[Any]) -> "WindowStats":
        names = [f.name for f in fields(cls)]
        if len(values) != len(names):
            raise ValueError(
                f"window stats need {len(names)} values ({', '.join(names)}), got {len(values)}"
            )
        return cls(**dict(zip(names, values, strict=True)))

    def metrics(self) -> WindowMetrics:
        return WindowMetrics(
            kl=self.kl_sum / self.positions,
            top1=self.agree / self.positions,
            ppl=math.exp(self.nll_sum / self.positions),
            realized_sparsity=1.0 - self.kept / self.seen if self.seen else 0.0,
            positions=self.positions,
        )


def merge_stats(stats: Sequence[WindowStats]) -> WindowStats:
    total = stats[0]
    for item in stats[1:]:
        total = total + item
    return total


@dataclass(frozen=True)
class Evaluation:
    """One scored schedule on a set of sequences, as returned by every pool.

    A failed evaluation (the scorer raised, or a fitness was not finite) has ``error``, one
    line saying why, and no per-sequence statistics; it has no metrics.
    """

    schedule: list[float]
    split: str
    router: str
    per_sequence: dict[int, WindowStats]
    duration_s: float
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    error: str | None = None

    @property
    def metrics(self) -> WindowMetrics:
        if self.error is not None:
            raise ValueError(f"a failed evaluation has no metrics ({self.error})")
        return merge_stats(list(self.per_sequence.values())).metrics()

    @property
    def fitness(self) -> float:
        """The value the search minimizes: window KL against the dense model."""
        return self.metrics.kl

    @property
    def forward_tokens(self) -> int:
        return sum(s.tokens for s in self.per_sequence.values())


class _Teacher:
    """Dense window outputs of one sequence: full log-probs, or the top-K of them."""

    def __init__(self, log_probs: torch.Tensor, top_k: int | None) -> None:
        self.argmax = log_probs.argmax(-1)
        if top_k is None or top_k >= log_probs.shape[-1]:
            self.log_probs, self.indices = log_probs, None
        else:
            self.log_probs, self.indices = log_probs.topk(top_k, dim=-1)

    def kl_sum(self, routed: torch.Tensor) -> float:
        """Sum over positions of KL(teacher || routed), coarsened when top-K is kept."""
        if self.indices is None:
            return (self.log_probs.exp() * (self.log_probs - routed)).sum().item()
        dense_p = self.log_probs.exp()
        routed_lp = routed.gather(-1, self.indices)
        rest_dense = (1.0 - dense_p.sum(-1)).clamp_min(1e-12)
        rest_routed = (1.0 - routed_lp.exp().sum(-1)).clamp_min(1e-12)
        head = (dense_p * (self.log_probs - routed_lp)).sum(-1)
        tail = rest_dense * (rest_dense.log() - rest_routed.log())
        return (head + tail).sum().item()


class WindowComparator:
    """Holds token sequences and the dense teacher's window outputs; compares routed runs.

    Guarantees: teacher outputs are computed once per sequence with the model unrouted;
    ``compare`` leaves the model unrouted again, whatever happens; sequences are batched by
    length in index order, so a sequence's statistics do not depend on which others are
    scored with it (up to float rounding of batched matmuls).
    """

    def __init__(
        self,
        model: Any,
        sequences: list[torch.Tensor],
        window: int,
        batch_size: int = 4,
        teacher_top_k: int | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        shortest = min(len(seq) - 1 for seq in sequences)
        if window > shortest:
            raise ValueError(f"window {window} is longer than the shortest sequence ({shortest})")
        self.model = model
        self.sequences = sequences
        self.window = window
        self.batch_size = batch_size
        self.teacher_top_k = teacher_top_k
        self._teachers: dict[int, _Teacher] = {}

    def compare(
        self,
        schedule: Sequence[float] | None,
        router: TokenRouter | None = None,
        indices: Sequence[int] | None = None,
    ) -> dict[int, WindowStats]:
        """Per-sequence window statistics of the routed model (``schedule=None``: dense)."""
        indices = list(range(len(self.sequences))) if indices is None else list(indices)
        self._ensure_teachers(indices)
        routing = route(self.model, schedule, router) if schedule is not None else None
        stats: dict[int, WindowStats] = {}
        try:
            for batch_indices in self._batches(indices):
                batch = torch.stack([self.sequences[i] for i in batch_indices])
                routed = self._window_log_probs(batch)
                length = batch.shape[1] - 1
                state = routing.last_state if routing is not None else None
                if state is not None:
                    kept = sum(state.kept) // len(batch_indices)
                    seen = sum(state.seen) // len(batch_indices)
                else:
                    kept = seen = length * len(self.model.model.layers)
                for row, index in enumerate(batch_indices):
                    teacher = self._teachers[index]
                    targets = self.sequences[index][-self.window :]
                    stats[index] = WindowStats(
                        kl_sum=teacher.kl_sum(routed[row]),
                        agree=int((teacher.argmax == routed[row].argmax(-1)).sum()),
                        nll_sum=-routed[row].gather(-1, targets[:, None]).sum().item(),
                        positions=self.window,
                        kept=kept,
                        seen=seen,
                        tokens=length,
                    )
        finally:
            unroute(self.model)
        return stats

    def teacher_log_probs(self) -> list[torch.Tensor] | None:
        """The dense window log-probs (window, vocab) of every sequence, computed where
        missing; None when only the top-K are kept (``teacher_top_k``)."""
        if self.teacher_top_k is not None:
            return None
        self._ensure_teachers(list(range(len(self.sequences))))
        return [self._teachers[i].log_probs for i in range(len(self.sequences))]

    def add_teacher(self, index: int, logits: torch.Tensor) -> None:
        """Keep the dense window logits of sequence ``index`` that another dense pass over
        the same batch computed (a batch as :meth:`_batches` forms it), so they are not
        computed again."""
        if index not in self._teachers:
            self._teachers[index] = _Teacher(logits.float().log_softmax(-1), self.teacher_top_k)

    def _ensure_teachers(self, indices: list[int]) -> None:
        missing = [i for i in indices if i not in self._teachers]
        if not missing:
            return
        unroute(self.model)
        for batch_indices in self._batches(missing):
            batch = torch.stack([self.sequences[i] for i in batch_indices])
            log_probs = self._window_log_probs(batch)
            for row, index in enumerate(batch_indices):
                self._teachers[index] = _Teacher(log_probs[row], self.teacher_top_k)

    def _batches(self, indices: list[int]) -> list[list[int]]:
        by_length: dict[int, list[int]] = {}
        for index in sorted(set(indices)):
            by_length.setdefault(len(self.sequences[index]), []).append(index)
        return [
            group[i : i + self.batch_size]
            for _, group in sorted(by_length.items())
            for i in range(0, len(group), self.batch_size)
        ]

    @torch.inference_mode()
    def _window_log_probs(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.model(
            input_ids=batch[:, :-1], use_cache=False, logits_to_keep=self.window
        ).logits
        return logits.float().log_softmax(-1)


class Scorer:
    """Loads the model once, on ``settings.device``, and scores schedules on the calibration
    or held-out split.

    ``sequences`` (CPU tensors, e.g. from :func:`build_splits` through Ray's object store)
    are used as given; otherwise each split is tokenized here. Either way a split's
    sequences move to the model's device and its comparator is built on first use, so
    search workers that never evaluate held-out text never pay for its teacher outputs.
    """

    def __init__(self, settings: ScorerSettings, sequences: SplitSequences | None = None) -> None:
        from router import load_model

        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.model, self.tokenizer = load_model(settings.model, settings.dtype, str(self.device))
        self.num_blocks = len(self.model.model.layers)
        self._sequences = dict(sequences or {})
        self._comparators: dict[str, WindowComparator] = {}
        self._routers: dict[str, TokenRouter] = {}  # checkpoints load once per scorer

    def comparator(self, split: Split) -> WindowComparator:
        if split not in self._comparators:
            s = self.settings
            sequences = self._sequences.pop(split, None)
            if sequences is None:
                sequences = build_sequences(s.data_spec(split), self.tokenizer)
            self._comparators[split] = WindowComparator(
                self.model,
                [seq.to(self.device) for seq in sequences],
                s.window,
                s.batch_size,
                s.teacher_top_k,
            )
        return self._comparators[split]

    def num_sequences(self, split: Split) -> int:
        return len(self.comparator(split).sequences)

    def model_device(self) -> str:
        """Where the model's weights are (``cpu``, ``cuda:0``, ...)."""
        return str(next(self.model.parameters()).device)

    def score(
        self,
        schedule: Sequence[float],
        split: Split = "calibration",
        router: str = "static",
        sequences: Sequence[int] | None = None,
    ) -> Evaluation:
        """Score ``schedule`` on the given sequence indices of ``split`` (default: all)."""
        comparator = self.comparator(split)
        start = time.perf_counter()
        # A random router restarts its seed for every request; checkpoints load once.
        if router in self._routers:
            scorer_router = self._routers[router]
        else:
            scorer_router = make_router(router)
            if checkpoint_dir(router) is not None:
                if isinstance(scorer_router, torch.nn.Module):
                    scorer_router.to(self.device)
                self._routers[router] = scorer_router
        per_sequence = comparator.compare(schedule, scorer_router, sequences)
        return Evaluation(
            schedule=[float(s) for s in schedule],
            split=split,
            router=router_kind(router),
            per_sequence=per_sequence,
            duration_s=time.perf_counter() - start,
        )

    def block_influence(self) -> list[float]:
        """ShortGPT Block Influence per block on the calibration sequences:
        BI_i = 1 - mean over tokens of cos(h_i, h_{i+1}) (input vs output of block i).
        The same dense pass gives the teacher's window outputs of every calibration
        sequence, which the comparator keeps (scoring does not compute them again)."""
        comparator = self.comparator("calibration")
        unroute(self.model)
        totals = [0.0] * self.num_blocks
        count = 0
        with torch.inference_mode():
            for batch_indices in comparator._batches(list(range(len(comparator.sequences)))):
                batch = torch.stack([comparator.sequences[i] for i in batch_indices])[:, :-1]
                output = self.model(
                    input_ids=batch,
                    output_hidden_states=True,
                    use_cache=False,
                    logits_to_keep=comparator.window,
                )
                for row, index in enumerate(batch_indices):
                    comparator.add_teacher(index, output.logits[row])
                hidden = output.hidden_states
                # hidden[0] is the embedding output; hidden[-1] is after the final norm, so
                # the last block's output is compared through the norm as transformers gives it.
                for block in range(self.num_blocks):
                    cos = torch.nn.functional.cosine_similarity(
                        hidden[block].float(), hidden[block + 1].float(), dim=-1
                    )
                    totals[block] += (1.0 - cos).sum().item()
                count += batch.numel()
        return [t / count for t in totals]
