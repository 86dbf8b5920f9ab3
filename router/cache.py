"""The KV-cache policy's bookkeeping: which input columns each layer of a cache holds.

A routed layer caches K/V only for the tokens it computes, so the layers of one cache hold
different numbers of entries. A :class:`CacheRecord` follows one cache object (the engine
keeps records in a weak dictionary keyed by the cache) and stores, per layer, the input
column of every cached entry and whether that entry may be attended to (padding and
threshold-skipped decode tokens may not). The engine builds every cached layer's attention
mask from this record, never from layer 0's length.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def stored_entries(cache: Any, layer: int) -> int:
    """Entries the cache holds for ``layer`` (0 before its first update)."""
    cached = cache.layers[layer]
    keys = getattr(cached, "keys", None)
    if not getattr(cached, "is_initialized", False) or keys is None or keys.dim() < 2:
        return 0
    return keys.shape[-2]


class CacheRecord:
    """Per-layer record of one KV cache, in input columns (0 = first token ever fed).

    Guarantees: after every routed forward, ``cols[i]`` and ``valid[i]`` have exactly as
    many entries as the cache holds for layer i, in the same order.
    """

    def __init__(self, num_layers: int) -> None:
        self.columns = 0
        self.real: Tensor | None = None
        self.cols: list[Tensor | None] = [None] * num_layers
        self.valid: list[Tensor | None] = [None] * num_layers
        self.written: list[Tensor | None] = [None] * num_layers
        self.attention: Tensor | None = None

    def keys(self, layer: int, cols: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Columns and validity (batch, entries) of the keys ``layer`` attends to when it
        adds entries for ``cols`` / ``valid`` (batch, new) to what it holds."""
        held_cols, held_valid = self.cols[layer], self.valid[layer]
        if held_cols is None or held_valid is None:
            return cols, valid
        return torch.cat([held_cols, cols], dim=1), torch.cat([held_valid, valid], dim=1)

    def append(self, layer: int, cols: Tensor, valid: Tensor, stored: int) -> None:
        """Record the entries just written for ``layer``, keeping the last ``stored`` ones
        (a sliding-window cache layer drops its oldest entries)."""
        key_cols, key_valid = self.keys(layer, cols, valid)
        start = key_cols.shape[1] - stored
        self.cols[layer], self.valid[layer] = key_cols[:, start:], key_valid[:, start:]
        written = valid.sum(dim=1)
        previous = self.written[layer]
        self.written[layer] = written if previous is None else previous + written

    def repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times in place, as ``DynamicCache``'s
        ``batch_repeat_interleave`` does to the cache this record follows."""
        for name in ("cols", "valid", "written"):
            rows = getattr(self, name)
            setattr(
                self, name, [None if t is None else t.repeat_interleave(repeats, 0) for t in rows]
            )
        for name in ("real", "attention"):
            value = getattr(self, name)
            if isinstance(value, Tensor):
                setattr(self, name, value.repeat_interleave(repeats, 0))

    def check(self, layer: int, stored: int) -> None:
        """Raise if the cache holds a different number of entries than the record (the cache
        was cropped, or written by another model)."""
        held_cols = self.cols[layer]
        held = 0 if held_cols is None else held_cols.shape[1]
        if held != stored:
            raise RuntimeError(
                f"KV cache layer {layer} holds {stored} entries but the routed model wrote "
                f"{held}: a routed model's cache cannot be cropped or shared with other models"
            )
