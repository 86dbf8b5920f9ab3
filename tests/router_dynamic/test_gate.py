"""The key-side gate: DynamicViT's renormalised formula, exactly, in values and gradients."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from router.attention import routed_sdpa
from router.engine import causal_mask
from router.gate import KeyGate

BATCH, HEADS, KV_HEADS, LENGTH, DIM = 2, 4, 2, 13, 8


def _reference(query, key, value, gate, window):
    """p_qj = exp(s_qj - m) G_qj / sum_k exp(s_qk - m) G_qk, G_qq = 1, over the causal
    (windowed) keys, with autograd through every term: (batch, L, heads, dim)."""
    groups = HEADS // KV_HEADS
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = query @ key.transpose(-1, -2) / math.sqrt(DIM)
    cols = torch.arange(LENGTH)
    visible = cols <= cols[:, None]
    if window is not None:
        visible = visible & (cols[:, None] - cols < window)
    eye = torch.eye(LENGTH, dtype=gate.dtype)
    gates = gate[:, None, None, :] * (1 - eye) + eye  # (B, 1, q, k)
    scores = scores.masked_fill(~visible, -math.inf)
    top = scores.max(dim=-1, keepdim=True).values.detach()
    weights = (scores - top).exp() * gates
    probs = weights / weights.sum(dim=-1, keepdim=True)
    return (probs @ value).transpose(1, 2)


def _inputs(seed):
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()

    query = draw(BATCH, HEADS, LENGTH, DIM)
    key, value = draw(BATCH, KV_HEADS, LENGTH, DIM), draw(BATCH, KV_HEADS, LENGTH, DIM)
    hard = torch.rand(BATCH, LENGTH, generator=generator) < 0.5
    hard[:, [0, -1]] = True
    prob = torch.rand(BATCH, LENGTH, generator=generator, dtype=torch.float64).requires_grad_()
    probe = torch.randn(BATCH, LENGTH, HEADS, DIM, generator=generator, dtype=torch.float64)
    return query, key, value, hard, prob, probe


@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize("chunk", [256, 5])
def test_the_gated_call_equals_the_renormalised_formula(window, chunk):
    """Through the routed attention function (GQA, float64): the output is the masked SDPA
    output bit for bit, and the gradients to the gate, queries, keys and values are those of
    the literal formula with G = hard + prob - prob.detach()."""
    query, key, value, hard, prob, probe = _inputs(seed=chunk + (window or 0))
    cols = torch.arange(LENGTH)[None]
    mask = causal_mask(cols, cols, hard, window)
    module = SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS, is_causal=True)
    plain, _ = routed_sdpa(module, query, key, value, mask, scaling=DIM**-0.5)
    gate = KeyGate(hard, prob - prob.detach(), window, chunk=chunk)
    gated, _ = routed_sdpa(module, query, key, value, mask, scaling=DIM**-0.5, ftprune_gate=gate)
    assert torch.equal(gated, plain)
    expected = _reference(query, key, value, hard + prob - prob.detach(), window)
    torch.testing.assert_close(gated, expected, rtol=1e-12, atol=1e-12)
    leaves = (prob, query, key, value)
    got = torch.autograd.grad((gated * probe).sum(), leaves)
    want = torch.autograd.grad((expected * probe).sum(), leaves)
    for name, a, b in zip(("gate", "query", "key", "value"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    assert bool((got[0][~hard] != 0).all())  # every skipped key: the last query sees it


def test_a_key_far_above_the_row_gets_a_finite_gradient():
    """A skipped key whose score exceeds the attended keys' by more than float32's exp range
    gets a finite, positive weight in the gradient (capped exponent), not inf or NaN."""
    query, key, value, hard, prob, probe = _inputs(seed=3)
    query, key, value, prob, probe = (t.detach().float() for t in (query, key, value, prob, probe))
    query[:, :, 5], key[:, :, 1] = 1.0, 100.0  # s = 283 for (5, 1): key 1 dominates row 5
    hard[:, 1] = False
    cols = torch.arange(LENGTH)[None]
    module = SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS, is_causal=True)
    prob.requires_grad_()
    gate = KeyGate(hard, prob - prob.detach(), None)
    gated, _ = routed_sdpa(
        module, query, key, value, causal_mask(cols, cols, hard, None), ftprune_gate=gate
    )
    (grad,) = torch.autograd.grad((gated * probe).sum(), prob)
    assert bool(grad.isfinite().all()) and bool((grad[:, 1] != 0).all())
