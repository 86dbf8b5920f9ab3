"""Attention received per token, measured inside the attention call that already runs.

When the router reads attention features, the routed model runs under the attention
implementation ``ftprune_sdpa``: PyTorch SDPA exactly as transformers' ``sdpa`` calls it,
plus, for the calls that carry an :class:`AttentionProbe`, a measurement from the query and
key states SDPA was given (after rotary embedding and the cache update). In unpadded causal
self-attention (prefill without padding) the probe computes its own rows' attention output
from the probabilities it measures, and SDPA the rows before them; elsewhere (padding,
sliding-window masks, decoding) the probe recomputes its rows' scores beside SDPA. The same
implementation carries router training's key gate (:mod:`router.gate`).

What is measured, per key token j: the attention it receives, summed over the probe's
queries and averaged over heads, divided by the number of those queries that can see j.
The probe's queries are the last ``window`` real queries of each row (``window=None``: all
of them, the exact column sums). Queries are processed in chunks of ``chunk``, so at most
(batch, heads, chunk, keys) scores exist at a time: no full attention map is materialized.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from router.gate import KeyGate

ROUTED_ATTENTION = "ftprune_sdpa"


class AttentionProbe:
    """A request to measure attention received in one attention call.

    ``query_valid`` (batch, queries) marks the real queries (None: all real). After the
    call, ``received`` (batch, keys) holds the measurement; keys no probe query can see
    get 0.
    """

    def __init__(self, window: int | None, query_valid: Tensor | None, chunk: int = 256) -> None:
        self.window = window
        self.query_valid = query_valid
        self.chunk = chunk
        self.received: Tensor | None = None

    def measurement(self) -> Tensor:
        """``received``, once the attention call it was passed to has filled it."""
        if self.received is None:
            raise RuntimeError("the probe's attention call has not run")
        return self.received

    def fuses(
        self,
        module: Any,
        query: Tensor,
        key: Tensor,
        mask: Tensor | None,
        sdpa_kwargs: dict[str, Any],
    ) -> bool:
        """Whether :meth:`attend` can serve this call: unpadded causal self-attention (no
        mask, no cache entries before the queries), no dropout, nothing added to scores."""
        causal = sdpa_kwargs.get("is_causal")
        return (
            mask is None
            and self.query_valid is None
            and query.shape[2] == key.shape[2] > 1
            and not sdpa_kwargs.get("dropout")
            and sdpa_kwargs.get("position_bias") is None
            and sdpa_kwargs.get("softcap") is None
            and (causal if causal is not None else getattr(module, "is_causal", True))
        )

    def attend(
        self, module: Any, query: Tensor, key: Tensor, value: Tensor, sdpa_kwargs: dict[str, Any]
    ) -> Tensor:
        """Causal attention output (B, q, H, d) of a call :meth:`fuses` accepts, measuring
        ``received`` from the same probabilities.

        The window's rows are computed here, in chunks, as softmax(QK^T)V in float32 (the
        probabilities the measurement needs are the ones the output uses); the rows before
        the window go to SDPA. The window's rows therefore cost no second QK^T. Gradients
        flow to the output as through SDPA; ``received`` holds no autograd graph.
        """
        batch, heads, length, dim = query.shape
        scaling = _scaling(query, sdpa_kwargs)
        window = self._window(length)
        first = length - window
        outputs = []
        if first:
            before, _ = sdpa_attention_forward(
                module,
                query[:, :, :first],
                key[:, :, :first],
                value[:, :, :first],
                None,
                **sdpa_kwargs,
            )
            outputs.append(before)
        keys_t = key.float().transpose(-1, -2)  # (B, Hkv, d, kv)
        values = value.float()
        total = query.new_zeros(batch, length, dtype=torch.float32)
        for start in range(first, length, self.chunk):
            stop = min(start + self.chunk, length)
            size = stop - start
            scores = _grouped_scores(query[:, :, start:stop], keys_t[..., :stop], scaling)
            # Columns before the chunk's first row are visible to all of its rows.
            unseen = torch.arange(start, stop, device=query.device)
            scores[..., start:].masked_fill_(unseen > unseen[:, None], -math.inf)
            probs = scores.softmax(dim=-1)
            total[:, :stop] += probs.detach().sum(dim=(1, 2, 3))
            rows = torch.matmul(probs.flatten(2, 3), values[:, :, :stop])
            outputs.append(rows.view(batch, heads, size, dim).transpose(1, 2).to(query.dtype))
        # Key j is seen by the window's rows at or after it.
        count = (length - torch.arange(length, device=query.device)).clamp(max=window)
        self.received = total / (heads * count)
        return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0].contiguous()

    @torch.no_grad()
    def measure(self, query: Tensor, key: Tensor, mask: Tensor | None, scaling: float) -> None:
        """Fill ``received`` from query (B, H, q, d), key (B, Hkv, kv, d) and the boolean mask
        (B, 1, q, kv) SDPA used (None: causal, q == kv). The measurement is a router input,
        never differentiated: it holds no autograd graph."""
        batch, heads, length, dim = query.shape
        kv = key.shape[2]
        rows, weight = self._rows(length, query.device)
        keys_t = key.float().transpose(-1, -2)  # (B, Hkv, d, kv)
        total = query.new_zeros(batch, kv, dtype=torch.float32)
        count = query.new_zeros(batch, kv, dtype=torch.float32)
        for start in range(0, rows.shape[1], self.chunk):
            chunk_rows = rows[:, start : start + self.chunk]
            if chunk_rows.shape[0] == 1:
                picked = query.index_select(2, chunk_rows[0])
            else:
                picked = query.gather(2, chunk_rows[:, None, :, None].expand(-1, heads, -1, dim))
            scores = _grouped_scores(picked, keys_t, scaling)
            chunk_weight = weight[:, start : start + self.chunk, None]  # (B or 1, c, 1)
            if mask is None:
                visible = torch.arange(kv, device=query.device) <= chunk_rows[:, :, None]
            else:
                visible = mask[:, 0].gather(
                    1, chunk_rows.expand(mask.shape[0], -1)[:, :, None].expand(-1, -1, kv)
                )
            probs = scores.masked_fill_(~visible[:, None, None], -math.inf).softmax(dim=-1)
            total += (probs.sum(dim=(1, 2)) * chunk_weight).sum(dim=1)
            count += (visible * chunk_weight).sum(dim=1)
        self.received = total / (heads * count.clamp(min=1.0))

    def _window(self, length: int) -> int:
        """How many queries of a ``length``-query call the probe reads."""
        return length if self.window is None else min(self.window, length)

    def _rows(self, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Query rows the probe reads (B or 1, W) and their weights (1 for real queries)."""
        window = self._window(length)
        if self.query_valid is None:
            rows = torch.arange(length - window, length, device=device)[None]
            return rows, torch.ones(1, window, device=device)
        valid = self.query_valid
        later = valid.flip(1).cumsum(dim=1).flip(1)  # real queries at or after each row
        inside = valid & (later <= window)
        order = (inside * torch.arange(1.0, length + 1, device=device)).topk(window, dim=1)
        rows = order.indices.sort(dim=1).values
        return rows, inside.gather(1, rows).float()


def _grouped_scores(picked: Tensor, keys_t: Tensor, scaling: float) -> Tensor:
    """Scaled float32 scores (B, Hkv, groups, q, kv) of query rows ``picked`` (B, H, q, d)
    against transposed keys (B, Hkv, d, kv); query head h reads key head h // groups."""
    batch, heads, size, dim = picked.shape
    kv_heads = keys_t.shape[1]
    groups = heads // kv_heads
    scaled = picked.float() * scaling
    return torch.matmul(scaled.reshape(batch, kv_heads, groups * size, dim), keys_t).view(
        batch, kv_heads, groups, size, keys_t.shape[-1]
    )


def _scaling(query: Tensor, sdpa_kwargs: dict[str, Any]) -> float:
    return sdpa_kwargs.get("scaling") or query.shape[-1] ** -0.5


def routed_sdpa(
    module: Any,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    ftprune_probe: AttentionProbe | None = None,
    ftprune_gate: KeyGate | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' SDPA attention, plus the probe's measurement when one is attached
    (taken from the attention's own probabilities where the probe can compute its rows),
    and a training forward's key gate when one is attached (same output values, the gate's
    gradient in the backward: see :mod:`router.gate`)."""
    probe = ftprune_probe
    if probe is not None and probe.fuses(module, query, key, attention_mask, kwargs):
        if ftprune_gate is not None:
            raise ValueError("a key gate needs the masked attention call of a routed block")
        return probe.attend(module, query, key, value, kwargs), None
    output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if probe is not None:
        probe.measure(query, key, attention_mask, _scaling(query, kwargs))
    if ftprune_gate is not None:
        output = ftprune_gate.attend(output, query, key, value, kwargs)
    return output, None


# transformers builds masks through the mask interface of the same name: register both.
AttentionInterface.register(ROUTED_ATTENTION, routed_sdpa)
AttentionMaskInterface.register(ROUTED_ATTENTION, sdpa_mask)
