"""Token routers: the one seam that decides which tokens a decoder block computes.

A router scores the tokens of one forward pass for one block; the engine does the rest
(budgets, mandatory tokens, padding, gather/scatter, KV cache). Scores are logits: higher
means keep.

- Prefill (the first forward on a sequence): the engine keeps the top k_i scores of each
  row, plus the row's first and last real tokens. Only the order of the scores matters.
- Decoding with ``route(..., decode="threshold")``: a new token is computed in a block when
  its score is >= 0 (router probability sigmoid(score) >= 0.5, FTP's decode rule).

A router that reads attention features (``state.features(block)``) sets
``needs_attention = True``; the engine then measures, in the same pass, the attention each
computed token receives. Routers that leave it False never pay for that measurement.

A router whose prefill scores depend only on the row's length and padding (not on the
block, the hidden states or the features) may set ``position_only = True``: the engine
then selects once per forward and block sparsity and reuses that selection (indices,
rotary tables, mask) in every block with the same sparsity, which matters when the host
launches kernels for a fast GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from router.state import ForwardState


class TokenRouter(Protocol):
    """Scores tokens for one block of one forward pass."""

    needs_attention: bool

    def scores(self, block: int, hidden_states: Tensor, state: "ForwardState") -> Tensor:
        """Return a float tensor (batch, new tokens); higher means keep. Scores of padding
        are ignored; ties among kept candidates break arbitrarily."""
        ...


def position_priority(batch: int, length: int, device: torch.device | str | None = None) -> Tensor:
    """(batch, length) scores of FTP's token position priority: each token's index."""
    positions = torch.arange(length, device=device, dtype=torch.float32)
    return positions.expand(batch, length)


class StaticRouter:
    """FTP's token position priority: token 0, the last token, then backwards by position.

    Scores are the token indices of the forward, so they are never negative: under the
    threshold decode policy every decode token is computed.
    """

    needs_attention = False
    position_only = True

    def scores(self, block: int, hidden_states: Tensor, state: "ForwardState") -> Tensor:
        batch, length = hidden_states.shape[:2]
        return position_priority(batch, length, hidden_states.device)


class RandomRouter:
    """Uniformly random choice among the non-mandatory tokens (the paper's weak baseline).

    Scores are standard normal draws from the router's own seeded generator: a uniformly
    random subset at prefill, and a fair coin per decode token and block under the
    threshold decode policy.
    """

    needs_attention = False

    def __init__(self, seed: int = 0) -> None:
        self._generator = torch.Generator().manual_seed(seed)

    def scores(self, block: int, hidden_states: Tensor, state: "ForwardState") -> Tensor:
        batch, length = hidden_states.shape[:2]
        return torch.randn(batch, length, generator=self._generator).to(hidden_states.device)
