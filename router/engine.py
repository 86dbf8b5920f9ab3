"""The routing engine: decoder blocks that compute only the tokens their router keeps.

``route(model, schedule)`` makes block i of a Llama / Qwen2 / Mistral causal LM keep
k_i = max(2, round((1 - s_i) * L)) of the L tokens of each forward pass. Kept tokens are
gathered (in position order) into a shorter sequence, the unchanged decoder layer runs on it
with the tokens' original rotary positions, and the outputs are scattered back; skipped
tokens pass through unchanged (residual identity) and are absent from that block's attention
as queries and as keys. The work really shrinks: the layer sees k_i tokens, not L.

Which tokens are kept is the router's business (:class:`TokenRouter`): it returns a score per
token and the engine keeps the top k_i, always including token 0 (the attention sink) and the
last token. Routers never touch gather/scatter code.

Per-forward bookkeeping (keep counts) lives in a :class:`ForwardState` created for every
top-level forward and held in a context variable, never on the modules; the finished state
of the latest forward is available as ``Routing.last_state``.
"""

from __future__ import annotations

import contextvars
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import torch
from torch import Tensor, nn

_ACTIVE_STATE: contextvars.ContextVar["ForwardState | None"] = contextvars.ContextVar(
    "ftprune_forward_state", default=None)


def keep_count(sparsity: float, seq_len: int) -> int:
    """Tokens a block with sparsity ``sparsity`` keeps out of ``seq_len`` (halves round up)."""
    return min(seq_len, max(2, math.floor((1.0 - sparsity) * seq_len + 0.5)))


@dataclass
class ForwardState:
    """What one forward pass of a routed model did, block by block (summed over the batch)."""

    kept: list[int]
    seen: list[int]

    @classmethod
    def empty(cls, num_blocks: int) -> "ForwardState":
        return cls(kept=[0] * num_blocks, seen=[0] * num_blocks)

    @property
    def realized_sparsity(self) -> float:
        """Fraction of (token, block) pairs skipped in this forward."""
        total = sum(self.seen)
        return 0.0 if total == 0 else 1.0 - sum(self.kept) / total

    @property
    def block_sparsity(self) -> list[float]:
        return [0.0 if s == 0 else 1.0 - k / s for k, s in zip(self.kept, self.seen)]


class TokenRouter(Protocol):
    """Scores tokens for one block; the engine keeps the ``k`` highest scores per row."""

    def scores(self, block: int, hidden_states: Tensor, state: ForwardState) -> Tensor:
        """Return a float tensor (batch, seq_len); higher means keep. Ties break arbitrarily."""
        ...


class StaticRouter:
    """FTP's token position priority: token 0, the last token, then backwards by position."""

    def scores(self, block: int, hidden_states: Tensor, state: ForwardState) -> Tensor:
        batch, seq_len = hidden_states.shape[:2]
        positions = torch.arange(seq_len, device=hidden_states.device, dtype=torch.float32)
        return positions.expand(batch, seq_len)


class RandomRouter:
    """Uniformly random choice among the non-mandatory tokens (the paper's weak baseline)."""

    def __init__(self, seed: int = 0) -> None:
        self._generator = torch.Generator().manual_seed(seed)

    def scores(self, block: int, hidden_states: Tensor, state: ForwardState) -> Tensor:
        batch, seq_len = hidden_states.shape[:2]
        return torch.rand(batch, seq_len, generator=self._generator).to(hidden_states.device)


@dataclass
class Routing:
    """A routed model's configuration and the record of its latest forward pass."""

    schedule: list[float]
    router: TokenRouter
    last_state: ForwardState | None = None
    _handles: list[Any] = field(default_factory=list, repr=False)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder block list of a supported causal LM (``model.model.layers``)."""
    try:
        return model.model.layers
    except AttributeError:
        raise ValueError(f"{type(model).__name__} has no model.layers; supported families: "
                         "llama, qwen2, mistral") from None


def route(model: nn.Module, schedule: Sequence[float], router: TokenRouter | None = None) -> Routing:
    """Route ``model`` in place with one sparsity per decoder block; returns the handle.

    Re-routing an already routed model replaces its schedule and router. The model keeps its
    weights, its state dict and its ``model(input_ids)`` / ``generate()`` interface.
    """
    layers = decoder_layers(model)
    schedule = [float(s) for s in schedule]
    if len(schedule) != len(layers):
        raise ValueError(f"schedule has {len(schedule)} entries but the model has "
                         f"{len(layers)} decoder blocks")
    if any(not 0.0 <= s < 1.0 for s in schedule):
        raise ValueError("every block sparsity must lie in [0, 1)")
    unroute(model)
    routing = Routing(schedule=schedule, router=router or StaticRouter())
    for index, layer in enumerate(layers):
        layer.forward = functools.partial(_routed_forward, layer, routing, index)
    base = model.model
    routing._handles = [
        base.register_forward_pre_hook(functools.partial(_begin_forward, len(layers))),
        base.register_forward_hook(functools.partial(_end_forward, routing), always_call=True),
    ]
    model._ftprune_routing = routing
    return routing


def unroute(model: nn.Module) -> None:
    """Restore the plain model (no-op when it is not routed)."""
    routing: Routing | None = getattr(model, "_ftprune_routing", None)
    if routing is None:
        return
    for layer in decoder_layers(model):
        layer.__dict__.pop("forward", None)
    for handle in routing._handles:
        handle.remove()
    del model._ftprune_routing


def routing_of(model: nn.Module) -> Routing | None:
    """The :class:`Routing` handle of a routed model, or None."""
    return getattr(model, "_ftprune_routing", None)


def _begin_forward(num_blocks: int, module: nn.Module, args: Any) -> None:
    _ACTIVE_STATE.set(ForwardState.empty(num_blocks))


def _end_forward(routing: Routing, module: nn.Module, args: Any, output: Any) -> None:
    routing.last_state = _ACTIVE_STATE.get()
    _ACTIVE_STATE.set(None)


def _routed_forward(layer: nn.Module, routing: Routing, index: int, hidden_states: Tensor,
                    attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                    past_key_values: Any = None, use_cache: bool | None = False,
                    position_embeddings: tuple[Tensor, Tensor] | None = None,
                    **kwargs: Any) -> Tensor:
    dense_forward = type(layer).forward
    batch, seq_len, hidden = hidden_states.shape
    state = _ACTIVE_STATE.get() or ForwardState.empty(len(routing.schedule))
    k = keep_count(routing.schedule[index], seq_len)
    decoding = past_key_values is not None and past_key_values.get_seq_length(index) > 0
    if k >= seq_len or decoding:
        state.kept[index] += batch * seq_len
        state.seen[index] += batch * seq_len
        return dense_forward(layer, hidden_states, attention_mask=attention_mask,
                             position_ids=position_ids, past_key_values=past_key_values,
                             use_cache=use_cache, position_embeddings=position_embeddings,
                             **kwargs)

    scores = routing.router.scores(index, hidden_states, state).float()
    mandatory = torch.zeros_like(scores, dtype=torch.bool)
    mandatory[:, 0] = True
    mandatory[:, -1] = True
    scores = scores.masked_fill(mandatory, math.inf)
    keep = scores.topk(k, dim=1, sorted=False).indices.sort(dim=1).values  # (batch, k)
    state.kept[index] += batch * k
    state.seen[index] += batch * seq_len

    kept_hidden = hidden_states.gather(1, keep.unsqueeze(-1).expand(batch, k, hidden))
    cos, sin = position_embeddings
    kept_rotary = tuple(_gather_rows(t, keep) for t in (cos, sin))
    out = dense_forward(layer, kept_hidden, attention_mask=_gather_mask(attention_mask, keep),
                        position_ids=None, past_key_values=past_key_values, use_cache=use_cache,
                        position_embeddings=kept_rotary, **kwargs)
    # Out of place: hooks and callers may still hold ``hidden_states``.
    return hidden_states.scatter(1, keep.unsqueeze(-1).expand(batch, k, hidden), out)


def _gather_rows(table: Tensor, keep: Tensor) -> Tensor:
    """Rows ``keep`` (batch, k) of a (batch or 1, L, D) table."""
    batch, k = keep.shape
    table = table.expand(batch, *table.shape[1:])
    return table.gather(1, keep.unsqueeze(-1).expand(batch, k, table.shape[-1]))


def _gather_mask(mask: Tensor | None, keep: Tensor) -> Tensor | None:
    """Restrict a (batch or 1, heads or 1, L, L) attention mask to the kept queries and keys."""
    if mask is None:
        return None
    batch, k = keep.shape
    mask = mask.expand(batch, *mask.shape[1:])
    heads = mask.shape[1]
    rows = mask.gather(2, keep[:, None, :, None].expand(batch, heads, k, mask.shape[3]))
    return rows.gather(3, keep[:, None, None, :].expand(batch, heads, k, k))
