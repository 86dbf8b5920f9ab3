"""Several continuations read on top of one prefill: the prompt is computed once, its key/value
cache repeated once per continuation.

A routed model's cache is followed by a :class:`~router.cache.CacheRecord` (which input
column every cached entry holds, per layer); :func:`repeat_cache` repeats the cache's rows
and the record's together, so the engine keeps building every layer's mask from the truth.
Continuations fed after the repeat are decode tokens (see :mod:`router.engine`: computed in
every block by default), exactly as if each had been fed on its own copy of the prefill.
"""

from __future__ import annotations

from transformers import DynamicCache

from router.engine import routing_of
from router.loading import CausalLM


def repeat_cache(model: CausalLM, cache: DynamicCache, repeats: int) -> None:
    """Repeat every row of ``cache`` ``repeats`` times in place (row r becomes rows
    r·repeats .. r·repeats + repeats - 1), keeping a routed model's record in step."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    cache.batch_repeat_interleave(repeats)
    routing = routing_of(model)
    record = routing.records.get(cache) if routing is not None else None
    if record is not None:
        record.repeat_interleave(repeats)
