"""The per-forward context of a routed model: what routers read, what a forward reports.

One :class:`ForwardState` is created for every forward pass of the routed model and handed
to every decoder block and router as an argument, never stored on modules. After the pass
it becomes ``Routing.last_state``.

Accounting counts real tokens only (padding is neither kept nor skipped) and sums over the
batch. While the forward runs, counts of padded batches stay on the device; they are read
back only when a report (``kept``, ``realized_sparsity``, ...) is asked for, so routing adds
no host synchronization to a forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor

from router.cache import CacheRecord

# A count per row: a Python int (the same for every row) or a (batch,) tensor.
Count = Union[int, Tensor]


@dataclass(frozen=True)
class FlopModel:
    """FLOPs of one decoder block: ``token`` per computed token (projections and MLP),
    ``pair`` per attending (query, key) pair (QK^T and attention-weighted values)."""

    token: float
    pair: float

    @classmethod
    def of(cls, config: Any) -> "FlopModel":
        hidden, heads = config.hidden_size, config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        projections = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
        mlp = 3 * hidden * config.intermediate_size
        return cls(token=2.0 * (projections + mlp), pair=4.0 * heads * head_dim)


def total(count: Count, batch: int) -> Count:
    """Sum of a per-row count over the batch."""
    return batch * count if isinstance(count, int) else count.sum()


def causal_pairs(count: Count, batch: int) -> Count:
    """Causal (query, key) pairs among ``count`` tokens per row, summed over the batch."""
    if isinstance(count, int):
        return batch * count * (count + 1) // 2
    return (count * (count + 1) // 2).sum()


class ForwardState:
    """Context and report of one forward pass of a routed model.

    Router inputs, for the forward's ``length`` new tokens per row:

    - ``schedule``: the per-block sparsities;
    - ``valid`` (batch, length) bool: real tokens (None: no padding);
    - ``positions`` (batch or 1, length): rotary positions;
    - ``past``: input columns already in the KV cache (0 at prefill);
    - ``attention`` (batch, past + length): the latest-attention table, each token's
      attention received in the most recent block that computed it (None unless the
      router has ``needs_attention``; padding holds -inf);
    - ``features(block)``: FTP's four per-token router inputs;
    - ``alive`` (batch, length) bool: under nested selection, the tokens every routed
      block so far computed (None before the first; see :mod:`router.engine`).

    Report, per block and summed over the batch (padding excluded): ``kept``, ``seen``,
    ``block_sparsity``; overall: ``realized_sparsity`` and ``flop_saving``.
    """

    def __init__(
        self,
        schedule: list[float],
        flops: FlopModel,
        batch: int,
        length: int,
        positions: Tensor,
        valid: Tensor | None,
        past: int = 0,
        record: CacheRecord | None = None,
        track_attention: bool = False,
    ) -> None:
        self.schedule = schedule
        self.flops = flops
        self.batch = batch
        self.length = length
        self.positions = positions
        self.valid = valid
        self.past = past
        self.record = record
        self.real: Count = length if valid is None else valid.sum(dim=1)
        self.dense_masks: dict[int | None, Tensor] = {}
        # Selections of a position-only router, by (block sparsity, sliding window).
        self.selections: dict[tuple[float, int | None], Any] = {}
        self.attention = self._initial_attention(positions.device) if track_attention else None
        self.alive: Tensor | None = None
        blocks = len(schedule)
        self._kept: list[Count] = [0] * blocks
        self._seen: list[Count] = [0] * blocks
        self._kept_pairs: list[Count] = [0] * blocks
        self._seen_pairs: list[Count] = [0] * blocks

    def cache_record(self) -> CacheRecord:
        """The record of the KV cache this forward reads and writes."""
        if self.record is None:
            raise RuntimeError("this forward runs without a KV cache record")
        return self.record

    def attention_table(self) -> Tensor:
        """The latest-attention table (see the class docstring)."""
        if self.attention is None:
            raise RuntimeError("attention features need a router with needs_attention = True")
        return self.attention

    # ----------------------------------------------------------------- router inputs
    def features(self, block: int) -> Tensor:
        """(batch, length, 4) float32 router inputs of this forward's tokens at ``block``:
        position j/(L-1) (rotary position over the row's last real position), the latest
        attention received (from the most recent block that computed the token; 0 before
        any), its rank among the row's real tokens in [0, 1] (1 = most attention), and
        the block's sparsity. Values at padding are meaningless."""
        attention = self.attention_table()
        positions = self.positions.float()
        if self.valid is None:
            last = positions[:, -1:]
        else:
            last = positions.masked_fill(~self.valid, 0.0).amax(dim=1, keepdim=True)
        shape = (self.batch, self.length)
        position = (positions / last.clamp(min=1.0)).expand(shape)
        table = attention[:, self.past :]
        received = table.masked_fill(table.isinf(), 0.0)
        rank = self.attention_rank()[:, self.past :]
        sparsity = torch.full(shape, self.schedule[block], device=table.device)
        return torch.stack([position, received, rank, sparsity], dim=-1)

    def attention_rank(self) -> Tensor:
        """(batch, columns) rank of each token's latest attention among its row's real
        tokens, 0 (least) to 1 (most); ties rank by position."""
        table = self.attention_table()
        columns = table.shape[1]
        order = table.argsort(dim=1, stable=True)
        ranks = torch.arange(columns, device=table.device, dtype=table.dtype).expand_as(table)
        rank = torch.empty_like(table).scatter_(1, order, ranks)
        pads = table.isinf().sum(dim=1, keepdim=True)
        return ((rank - pads) / (columns - pads - 1).clamp(min=1)).clamp(min=0.0)

    def update_attention(self, cols: Tensor, received: Tensor, computed: Tensor | None) -> None:
        """Store the attention received by the tokens at input columns ``cols`` (batch, n),
        measured over keys whose last n entries are those tokens, where ``computed``."""
        fresh = received[:, -cols.shape[1] :]
        cols = cols - self.past if self.past else cols
        table = self.attention_table()[:, self.past :]
        if computed is not None:
            fresh = torch.where(computed, fresh, table.gather(1, cols.expand(self.batch, -1)))
        table.scatter_(1, cols.expand(self.batch, -1), fresh)

    def _initial_attention(self, device: torch.device) -> Tensor:
        fresh = torch.zeros(self.batch, self.length, device=device)
        if self.valid is not None:
            fresh = fresh.masked_fill(~self.valid, -math.inf)
        if not self.past:
            return fresh
        before = self.cache_record().attention
        if before is None:
            before = torch.zeros(self.batch, self.past, device=device)
        return torch.cat([before, fresh], dim=1)

    # ------------------------------------------------------------------- accounting
    def account(
        self, block: int, kept: Count, seen: Count, kept_pairs: Count, seen_pairs: Count
    ) -> None:
        """Add a block's computed tokens and attention pairs next to the dense ones."""
        self._kept[block] += kept
        self._seen[block] += seen
        self._kept_pairs[block] += kept_pairs
        self._seen_pairs[block] += seen_pairs

    def finish(self) -> None:
        """Close the forward: advance the KV-cache record past this forward's columns."""
        record = self.record
        if record is None:
            return
        record.columns = self.past + self.length
        real = (
            self.real
            if isinstance(self.real, Tensor)
            else torch.full((self.batch,), self.real, device=self.positions.device)
        )
        record.real = real if record.real is None else record.real + real
        record.attention = self.attention

    @property
    def kept(self) -> list[int]:
        """Real tokens each block computed."""
        return [int(count) for count in self._kept]

    @property
    def seen(self) -> list[int]:
        """Real tokens each block was offered."""
        return [int(count) for count in self._seen]

    @property
    def realized_sparsity(self) -> float:
        """Fraction of real (token, block) pairs skipped in this forward."""
        seen = sum(self.seen)
        return 0.0 if seen == 0 else 1.0 - sum(self.kept) / seen

    @property
    def block_sparsity(self) -> list[float]:
        return [0.0 if s == 0 else 1.0 - k / s for k, s in zip(self.kept, self.seen, strict=True)]

    @property
    def flop_saving(self) -> float:
        """Fraction of the dense decoder-block FLOPs (projections, MLP and the quadratic
        attention term, causal pairs among real tokens) this forward did not spend."""
        token, pair = self.flops.token, self.flops.pair
        done = sum(
            token * int(k) + pair * int(p)
            for k, p in zip(self._kept, self._kept_pairs, strict=True)
        )
        dense = sum(
            token * int(s) + pair * int(p)
            for s, p in zip(self._seen, self._seen_pairs, strict=True)
        )
        return 0.0 if dense == 0 else 1.0 - done / dense
