"""What admitting one skipped token would change: the key gate's prediction and the re-run.

One training forward with the key gate (:mod:`router.gate`) gives, for every learned
(block, token) decision, ∂L/∂π: with L the window distillation KL against the dense model
(:func:`router.losses.distillation_loss`), the first-order change of L from keeping token
j at block i (G_j from 0 to 1), through its key and its own update. :func:`admission_effects`
returns that prediction and the actual change: the routed computation re-run with token j
kept at block i and every other decision of every block as before (block i keeps k_i + 1
tokens), from block i on (the blocks before it do not change).
Used by tests/router_dynamic/test_key_gate.py and scripts/key_gate_linearisation.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from router import route, unroute
from router.engine import (
    Routing,
    causal_mask,
    decoder_layers,
    keep_count,
    keep_mask,
    select_tokens,
)
from router.loading import CausalLM
from router.losses import distillation_loss
from router.training import TrainingOutput, training_forward


def never_computed(output: TrainingOutput, schedule: Sequence[float], nested: bool) -> Tensor:
    """(decisions, batch, L) bool: the learned decisions whose token the block skips and no
    later block computes, outside the scored window, where the decision is a choice (under
    nested selection: the token every earlier block kept). Every routed block after
    the first learned one must be learned (so its keep mask is in ``output``)."""
    hards = torch.stack([d.hard for d in output.decisions])  # (decisions, batch, L)
    blocks = [d.block for d in output.decisions]
    length = hards.shape[-1]
    routed = [b for b, s in enumerate(schedule) if keep_count(s, length) < length]
    if routed[routed.index(blocks[0]) :] != blocks:
        raise ValueError("every routed block after the first learned one must be learned")
    later_dense = torch.tensor(
        [any(keep_count(s, length) >= length for s in schedule[b + 1 :]) for b in blocks]
    )
    computed_later = hards.long().flip(0).cumsum(0).flip(0).roll(-1, 0) > 0
    computed_later[-1] = False
    pairs = ~hards & ~computed_later & ~later_dense[:, None, None]
    if nested:  # a token an earlier block skipped scores -inf: keep probability 0, no choice
        pairs &= torch.stack([d.keep_prob.detach() > 0 for d in output.decisions])
    pairs[..., length - output.logits.shape[1] :] = False
    return pairs


@dataclass
class Coverage:
    """∂L/∂π of one training forward's never-computed decisions: ``grads`` (decisions, batch,
    L) holds them (0 elsewhere), ``pairs`` marks them, ``blocks`` names the decisions."""

    grads: Tensor
    pairs: Tensor
    blocks: list[int]

    @property
    def reached(self) -> int:
        """How many never-computed decisions have a non-zero gradient."""
        return int((self.grads[self.pairs] != 0).sum())

    @property
    def total(self) -> int:
        """How many decisions are never computed."""
        return int(self.pairs.sum())


def gradient_coverage(
    model: CausalLM,
    routing: Routing,
    input_ids: Tensor,
    teacher_log_probs: Tensor,
    key_gate: bool,
) -> Coverage:
    """The :class:`Coverage` of one training forward, L the window distillation KL."""
    window = teacher_log_probs.shape[1]
    output = training_forward(model, routing, input_ids, window, key_gate)
    for decision in output.decisions:
        decision.keep_prob.retain_grad()
    distillation_loss(output.logits, teacher_log_probs).backward()
    grads = torch.stack([_grad(d.keep_prob) for d in output.decisions])
    pairs = never_computed(output, routing.schedule, routing.nested)
    blocks = [d.block for d in output.decisions]
    return Coverage(grads.masked_fill(~pairs, 0.0), pairs, blocks)


@dataclass
class Recorder:
    """A router that passes ``inner``'s scores on and records each block's keep mask
    (batch, L) as the engine selects it (non-nested selection, unpadded rows)."""

    inner: Any
    schedule: Sequence[float]
    masks: dict[int, Tensor] = field(default_factory=dict)
    needs_attention: bool = False

    def __post_init__(self) -> None:
        if getattr(self.inner, "nested", False):
            raise ValueError("the recorder routes without nested selection")
        self.needs_attention = bool(self.inner.needs_attention)

    def scores(self, block: int, hidden_states: Tensor, state: Any) -> Tensor:
        scores: Tensor = self.inner.scores(block, hidden_states, state)
        sparsity, length = self.schedule[block], scores.shape[1]
        keep = select_tokens(scores.detach(), keep_count(sparsity, length), None, sparsity)[0]
        self.masks[block] = keep_mask(keep, length)
        return scores


@dataclass
class Effects:
    """Per asked (block, token) pair: ``predicted`` (∂L/∂π) and ``actual`` change of L;
    ``loss``: L of the training forward, ``base``: L of the re-run's computation with the
    recorded masks (the two agree to float tolerance)."""

    predicted: Tensor
    actual: Tensor
    loss: float
    base: float


def admission_effects(
    model: CausalLM,
    schedule: Sequence[float],
    router: Any,
    input_ids: Tensor,
    teacher_log_probs: Tensor,
    pairs: Sequence[tuple[int, int]],
    rows: int = 10,
) -> Effects:
    """:class:`Effects` of admitting each skipped token of ``pairs`` (block, column) of the
    single row ``input_ids`` (1, L), routed by the non-nested learned ``router`` under
    ``schedule``; ``teacher_log_probs`` (1, window, vocab) fix the window. Each re-run
    starts at its block from the recorded forward's hidden states, ``rows`` at a time."""
    window = teacher_log_probs.shape[1]
    recorder = Recorder(router, schedule)
    try:
        routing = route(model, schedule, recorder)
        output = training_forward(model, routing, input_ids, window)
    finally:
        unroute(model)
    for decision in output.decisions:
        decision.keep_prob.retain_grad()
    loss = distillation_loss(output.logits, teacher_log_probs)
    loss.backward()
    grads = {d.block: _grad(d.keep_prob) for d in output.decisions}
    predicted = torch.stack([grads[block][0, token] for block, token in pairs])
    rerun = _MaskedForward(model, recorder.masks, routing.windows, teacher_log_probs)
    blocks = sorted({block for block, _ in pairs})
    inputs, base = rerun.inputs(input_ids, blocks)
    actual: dict[tuple[int, int], float] = {}
    for block in blocks:
        tokens = [token for b, token in pairs if b == block]
        for start in range(0, len(tokens), rows):
            part = tokens[start : start + rows]
            for token, value in zip(part, rerun.admitted(inputs[block], block, part), strict=True):
                actual[block, token] = value
    changes = torch.tensor([actual[pair] - base for pair in pairs], dtype=torch.float64)
    return Effects(predicted.detach().double(), changes, loss.item(), base)


def _grad(prob: Tensor) -> Tensor:
    if prob.grad is None:
        raise ValueError("a block's decision got no gradient")
    return prob.grad


@dataclass
class _MaskedForward:
    """The training forward's computation (every block on all L tokens; a block's skipped
    tokens invisible as keys to the others and passed through unchanged) with given keep
    masks (batch, L) per routed block (blocks without one are dense), without gradients."""

    model: CausalLM
    masks: dict[int, Tensor]
    windows: list[int | None]
    teacher_log_probs: Tensor

    @torch.no_grad()
    def inputs(self, input_ids: Tensor, blocks: list[int]) -> tuple[dict[int, Tensor], float]:
        """The hidden states entering each of ``blocks``, and the window KL of the row."""
        hidden = self.model.model.embed_tokens(input_ids)
        entering = {}
        for block in range(len(decoder_layers(self.model))):
            if block in blocks:
                entering[block] = hidden
            hidden = self._block(block, hidden, self.masks.get(block))
        return entering, self._losses(hidden)[0]

    @torch.no_grad()
    def admitted(self, hidden: Tensor, block: int, tokens: list[int]) -> list[float]:
        """Window KL with each of ``tokens`` kept at ``block`` (one row each), every other
        decision as recorded, from the hidden states (1, L, hidden) entering ``block``."""
        count = len(tokens)
        mask = self.masks[block].expand(count, -1).clone()
        if bool(mask[0, tokens].any()):
            raise ValueError(f"a token to admit at block {block} is kept there already")
        mask[torch.arange(count), tokens] = True
        hidden = self._block(block, hidden.expand(count, -1, -1), mask)
        for later in range(block + 1, len(decoder_layers(self.model))):
            hidden = self._block(later, hidden, self.masks.get(later))
        return self._losses(hidden)

    def _block(self, block: int, hidden: Tensor, keep: Tensor | None) -> Tensor:
        batch, length = hidden.shape[:2]
        cols = torch.arange(length, device=hidden.device)[None]
        window = self.windows[block]
        mask = None
        if keep is not None or (window is not None and length > window):
            mask = causal_mask(cols.expand(batch, -1), cols.expand(batch, -1), keep, window)
        layer = decoder_layers(self.model)[block]
        out = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=self.model.model.rotary_emb(hidden, position_ids=cols),
            use_cache=False,
        )
        return out if keep is None else torch.where(keep[..., None], out, hidden)

    def _losses(self, hidden: Tensor) -> list[float]:
        window = self.teacher_log_probs.shape[1]
        logits = self.model.lm_head(self.model.model.norm(hidden[:, -window:]))
        return [distillation_loss(row[None], self.teacher_log_probs).item() for row in logits]
