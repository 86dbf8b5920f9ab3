"""A block's token budget and the schedule shapes routers accept, in plain Python: checks of
a schedule (before any model loads) and the routing engine share these definitions."""

from __future__ import annotations

import itertools
import math
from typing import Sequence


def keep_count(sparsity: float, seq_len: int) -> int:
    """Tokens a block with sparsity ``sparsity`` keeps out of ``seq_len`` (halves round up)."""
    return min(seq_len, max(2, math.floor((1.0 - sparsity) * seq_len + 0.5)))


def non_decreasing(schedule: Sequence[float]) -> bool:
    """Whether no block's sparsity is below the one before it (what nested selection routes)."""
    return all(a <= b for a, b in itertools.pairwise(schedule))
