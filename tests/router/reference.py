"""An independent dense reference for routed models, and routers used by the tests.

The reference never gathers: every block runs on the full sequence of the *unrouted* model
with an explicit attention mask (a computed token attends to the computed, real, earlier
tokens of its row, within the sliding window if the model has one), and tokens a block does
not compute keep their input hidden state (identity).
"""

from __future__ import annotations

import torch
from torch import Tensor

from router import StaticRouter, decoder_layers, keep_count


def reference_logits(
    model,
    ids: Tensor,
    computed: list[Tensor],
    real: Tensor | None = None,
    positions: Tensor | None = None,
    capture: list | None = None,
) -> Tensor:
    """Logits (batch, L, vocab) when block i computes exactly ``computed[i]`` (batch, L).

    ``real`` (batch, L) marks real tokens (default: all); ``positions`` are the rotary
    positions (default: 0..L-1). With ``capture`` (a list), the model must use eager
    attention and each block's attention probabilities (batch, heads, L, L) are appended.
    """
    batch, length = ids.shape
    real = torch.ones_like(ids, dtype=torch.bool) if real is None else real
    positions = torch.arange(length)[None] if positions is None else positions
    window = getattr(model.config, "sliding_window", None)
    hidden = model.model.embed_tokens(ids)
    rotary = model.model.rotary_emb(hidden, positions)
    column = torch.arange(length)
    causal = column[None, :] <= column[:, None]
    if window is not None:
        causal &= column[:, None] - column[None, :] < window
    for layer, comp in zip(decoder_layers(model), computed, strict=True):
        keys = comp & real
        visible = (causal[None] & keys[:, None, :]) | torch.eye(length, dtype=torch.bool)[None]
        # Additive, so that eager attention (used with ``capture``) reads it right too.
        mask = torch.zeros(visible.shape, dtype=hidden.dtype).masked_fill(~visible, -torch.inf)
        handle = None
        if capture is not None:
            handle = layer.self_attn.register_forward_hook(
                lambda module, args, output: capture.append(output[1])
            )
        out = layer(hidden, attention_mask=mask[:, None], position_embeddings=rotary)
        if handle is not None:
            handle.remove()
        hidden = torch.where(comp[..., None], out, hidden)
    return model.lm_head(model.model.norm(hidden))


def static_keep_sets(schedule: list[float], length: int) -> list[list[int]]:
    """FTP position priority, written out: token 0, the last token, then L-2 down to 1."""
    priority = [0, length - 1] + list(range(length - 2, 0, -1))
    return [sorted(priority[: keep_count(s, length)]) for s in schedule]


def as_masks(keep_sets: list[list[int]], length: int, batch: int = 1) -> list[Tensor]:
    masks = []
    for kept in keep_sets:
        mask = torch.zeros(batch, length, dtype=torch.bool)
        mask[:, kept] = True
        masks.append(mask)
    return masks


class FixedRouter:
    """Prefill: keeps exactly the given token sets (score 1 inside, 0 outside)."""

    needs_attention = False

    def __init__(self, keep_sets: list[list[int]]) -> None:
        self.keep_sets = keep_sets

    def scores(self, block, hidden_states, state):
        scores = torch.zeros(hidden_states.shape[:2])
        scores[:, self.keep_sets[block]] = 1.0
        return scores


class DecodeRouter(StaticRouter):
    """Static at prefill; after prefill, ``keep(block, row, column) -> bool`` decides."""

    def __init__(self, keep) -> None:
        self.keep = keep

    def scores(self, block, hidden_states, state):
        if not state.past:
            return super().scores(block, hidden_states, state)
        batch, length = hidden_states.shape[:2]
        return torch.tensor(
            [
                [1.0 if self.keep(block, row, state.past + j) else -1.0 for j in range(length)]
                for row in range(batch)
            ]
        )


class FeatureRecorder(StaticRouter):
    """Static decisions; records ``state.features(block)`` each time it is asked."""

    needs_attention = True
    position_only = False  # must be asked at every block

    def __init__(self) -> None:
        self.features: dict[int, Tensor] = {}

    def scores(self, block, hidden_states, state):
        self.features[block] = state.features(block)
        return super().scores(block, hidden_states, state)
