"""Attention received per token, measured inside the attention call that already runs.

When the router reads attention features, the routed model runs under the attention
implementation ``ftprune_sdpa``: PyTorch SDPA exactly as transformers' ``sdpa`` calls it,
plus, for the calls that carry an :class:`AttentionProbe`, a measurement from the query and
key states SDPA was given (after rotary embedding and the cache update).

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

    @torch.no_grad()
    def measure(self, query: Tensor, key: Tensor, mask: Tensor | None, scaling: float) -> None:
        """Fill ``received`` from query (B, H, q, d), key (B, Hkv, kv, d) and the boolean mask
        (B, 1, q, kv) SDPA used (None: causal, q == kv). The measurement is a router input,
        never differentiated: it holds no autograd graph."""
        batch, heads, length, dim = query.shape
        kv_heads, kv = key.shape[1], key.shape[2]
        groups = heads // kv_heads  # query head h reads key head h // groups
        rows, weight = self._rows(length, query.device)
        # Causal and unpadded: the rows are the last ones, so only their own columns need
        # masking and every weight is 1.
        causal = mask is None and self.query_valid is None
        first_row = length - rows.shape[1]
        keys_t = key.float().transpose(-1, -2)  # (B, Hkv, d, kv)
        total = query.new_zeros(batch, kv, dtype=torch.float32)
        count = query.new_zeros(batch, kv, dtype=torch.float32)
        for start in range(0, rows.shape[1], self.chunk):
            chunk_rows = rows[:, start:start + self.chunk]
            size = chunk_rows.shape[1]
            if chunk_rows.shape[0] == 1:
                picked = query.index_select(2, chunk_rows[0])
            else:
                picked = query.gather(2, chunk_rows[:, None, :, None].expand(-1, heads, -1, dim))
            picked = picked.float() * scaling
            scores = torch.matmul(picked.reshape(batch, kv_heads, groups * size, dim),
                                  keys_t).view(batch, kv_heads, groups, size, kv)
            if causal:
                # Columns before the chunk's first row are visible to all of its rows.
                first = first_row + start
                unseen = torch.arange(first, kv, device=query.device) > chunk_rows[0, :, None]
                scores[..., first:].masked_fill_(unseen, -math.inf)
                total += scores.softmax(dim=-1).sum(dim=(1, 2, 3))
                continue
            chunk_weight = weight[:, start:start + self.chunk, None]  # (B or 1, c, 1)
            if mask is None:
                visible = torch.arange(kv, device=query.device) <= chunk_rows[:, :, None]
            else:
                visible = mask[:, 0].gather(
                    1, chunk_rows.expand(mask.shape[0], -1)[:, :, None].expand(-1, -1, kv))
            probs = scores.masked_fill_(~visible[:, None, None], -math.inf).softmax(dim=-1)
            total += (probs.sum(dim=(1, 2)) * chunk_weight).sum(dim=1)
            count += (visible * chunk_weight).sum(dim=1)
        if causal:  # key j is seen by the window's rows at or after it
            count += (length - torch.arange(kv, device=query.device)).clamp(max=rows.shape[1])
        self.received = total / (heads * count.clamp(min=1.0))

    def _rows(self, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Query rows the probe reads (B or 1, W) and their weights (1 for real queries)."""
        window = length if self.window is None else min(self.window, length)
        if self.query_valid is None:
            rows = torch.arange(length - window, length, device=device)[None]
            return rows, torch.ones(1, window, device=device)
        valid = self.query_valid
        later = valid.flip(1).cumsum(dim=1).flip(1)  # real queries at or after each row
        inside = valid & (later <= window)
        order = (inside * torch.arange(1.0, length + 1, device=device)).topk(window, dim=1)
        rows = order.indices.sort(dim=1).values
        return rows, inside.gather(1, rows).float()


def routed_sdpa(module: Any, query: Tensor, key: Tensor, value: Tensor,
                attention_mask: Tensor | None, ftprune_probe: AttentionProbe | None = None,
                **kwargs: Any) -> tuple[Tensor, None]:
    """transformers' SDPA attention, plus the probe's measurement when one is attached."""
    output = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if ftprune_probe is not None:
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        ftprune_probe.measure(query, key, attention_mask, scaling)
    return output


# transformers builds masks through the mask interface of the same name: register both.
AttentionInterface.register(ROUTED_ATTENTION, routed_sdpa)
AttentionMaskInterface.register(ROUTED_ATTENTION, sdpa_mask)
