"""The key-side straight-through gate of router training (DynamicViT's renormalised form).

In block i of the training forward every key j carries a gate G_j = hard_j + π_j − π_j.detach()
(π_j the router's keep probability, ``hard`` the block's 0/1 keep decision), and attention
reads

    p_qj = exp(s_qj − m_q) · G_qj / Σ_k exp(s_qk − m_q) · G_qk,     G_qj = G_j for j ≠ q, G_qq = 1,

over the keys q may see (causal, sliding window). A query always sees itself, as in the
engine's masks. With G hard this is exactly the masked attention the forward already computes
(skipped keys get weight 0, kept keys their softmax over the kept keys): the value of a gated
attention call is the plain SDPA output, bit for bit. Its gradient adds, for every key j,

    ∂L/∂G_j = Σ_{q ≠ j, heads} w_qj · ⟨∂L/∂o_q, v_j − o_q⟩,      w_qj = exp(s_qj − m_q) / Z_q,

Z_q = Σ_k exp(s_qk − m_q) · G_qk: for a skipped key, the first-order change of the loss
from admitting it as a key of that block (its keys and values exist: the training forward
runs every block on all tokens). The gradients with respect to queries, keys and values at
G hard are those of the masked attention, which SDPA's own backward already gives.

:class:`KeyGate` therefore runs as a custom autograd function around the SDPA output: the
forward returns the output unchanged, the backward passes the output's gradient through and
computes ∂L/∂G from the saved queries, keys, values and output, in chunks of query rows (at
most (batch, heads, chunk, keys) scores at a time, in float32 or the inputs' wider dtype).
m_q is the row maximum over the keys the query attends to (kept keys and itself), so
Z_q >= 1; a skipped key's exponent s_qj − m_q is capped at :data:`EXPONENT_CAP` (its forward
weight is 0 either way: only the gradient of a key that would outweigh the row's whole
attention by e^50 is clipped).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

# Largest exponent s_qj − m_q a skipped key's gradient weight uses (e^50 ≈ 5e21: finite in
# float32, and a key that far above the row's maximum is beyond any first-order estimate).
EXPONENT_CAP = 50.0


class KeyGate:
    """One block's key gate, passed to the attention call as ``ftprune_gate``.

    ``hard`` (batch, L) is the block's keep decision; ``straight`` (batch, L) is π − π.detach()
    (value 0, gradient to the router), zero wherever the decision carries no gradient;
    ``window`` is the block's sliding window (None: full causal). The call must be causal
    self-attention over the same L unpadded tokens (queries = keys = columns 0..L-1).
    """

    def __init__(self, hard: Tensor, straight: Tensor, window: int | None, chunk: int = 256):
        self.hard = hard
        self.straight = straight
        self.window = window
        self.chunk = chunk

    def attend(
        self, output: Tensor, query: Tensor, key: Tensor, value: Tensor, kwargs: dict[str, Any]
    ) -> Tensor:
        """``output`` (batch, L, heads, dim), SDPA's masked attention of ``query`` (batch,
        heads, L, dim) over ``key``/``value`` (batch, kv_heads, L, dim), returned with the same
        values and the gate's gradient attached (see the module docstring)."""
        length = self.hard.shape[1]
        if query.shape[2] != length or key.shape[2] != length:
            raise ValueError("a key gate needs self-attention over the block's L tokens")
        if kwargs.get("dropout") or kwargs.get("softcap") is not None:
            raise ValueError("a key gate needs attention without dropout or softcap")
        if kwargs.get("position_bias") is not None:
            raise ValueError("a key gate needs attention without a position bias")
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        result: Tensor = _GateFunction.apply(
            output, self.straight, query.detach(), key.detach(), value.detach(), self, scaling
        )
        return result


class _GateFunction(torch.autograd.Function):
    """Identity on the attention output; the backward adds ∂L/∂G for ``straight``."""

    @staticmethod
    def forward(
        ctx: Any,
        output: Tensor,
        straight: Tensor,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        gate: KeyGate,
        scaling: float,
    ) -> Tensor:
        ctx.save_for_backward(query, key, value, output.detach())
        ctx.gate, ctx.scaling, ctx.straight_dtype = gate, scaling, straight.dtype
        return output.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        query, key, value, output = ctx.saved_tensors
        gate: KeyGate = ctx.gate
        gate_grad = None
        if ctx.needs_input_grad[1]:
            gate_grad = gate_gradient(
                query, key, value, output, grad, gate.hard, gate.window, ctx.scaling, gate.chunk
            ).to(ctx.straight_dtype)
        return grad, gate_grad, None, None, None, None, None


def gate_gradient(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    output: Tensor,
    grad: Tensor,
    hard: Tensor,
    window: int | None,
    scaling: float,
    chunk: int = 256,
) -> Tensor:
    """∂L/∂G_j (batch, L) of causal self-attention with key gates at ``hard``, from query
    (B, H, L, d), key and value (B, Hkv, L, d; query head h reads kv head h // (H / Hkv)),
    the attention output and its gradient (B, L, H, d)."""
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    dtype = torch.promote_types(query.dtype, torch.float32)
    keys_t = key.to(dtype).transpose(-1, -2)  # (B, Hkv, d, L)
    values_t = value.to(dtype).transpose(-1, -2)
    grad_h = grad.to(dtype).transpose(1, 2)  # (B, H, L, d)
    cols = torch.arange(length, device=query.device)
    total = torch.zeros(batch, length, dtype=dtype, device=query.device)
    for start in range(0, length, chunk):
        part = slice(start, start + chunk)
        rows = cols[part]
        size = rows.shape[0]
        scores = _grouped(query[:, :, part].to(dtype) * scaling, keys_t)  # (B, Hkv, g, c, L)
        visible = cols <= rows[:, None]  # (c, L)
        if window is not None:
            visible = visible & (rows[:, None] - cols < window)
        itself = cols == rows[:, None]
        attended = (visible & (hard[:, None, :] | itself))[:, None, None]  # (B, 1, 1, c, L)
        top = scores.masked_fill(~attended, -math.inf).amax(dim=-1, keepdim=True)
        weight = (scores - top).clamp(max=EXPONENT_CAP).exp().masked_fill(~visible, 0.0)
        weight = weight / weight.masked_fill(~attended, 0.0).sum(dim=-1, keepdim=True)
        weight = weight.masked_fill(itself, 0.0)  # a query's own gate is fixed at 1
        chunk_grad = grad_h[:, :, part]  # (B, H, c, d)
        along_values = _grouped(chunk_grad, values_t)  # <dL/do_q, v_j>
        along_output = (chunk_grad * output[:, part].to(dtype).transpose(1, 2)).sum(dim=-1)
        along_output = along_output.view(batch, kv_heads, groups, size, 1)  # <dL/do_q, o_q>
        total += (weight * (along_values - along_output)).sum(dim=(1, 2, 3))
    return total


def _grouped(rows: Tensor, keys_t: Tensor) -> Tensor:
    """rows (B, H, c, d) against transposed keys (B, Hkv, d, L): (B, Hkv, groups, c, L),
    query head h reading kv head h // groups."""
    batch, heads, size, dim = rows.shape
    kv_heads = keys_t.shape[1]
    groups = heads // kv_heads
    product = torch.matmul(rows.reshape(batch, kv_heads, groups * size, dim), keys_t)
    return product.view(batch, kv_heads, groups, size, keys_t.shape[-1])
