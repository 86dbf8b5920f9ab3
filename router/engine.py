"""The routing engine: decoder blocks that compute only the tokens their router keeps.

``route(model, schedule)`` makes block i of a Llama / Qwen2 / Mistral causal LM (SDPA
attention, any dtype) keep k_i = max(2, round((1 - s_i) * L)) of the L tokens of a
sequence. Kept tokens are gathered in position order into a shorter sequence, the unchanged
decoder layer runs on it with the tokens' original rotary positions, and the outputs are
scattered back; skipped tokens pass through unchanged (residual identity) and are absent
from that block's attention as queries and as keys. The layer really computes k_i tokens.

Guarantees:

- **Selection.** Each row keeps its k_i highest router scores, always including its first
  and last real token; indices are sorted; shapes are static and the selection needs no
  host synchronization.
- **Padding** (a 2D ``attention_mask``, padding on either side). A row with n real tokens
  keeps ``keep_count(s_i, n)`` of them, exactly as if it ran alone; the block's fixed k_i
  is ``keep_count(s_i, L)`` for the padded width L (the longest row's budget when padding
  only fills up to the longest row), and a shorter row fills its spare slots with its own
  padding positions. Padding is never counted as kept or skipped and no real token attends
  to it. A mask is read back once per forward to see whether it pads at all (as
  transformers does); unpadded input with no mask reads nothing back.
- **KV cache.** At prefill a block caches K/V only for the tokens it computes; a later
  query at block i attends only to what block i cached, through masks and positions the
  engine builds per layer from its :class:`~router.cache.CacheRecord` (transformers would
  size them from layer 0's cache). Tokens fed after prefill (decode steps, continued
  prompts) are computed in every block (``decode="all"``), or only where the router's
  score is >= 0 (``decode="threshold"``, FTP's rule: router probability >= 0.5). Under
  the threshold policy a block that no row computes is skipped outright and caches
  nothing; when rows disagree, the block runs on all rows and the entries of the rows
  that skip are never attended to. Routed caches must not be cropped or reordered (beam
  search, assisted decoding); greedy and sampled ``generate()`` work.
- **Nested selection.** A router with ``nested = True`` never brings back a token an
  earlier block skipped: block i keeps the top k_i of the tokens every earlier block
  computed (so the kept sets shrink block by block and no token carries a stale hidden
  state into a later block's attention). It needs a non-decreasing schedule (``route``
  refuses another); under the threshold decode policy a new token that one block skips
  is skipped by every later block.
- **Features.** A router with ``needs_attention = True`` gets, in the same pass, the
  attention each computed token receives (see :mod:`router.attention`); other routers run
  on plain SDPA and pay nothing.
- **Accounting.** Every forward leaves a :class:`~router.state.ForwardState` in
  ``Routing.last_state``: per-block kept/seen counts, realized sparsity, FLOP saving.
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, cast

import torch
from torch import Tensor, nn
from transformers import DynamicCache, PretrainedConfig

from router.attention import ROUTED_ATTENTION, AttentionProbe
from router.budget import keep_count as keep_count  # re-exported
from router.budget import non_decreasing as non_decreasing  # re-exported
from router.cache import CacheRecord, stored_entries
from router.loading import SUPPORTED_FAMILIES, CausalLM
from router.routers import StaticRouter, TokenRouter
from router.specs import DECODE_POLICIES as DECODE_POLICIES  # re-exported
from router.state import Count, FlopModel, ForwardState, causal_pairs, total

ROUTING_ATTRIBUTE = "_ftprune_routing"  # where a routed model keeps its Routing handle
# Runs the unchanged layer: (hidden states, mask, rotary cos/sin, probe) -> hidden states.
LayerRun = Callable[[Tensor, Tensor | None, tuple[Tensor, Tensor], AttentionProbe | None], Tensor]
_MODEL_ARGS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    "past_key_values",
    "inputs_embeds",
    "use_cache",
)


def keep_counts(sparsity: float, lengths: Tensor) -> Tensor:
    """:func:`keep_count` for every row length in ``lengths`` (same float64 arithmetic)."""
    budget = torch.floor((1.0 - sparsity) * lengths.double() + 0.5).long()
    return budget.clamp(min=2).minimum(lengths)


@dataclass
class Routing:
    """A routed model's configuration and the record of its latest forward pass."""

    schedule: list[float]
    router: TokenRouter
    flops: FlopModel
    decode: str = "all"
    attention_window: int | None = 64
    last_state: ForwardState | None = None
    windows: list[int | None] = field(default_factory=list)
    records: "weakref.WeakKeyDictionary[Any, CacheRecord]" = field(
        default_factory=weakref.WeakKeyDictionary, repr=False
    )
    _handles: list[Any] = field(default_factory=list, repr=False)
    _attention: str | None = field(default=None, repr=False)

    @property
    def needs_attention(self) -> bool:
        """Whether the router reads attention features."""
        return bool(getattr(self.router, "needs_attention", False))

    @property
    def nested(self) -> bool:
        """Whether the router routes with nested selection (see the module docstring)."""
        return bool(getattr(self.router, "nested", False))


def decoder_layers(model: CausalLM) -> nn.ModuleList:
    """The decoder block list of a supported causal LM (``model.model.layers``)."""
    family = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if family not in SUPPORTED_FAMILIES or layers is None:
        raise ValueError(
            f"cannot route model family {family!r}; supported families: "
            f"{', '.join(SUPPORTED_FAMILIES)}"
        )
    return layers


def route(
    model: CausalLM,
    schedule: Sequence[float],
    router: TokenRouter | None = None,
    decode: str = "all",
    attention_window: int | None = 64,
) -> Routing:
    """Route ``model`` in place with one sparsity per decoder block; returns the handle.

    ``decode`` is the policy for tokens fed after prefill ("all" or "threshold", see the
    module docstring); ``attention_window`` is how many of the last real queries measure
    the attention features (None: all, exact). Re-routing replaces the configuration. The
    model keeps its weights, state dict, ``model(input_ids)`` and ``generate()``.
    """
    layers = decoder_layers(model)
    schedule = [float(s) for s in schedule]
    if len(schedule) != len(layers):
        raise ValueError(
            f"schedule has {len(schedule)} entries but the model has {len(layers)} decoder blocks"
        )
    if any(not 0.0 <= s < 1.0 for s in schedule):
        raise ValueError("every block sparsity must lie in [0, 1)")
    if decode not in DECODE_POLICIES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_POLICIES)}")
    if attention_window is not None and attention_window < 1:
        raise ValueError("attention_window must be a positive number of queries or None")
    chosen = router or StaticRouter()
    if getattr(chosen, "nested", False) and not non_decreasing(schedule):
        raise ValueError(
            "nested selection needs a non-decreasing schedule: a block cannot compute "
            "tokens an earlier block skipped"
        )
    unroute(model)
    config = cast(PretrainedConfig, model.config)
    if config._attn_implementation != "sdpa":
        raise ValueError(
            f"routing needs SDPA attention, the model uses "
            f"{config._attn_implementation!r} (load it with "
            f"attn_implementation='sdpa')"
        )
    routing = Routing(
        schedule=schedule,
        router=chosen,
        decode=decode,
        attention_window=attention_window,
        flops=FlopModel.of(config),
        windows=_sliding_windows(config, len(layers)),
        _attention=config._attn_implementation,
    )
    for index, layer in enumerate(layers):
        layer.forward = functools.partial(_routed_forward, layer, routing, index)
    base = cast(nn.Module, model.model)
    routing._handles = [
        base.register_forward_pre_hook(
            functools.partial(_begin_forward, routing), with_kwargs=True
        ),
        base.register_forward_hook(
            functools.partial(_end_forward, routing), with_kwargs=True, always_call=True
        ),
    ]
    if routing.needs_attention:
        config._attn_implementation = ROUTED_ATTENTION
    setattr(model, ROUTING_ATTRIBUTE, routing)
    return routing


def unroute(model: CausalLM) -> None:
    """Restore the plain model (no-op when it is not routed)."""
    routing = routing_of(model)
    if routing is None:
        return
    for layer in decoder_layers(model):
        layer.__dict__.pop("forward", None)
    for handle in routing._handles:
        handle.remove()
    cast(PretrainedConfig, model.config)._attn_implementation = routing._attention
    delattr(model, ROUTING_ATTRIBUTE)


def routing_of(model: CausalLM) -> Routing | None:
    """The :class:`Routing` handle of a routed model, or None."""
    return getattr(model, ROUTING_ATTRIBUTE, None)


def _sliding_windows(config: Any, blocks: int) -> list[int | None]:
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return [window if kind == "sliding_attention" else None for kind in layer_types[:blocks]]
    return [window] * blocks


# --------------------------------------------------------------------------- forward hooks
def _begin_forward(
    routing: Routing, module: nn.Module, args: tuple, kwargs: dict[str, Any]
) -> tuple[tuple, dict[str, Any]]:
    """Create the forward's state; take over the padding mask and default positions."""
    kwargs = {**dict(zip(_MODEL_ARGS, args, strict=False)), **kwargs}
    source = kwargs.get("input_ids")
    if source is None:
        source = kwargs.get("inputs_embeds")
    if source is None:
        return (), kwargs  # the model itself reports the missing input
    batch, length = source.shape[:2]
    cache = kwargs.get("past_key_values")
    if cache is not None and not isinstance(cache, DynamicCache):
        raise ValueError(
            f"a routed model caches into a DynamicCache (generate's default), "
            f"not a {type(cache).__name__}"
        )
    record = routing.records.get(cache) if cache is not None else None
    if cache is not None and record is None and cache.get_seq_length() > 0:
        raise ValueError("past_key_values holds tokens this routed model did not write")
    past = record.columns if record is not None else 0
    valid = None
    mask = kwargs.get("attention_mask")
    if mask is not None:
        if mask.dim() != 2 or mask.shape[1] not in (length, past + length):
            raise ValueError(
                f"a routed model takes a 2D attention_mask of shape (batch, "
                f"{past + length}); got {tuple(mask.shape)}"
            )
        new = mask[:, -length:].bool()
        valid = None if bool(new.all()) else new
        # The engine builds every layer's mask itself; transformers would size it by layer 0.
        kwargs["attention_mask"] = None
    positions = kwargs.get("position_ids")
    if positions is None:
        positions = (torch.arange(length, device=source.device) + past)[None]
        if past:
            kwargs["position_ids"] = positions
    kwargs["ftprune_state"] = ForwardState(
        routing.schedule,
        routing.flops,
        batch,
        length,
        positions,
        valid,
        past=past,
        record=record,
        track_attention=routing.needs_attention,
    )
    return (), kwargs


def _end_forward(
    routing: Routing, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any
) -> None:
    state: ForwardState | None = kwargs.get("ftprune_state")
    if state is not None:
        state.finish()
        routing.last_state = state


# --------------------------------------------------------------------------- routed layers
def _routed_forward(
    layer: nn.Module,
    routing: Routing,
    index: int,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    past_key_values: Any = None,
    use_cache: bool | None = False,
    position_embeddings: tuple[Tensor, Tensor] | None = None,
    ftprune_state: ForwardState | None = None,
    **kwargs: Any,
) -> Tensor:
    state = ftprune_state
    if state is None:
        raise RuntimeError("a routed decoder layer runs only inside its model's forward")
    cache = past_key_values
    if cache is not None and state.record is None:
        state.record = routing.records.setdefault(cache, CacheRecord(len(routing.schedule)))
    if position_embeddings is None:
        raise RuntimeError("a routed decoder layer needs the model's rotary position_embeddings")
    run = functools.partial(_run_layer, layer, cache, use_cache, kwargs)
    if state.past:
        return _decode(routing, index, hidden_states, state, cache, position_embeddings, run)
    return _prefill(routing, index, hidden_states, state, cache, position_embeddings, run)


def _run_layer(
    layer: nn.Module,
    cache: Any,
    use_cache: bool | None,
    kwargs: dict[str, Any],
    hidden_states: Tensor,
    mask: Tensor | None,
    rotary: tuple[Tensor, Tensor],
    probe: AttentionProbe | None,
) -> Tensor:
    """The unchanged decoder layer on the tokens it computes."""
    if probe is not None:
        kwargs = {**kwargs, "ftprune_probe": probe}
    return type(layer).forward(
        layer,
        hidden_states,
        attention_mask=mask,
        position_ids=None,
        past_key_values=cache,
        use_cache=use_cache,
        position_embeddings=rotary,
        **kwargs,
    )


def _prefill(
    routing: Routing,
    index: int,
    hidden: Tensor,
    state: ForwardState,
    cache: Any,
    rotary: tuple[Tensor, Tensor],
    run: LayerRun,
) -> Tensor:
    """Block ``index`` on a sequence's first forward: top-k routing, gather, scatter."""
    batch, length = hidden.shape[:2]
    valid, window = state.valid, routing.windows[index]
    k = keep_count(routing.schedule[index], length)
    if k >= length:
        keep, kept = None, state.real
        cols = torch.arange(length, device=hidden.device)[None]
        key_valid, inputs = valid, hidden
        mask = state.dense_masks.get(window)
        if mask is None and _needs_mask(valid, window, length):
            mask = state.dense_masks[window] = causal_mask(cols, cols, valid, window)
    else:
        keep, kept, key_valid, mask, rotary = _selection(routing, index, hidden, state, rotary, k)
        cols = keep
        inputs = _gather_rows(hidden, keep)
    probe = _probe(routing, key_valid)
    out = run(inputs, mask, rotary, probe)
    if cache is not None:
        state.cache_record().append(
            index,
            cols.expand(batch, -1),
            _all_if_none(key_valid, cols, batch),
            stored_entries(cache, index),
        )
    if probe is not None:
        state.update_attention(cols, probe.measurement(), key_valid)
    state.account(
        index,
        kept=total(kept, batch),
        seen=total(state.real, batch),
        kept_pairs=causal_pairs(kept, batch),
        seen_pairs=causal_pairs(state.real, batch),
    )
    if keep is None:
        return out
    return _scatter_rows(hidden, keep, out)


def _selection(
    routing: Routing,
    index: int,
    hidden: Tensor,
    state: ForwardState,
    rotary: tuple[Tensor, Tensor],
    k: int,
) -> tuple[Tensor, Count, Tensor | None, Tensor | None, tuple[Tensor, Tensor]]:
    """Block ``index``'s kept indices, kept counts, key validity, mask and rotary tables;
    a position-only router's selection is made once per forward and reused."""
    sparsity, window = routing.schedule[index], routing.windows[index]
    key = (sparsity, window)
    position_only = getattr(routing.router, "position_only", False)
    if position_only and key in state.selections:
        return state.selections[key]
    batch, length = hidden.shape[:2]
    keep, kept = select_tokens(
        router_scores(routing, index, hidden, state), k, state.valid, sparsity
    )
    if routing.nested:
        state.alive = keep_mask(keep, length)
    key_valid = None if state.valid is None else state.valid.gather(1, keep)
    mask = (
        causal_mask(keep, keep, key_valid, window)
        if _needs_mask(state.valid, window, length)
        else None
    )
    rows = torch.arange(batch, device=hidden.device)[:, None]
    cos, sin = (table.expand(batch, -1, -1)[rows, keep] for table in rotary)
    rotary = (cos, sin)
    selection = (keep, kept, key_valid, mask, rotary)
    if position_only:
        state.selections[key] = selection
    return selection


# One kernel each way (fewer host-side launches than fancy indexing); a single row copies
# whole hidden vectors (index_select / index_copy), much faster than an element-wise
# gather/scatter on a CPU.
def _gather_rows(hidden: Tensor, keep: Tensor) -> Tensor:
    """hidden[b, keep[b]] for every row b: (batch, k, hidden)."""
    if hidden.shape[0] == 1:
        return hidden.index_select(1, keep[0])
    return hidden.gather(1, keep[..., None].expand(-1, -1, hidden.shape[-1]))


def _scatter_rows(hidden: Tensor, keep: Tensor, out: Tensor) -> Tensor:
    """A copy of ``hidden`` with rows ``keep`` replaced by ``out`` (out of place: hooks and
    callers may still hold ``hidden``)."""
    if hidden.shape[0] == 1:
        return hidden.index_copy(1, keep[0], out)
    return hidden.scatter(1, keep[..., None].expand(-1, -1, hidden.shape[-1]), out)


def _decode(
    routing: Routing,
    index: int,
    hidden: Tensor,
    state: ForwardState,
    cache: Any,
    rotary: tuple[Tensor, Tensor],
    run: LayerRun,
) -> Tensor:
    """Block ``index`` on tokens fed after prefill, attending to what the block cached."""
    batch, length, _ = hidden.shape
    record = state.cache_record()
    record.check(index, stored_entries(cache, index))
    cols = (torch.arange(length, device=hidden.device) + state.past)[None].expand(batch, length)
    computed = state.valid
    if routing.decode == "threshold":
        computed = router_scores(routing, index, hidden, state) >= 0
        if state.valid is not None:
            computed = computed & state.valid
        if routing.nested:
            state.alive = computed
    new_valid = _all_if_none(computed, cols, batch)
    real = _all_if_none(state.valid, cols, batch)
    # Pairs: each computed query attends to the valid entries before it and to itself.
    written, before = _before(record.written[index], batch), _before(record.real, batch)
    state.account(
        index,
        kept=new_valid.sum(),
        seen=real.sum(),
        kept_pairs=(new_valid * (written + new_valid.cumsum(1))).sum(),
        seen_pairs=(real * (before + real.cumsum(1))).sum(),
    )
    if routing.decode == "threshold" and not bool(new_valid.any()):
        return hidden
    key_cols, key_valid = record.keys(index, cols, new_valid)
    mask = causal_mask(cols, key_cols, key_valid, routing.windows[index])
    probe = _probe(routing, new_valid)
    out = run(hidden, mask, rotary, probe)
    record.append(index, cols, new_valid, stored_entries(cache, index))
    if probe is not None:
        state.update_attention(cols, probe.measurement(), new_valid)
    return out if computed is None else torch.where(computed[..., None], out, hidden)


def _probe(routing: Routing, query_valid: Tensor | None) -> AttentionProbe | None:
    if not routing.needs_attention:
        return None
    return AttentionProbe(routing.attention_window, query_valid)


def _needs_mask(valid: Tensor | None, window: int | None, length: int) -> bool:
    """Whether attention among ``length`` tokens needs an explicit mask (else causal)."""
    return valid is not None or (window is not None and length > window)


def _all_if_none(flags: Tensor | None, like: Tensor, batch: int) -> Tensor:
    if flags is not None:
        return flags
    return torch.ones(batch, like.shape[1], dtype=torch.bool, device=like.device)


def _before(count: Tensor | None, batch: int) -> Tensor | int:
    return 0 if count is None else count.view(batch, 1)


# --------------------------------------------------------------------------- selection, masks
def row_ends(length: int, device: torch.device) -> Tensor:
    """The first and last column of an unpadded row of ``length`` tokens (the tokens every
    block keeps), made on the device: a tensor built from a list would be a host-to-device
    copy, which synchronizes the stream on a GPU."""
    return torch.arange(0, length, max(1, length - 1), device=device)


def router_scores(routing: Routing, index: int, hidden: Tensor, state: ForwardState) -> Tensor:
    """The router's float scores for block ``index``; under nested selection the tokens an
    earlier block of this forward skipped score -inf (only a row's first and last token,
    which every block keeps, can outrank them)."""
    scores = routing.router.scores(index, hidden, state).float()
    if routing.nested and state.alive is not None:
        scores = scores.masked_fill(~state.alive, -math.inf)
    return scores


def keep_mask(keep: Tensor, length: int) -> Tensor:
    """(batch, length) bool mask of the kept indices ``keep`` (batch, k)."""
    mask = torch.zeros(keep.shape[0], length, dtype=torch.bool, device=keep.device)
    return mask.scatter_(1, keep, True)


def select_tokens(
    scores: Tensor, k: int, valid: Tensor | None, sparsity: float
) -> tuple[Tensor, Count]:
    """Per-row top-k of ``scores`` (batch, L): sorted indices (batch, k) and the real
    tokens kept per row (an int when rows are unpadded, else a (batch,) tensor).

    Each row keeps its first and last real token. With padding, a row with n real tokens
    keeps its ``keep_count(sparsity, n)`` best real tokens and fills the remaining slots
    with its own padding positions (it has enough: see the module docstring).
    """
    batch, length = scores.shape
    if valid is None:
        ends = row_ends(length, scores.device)
        keep = scores.index_fill(1, ends, math.inf).topk(k, dim=1, sorted=False).indices
        return keep.sort(dim=1).values, k
    first = valid.byte().argmax(dim=1)
    last = length - 1 - valid.flip(1).byte().argmax(dim=1)
    scores = scores.masked_fill(~valid, -math.inf).scatter(
        1, torch.stack([first, last], dim=1), math.inf
    )
    budget = keep_counts(sparsity, valid.sum(dim=1))
    best = scores.topk(k, dim=1).indices  # real tokens by descending score
    pads = (~valid).float().topk(k, dim=1).indices  # padding positions first
    slot = torch.arange(k, device=scores.device)
    spare = pads.gather(1, (slot - budget[:, None]).clamp(min=0))
    keep = torch.where(slot < budget[:, None], best, spare)
    return keep.sort(dim=1).values, budget


def causal_mask(
    query_cols: Tensor, key_cols: Tensor, key_valid: Tensor | None, window: int | None
) -> Tensor:
    """Boolean SDPA mask (batch, 1, queries, keys) from input columns: a query sees a key
    at an earlier or equal column that is valid and, with a sliding window, fewer than
    ``window`` columns back. Every query sees itself, so no row is empty."""
    query = query_cols[:, :, None]
    key = key_cols[:, None, :]
    visible = key <= query
    if window is not None:
        visible = visible & (query - key < window)
    if key_valid is not None:
        visible = visible & key_valid[:, None, :] | (key == query)
    return visible[:, None]
