"""Training a learned router with the language model frozen (straight-through).

The forward computes what inference computes: each block keeps the top k_i router scores
(hard masks, the engine's own :func:`~router.engine.select_tokens`), kept tokens attend only
to kept tokens at their original positions, skipped tokens pass through unchanged. The
decision reaches the router by a straight-through estimator on the block's update
Δ = layer(h) - h:

    h' = where(hard, layer(h), h) + (p - p.detach()) · Δ,      p = sigmoid(score)

whose value is exactly the routed output (the second term is 0) and whose gradient with
respect to p is Δ (0 for each row's first and last token, which are always kept). Skipped
tokens need their Δ for that gradient, so :func:`training_forward` runs every decoder layer
on all L tokens with a mask in which skipped tokens are invisible as keys to every other
token (each still sees itself and the kept tokens before it). Kept
tokens therefore get the same values as in the engine's gathered computation (up to float
rounding of the longer SDPA call). Cost per step: a dense forward (L tokens per block
instead of k_i) plus a backward through the activations of all blocks; the model's weights
get no gradients. Attention features are measured on the kept queries exactly as the
engine measures them. Training batches are unpadded.

What the estimator sees: the residual gate alone reaches a decision only through the
token's own update, so a token that block i skips, that no later block computes and that is
not scored would get exactly zero gradient at block i (it is invisible as a key everywhere
after): training could reorder the kept tokens and push them out, but never find that a
skipped token should have been kept. The key gate (``key_gate=True``; off by default, see
:mod:`router.gate`) also gates every learned block's keys with G_j = hard_j + π_j − π_j.detach()
in a renormalised softmax. Its value is the hard mask, so the forward is unchanged (the
training forward's logits are bit for bit those without it); its gradient gives every
skipped token ∂L/∂G_j, the first-order change of the loss from admitting it as a key of that
block. Measured on smollm2-135m (scripts/key_gate_linearisation.py, docs/measurements.md):
the never-computed decisions with a non-zero gradient go from none to all of them, but the
gradient does not rank the actual change from keeping a skipped token (Spearman 0.13 and
-0.17 at blocks 10 and 20), which is why it is not the default.
The decision's gradient is the sum of both gates' (they share π); the backward costs one
more pass over each gated block's attention scores, in chunks of queries.

:func:`train_router` loops over calibration batches against dense teacher outputs
computed once (or given: a scorer that holds the dense window log-probs already passes
them), calls an optional ``evaluate(router)`` every ``eval_every`` steps (the caller's
held-out measurement through the normal ``route(model, schedule, router)`` path) and an
optional ``on_step(step)`` after each step, and returns a loss history.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Sequence, cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PretrainedConfig

from router.attention import ROUTED_ATTENTION, AttentionProbe
from router.engine import (
    Routing,
    causal_mask,
    decoder_layers,
    keep_count,
    keep_mask,
    route,
    router_scores,
    row_ends,
    select_tokens,
    unroute,
)
from router.gate import KeyGate
from router.loading import CausalLM
from router.losses import (
    LossWeights,
    achieved_sparsity,
    distillation_loss,
    guide_loss,
    guide_weight,
    hidden_mse,
    sparsity_loss,
    total_loss,
)
from router.routers import TokenRouter, position_priority
from router.state import ForwardState

# Held-out measurement of a router in eval mode: metric name -> value.
Evaluate = Callable[[nn.Module], dict[str, float]]


@dataclass
class BlockDecision:
    """One routed block of a training forward: keep probabilities (batch, L) with
    gradient to the router, and the hard keep mask (batch, L) the forward used."""

    block: int
    keep_prob: Tensor
    hard: Tensor


@dataclass
class TrainingOutput:
    """Final logits and normed hidden states at the last ``window`` positions, and the
    blocks whose scores carry a gradient to the router."""

    logits: Tensor
    hidden: Tensor
    decisions: list[BlockDecision]


def training_forward(
    model: CausalLM, routing: Routing, input_ids: Tensor, window: int, key_gate: bool = True
) -> TrainingOutput:
    """The routed forward of ``input_ids`` (batch, L), differentiable in the router.

    ``routing`` is the model's handle from ``route(model, schedule, router)``. Values equal
    the routed model's ``model(input_ids)`` for the same router decisions (see the module
    docstring), with or without ``key_gate``: learned decisions also gate their block's keys
    (:mod:`router.gate`), so a skipped token's score gets the gradient of admitting it as a
    key; without it only the token's own residual update carries the decision.
    """
    base = model.model
    batch, length = input_ids.shape
    cols = torch.arange(length, device=input_ids.device)[None]
    state = ForwardState(
        routing.schedule,
        routing.flops,
        batch,
        length,
        cols,
        None,
        track_attention=routing.needs_attention,
    )
    hidden = base.embed_tokens(input_ids)
    rotary = base.rotary_emb(hidden, position_ids=cols)
    decisions: list[BlockDecision] = []
    with _attention_implementation(model, ROUTED_ATTENTION if key_gate else None):
        for index, layer in enumerate(decoder_layers(model)):
            block = _TrainingBlock(routing, index, state, cols, key_gate)
            hidden = block.run(layer, hidden, rotary, decisions)
    hidden = base.norm(hidden[:, -window:])
    return TrainingOutput(model.lm_head(hidden), hidden, decisions)


@contextmanager
def _attention_implementation(model: CausalLM, name: str | None) -> Iterator[None]:
    """Run ``model``'s attention under the registered implementation ``name`` (None: as it
    is), restoring the model's own afterwards."""
    config = cast(PretrainedConfig, model.config)
    before = config._attn_implementation
    if name is not None:
        config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before


@dataclass
class _TrainingBlock:
    """One decoder block of :func:`training_forward`."""

    routing: Routing
    index: int
    state: ForwardState
    cols: Tensor
    key_gate: bool

    def run(
        self,
        layer: nn.Module,
        hidden: Tensor,
        rotary: tuple[Tensor, Tensor],
        decisions: list[BlockDecision],
    ) -> Tensor:
        """The block's output for ``hidden``; appends its learned decision, if any."""
        routing, state, cols = self.routing, self.state, self.cols
        sparsity, sliding = routing.schedule[self.index], routing.windows[self.index]
        length = hidden.shape[1]
        hard = straight = None
        k = keep_count(sparsity, length)
        if k < length:
            alive = state.alive
            scores = router_scores(routing, self.index, hidden, state)
            hard = keep_mask(select_tokens(scores, k, None, sparsity)[0], length)
            if routing.nested:
                state.alive = hard
            if scores.requires_grad:
                prob = scores.sigmoid()
                straight = _straight_through(prob, alive, length)
                decisions.append(BlockDecision(self.index, prob, hard))
        mask = None
        if hard is not None or (sliding is not None and length > sliding):
            mask = causal_mask(cols, cols, hard, sliding)
        extra: dict[str, Any] = {}
        probe = None
        if routing.needs_attention:
            probe = extra["ftprune_probe"] = AttentionProbe(routing.attention_window, hard)
        if self.key_gate and hard is not None and straight is not None:
            extra["ftprune_gate"] = KeyGate(hard, straight, sliding)
        out = type(layer).forward(
            layer,
            hidden,
            attention_mask=mask,
            position_ids=None,
            past_key_values=None,
            use_cache=False,
            position_embeddings=rotary,
            **extra,
        )
        if probe is not None:
            state.update_attention(cols, probe.measurement(), hard)
        if hard is None:
            return out
        routed = torch.where(hard[..., None], out, hidden)
        if straight is None:
            return routed
        return routed + straight.to(out.dtype)[..., None] * (out - hidden)


def _straight_through(prob: Tensor, alive: Tensor | None, length: int) -> Tensor:
    """prob - prob.detach() (value 0, gradient to the router) where the block's decision is
    a choice: 0 for each row's first and last token, always kept (token 0's update is huge
    in most LLMs and would swamp the shared router's gradient), and, under nested
    selection, for the tokens an earlier block skipped."""
    straight = (prob - prob.detach()).index_fill(1, row_ends(length, prob.device), 0.0)
    if alive is not None:
        straight = straight.masked_fill(~alive, 0.0)
    return straight


@torch.no_grad()
def teacher_outputs(model: CausalLM, input_ids: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """Dense (unrouted) window log-probs (batch, window, vocab) and final normed hidden
    states (batch, window, hidden) of ``input_ids``."""
    hidden = model.model(input_ids=input_ids, use_cache=False).last_hidden_state[:, -window:]
    return model.lm_head(hidden).float().log_softmax(-1), hidden


def static_keep_mask(sparsity: float, batch: int, length: int, device: Any = None) -> Tensor:
    """(batch, length) bool keep mask of the static position-priority router."""
    scores = position_priority(batch, length, device)
    return keep_mask(select_tokens(scores, keep_count(sparsity, length), None, sparsity)[0], length)


def router_losses(
    output: TrainingOutput,
    teacher_log_probs: Tensor,
    teacher_hidden: Tensor | None,
    schedule: Sequence[float],
    distill: str = "kl",
    two_sided: bool = False,
) -> dict[str, Tensor]:
    """The three losses of one training forward (see :mod:`router.losses`); blocks without
    a learned decision contribute to none of them. ``teacher_hidden`` is needed only for
    ``distill="mse"``."""
    zero = output.logits.new_zeros(())
    if distill == "kl":
        distill_value = distillation_loss(output.logits, teacher_log_probs)
    elif teacher_hidden is None:
        raise ValueError("distill='mse' needs the teacher's hidden states")
    else:
        distill_value = hidden_mse(output.hidden, teacher_hidden)
    if not output.decisions:
        return {"guide": zero, "sparse": zero, "distill": distill_value}
    guides = [
        guide_loss(
            d.keep_prob,
            static_keep_mask(schedule[d.block], d.hard.shape[0], d.hard.shape[1], d.hard.device),
        )
        for d in output.decisions
    ]
    achieved = torch.stack([achieved_sparsity(d.keep_prob) for d in output.decisions])
    targets = [schedule[d.block] for d in output.decisions]
    return {
        "guide": torch.stack(guides).mean(),
        "sparse": sparsity_loss(targets, achieved, two_sided),
        "distill": distill_value,
    }


@dataclass(frozen=True)
class TrainConfig:
    """Router training settings. ``distill`` is "kl" (window KL) or "mse" (final hidden).
    ``key_gate``: learned decisions gate their block's keys too (see :func:`training_forward`;
    False trains with the residual gate alone). Whoever builds the new router applies the
    last two: ``init`` is where it starts, "random" weights or "static" (see
    :meth:`router.dynamic.DynamicRouter.start_at_static`), and ``nested`` whether it routes
    with nested selection (see :mod:`router.engine`)."""

    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 4
    window: int = 32
    weights: LossWeights = field(default_factory=LossWeights)
    distill: str = "kl"
    two_sided: bool = False
    eval_every: int = 50
    seed: int = 0
    progress: bool = True
    key_gate: bool = False
    init: Literal["random", "static"] = "random"
    nested: bool = False


def train_router(
    model: CausalLM,
    router: nn.Module,
    schedule: Sequence[float],
    calibration: list[Tensor],
    evaluate: Evaluate | None = None,
    config: TrainConfig = TrainConfig(),
    teacher_log_probs: Sequence[Tensor] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Train ``router`` on ``calibration`` sequences (each L + 1 tokens, as built by
    ``workers.data.build_sequences``) with ``model`` frozen; returns the history.

    ``teacher_log_probs``: the dense model's window log-probs (window, vocab) of each
    calibration sequence, in order, as :func:`teacher_outputs` computes them; with
    ``distill="kl"`` they replace that dense pass (with ``"mse"`` they are ignored: the
    hidden states are computed). ``on_step(n)`` runs after step n (1-based) is done.

    History keys: per step ``loss``, ``guide``, ``sparse``, ``distill``, ``lambda_guide``;
    per evaluation (steps 0, ``eval_every``, ... and the last) ``eval_step`` and each key
    ``evaluate`` returns, prefixed ``heldout_``. The model's ``requires_grad`` flags are
    restored and the model is left unrouted.
    """
    if config.distill not in ("kl", "mse"):
        raise ValueError("distill must be 'kl' or 'mse'")
    torch.manual_seed(config.seed)
    batches, teachers = _training_batches(model, calibration, config, teacher_log_probs)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    router.train()
    optimizer = torch.optim.AdamW(router.parameters(), lr=config.lr)
    history: dict[str, list[float]] = {}
    order = itertools.cycle(range(len(batches)))
    try:
        for step in tqdm(range(config.steps), desc="router", disable=not config.progress):
            if evaluate is not None and step % config.eval_every == 0:
                _evaluate(evaluate, router, step, history)
            routing = route(model, schedule, cast(TokenRouter, router))
            index = next(order)
            output = training_forward(
                model, routing, batches[index], config.window, config.key_gate
            )
            losses = router_losses(
                output, *teachers[index], schedule, config.distill, config.two_sided
            )
            _step(optimizer, losses, step, config, history)
            if on_step is not None:
                on_step(step + 1)
        if evaluate is not None:
            _evaluate(evaluate, router, config.steps, history)
    finally:
        unroute(model)
        for name, param in model.named_parameters():
            param.requires_grad_(flags[name])
        router.eval()
    return history


def _training_batches(
    model: CausalLM,
    calibration: list[Tensor],
    config: TrainConfig,
    teacher_log_probs: Sequence[Tensor] | None,
) -> tuple[list[Tensor], list[tuple[Tensor, Tensor | None]]]:
    """The calibration sequences in training batches (inputs: all tokens but the last), and
    each batch's teacher outputs (given log-probs, or one dense pass of the unrouted model)."""
    groups = _batches(calibration, config.batch_size)
    batches = [torch.stack([calibration[i] for i in group])[:, :-1] for group in groups]
    unroute(model)
    if teacher_log_probs is not None and config.distill == "kl":
        given = [(torch.stack([teacher_log_probs[i] for i in group]), None) for group in groups]
        return batches, list(given)
    return batches, [teacher_outputs(model, batch, config.window) for batch in batches]


def _step(
    optimizer: torch.optim.Optimizer,
    losses: dict[str, Tensor],
    step: int,
    config: TrainConfig,
    history: dict[str, list[float]],
) -> None:
    """One optimizer step on FTP's weighted loss (λ_g decaying over the guide steps), its
    terms appended to ``history``."""
    lambda_guide = guide_weight(step, config.weights.guide, config.weights.guide_steps)
    loss = total_loss(
        losses["guide"], losses["sparse"], losses["distill"], lambda_guide, config.weights
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    for name, value in {"loss": loss, **losses}.items():
        history.setdefault(name, []).append(value.item())
    history.setdefault("lambda_guide", []).append(lambda_guide)


def _evaluate(
    evaluate: Evaluate, router: nn.Module, step: int, history: dict[str, list[float]]
) -> None:
    router.eval()
    with torch.no_grad():
        metrics = evaluate(router)
    router.train()
    history.setdefault("eval_step", []).append(float(step))
    for name, value in metrics.items():
        history.setdefault(f"heldout_{name}", []).append(float(value))


def _batches(sequences: list[Tensor], batch_size: int) -> list[list[int]]:
    """Indices of same-length batches of sequences, shortest first, in order."""
    by_length: dict[int, list[int]] = {}
    for index, sequence in enumerate(sequences):
        by_length.setdefault(len(sequence), []).append(index)
    return [
        group[i : i + batch_size]
        for _, group in sorted(by_length.items())
        for i in range(0, len(group), batch_size)
    ]
