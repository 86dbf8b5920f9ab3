"""The key gate in the training forward: the forward is unchanged and every never-computed
token's decision gets a gradient. (Whether that gradient predicts admitting the token is a
measurement, scripts/key_gate_linearisation.py: on smollm2-135m it does not.)"""

from __future__ import annotations

import copy

import pytest
import torch

from router import route, unroute
from router.dynamic import DynamicRouter
from router.training import teacher_outputs, training_forward
from tests.router_dynamic.admission import gradient_coverage
from tests.router_dynamic.conftest import ids

WINDOW = 16
FREE = [0.3, 0.5, 0.6, 0.7]  # non-decreasing: a nested router routes it too


@pytest.fixture(scope="module")
def double_models(tiny_models):
    """float64 copies of the tiny llama and qwen2 models."""
    return {family: copy.deepcopy(tiny_models[family][0]).double() for family in ("llama", "qwen2")}


def _router(init: str, nested: bool) -> DynamicRouter:
    torch.manual_seed(0)
    router = DynamicRouter(nested=nested).double()
    return router.start_at_static() if init == "static" else router


@pytest.mark.parametrize("nested", [False, True], ids=["free", "nested"])
@pytest.mark.parametrize("init", ["static", "random"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_key_gate_leaves_the_forward_unchanged(double_models, family, init, nested):
    """float64: with the key gate the training forward's logits are those without it (the
    masked computation), bit for bit, with the same decisions; both equal the engine's
    routed inference output up to the float32 arithmetic of its attention probe, which
    computes the window's rows."""
    model = double_models[family]
    router = _router(init, nested)
    batch = ids(2, 29)
    routing = route(model, FREE, router)
    try:
        with torch.no_grad():
            expected = model(batch).logits[:, -WINDOW:]
        gated = training_forward(model, routing, batch, WINDOW)
        plain = training_forward(model, routing, batch, WINDOW, key_gate=False)
    finally:
        unroute(model)
    assert model.config._attn_implementation == "sdpa"  # restored after the forward
    assert torch.equal(gated.logits, plain.logits)
    torch.testing.assert_close(gated.logits, expected, rtol=1e-6, atol=1e-6)
    assert [d.block for d in gated.decisions] == [1, 2, 3]
    for a, b in zip(gated.decisions, plain.decisions, strict=True):
        assert torch.equal(a.hard, b.hard)


@pytest.mark.parametrize(
    ("init", "nested", "schedule"),
    [
        ("static", False, [0.5] * 4),
        ("random", False, FREE),
        ("random", True, FREE),
    ],
)
def test_every_never_computed_token_gets_a_gradient(tiny_models, init, nested, schedule):
    """Distillation loss only: the decisions of tokens that their block and every later one
    skip (outside the window) get exactly 0 from the residual gate alone and a non-zero
    gradient from the key gate (at least 95% of them)."""
    model, _ = tiny_models["llama"]
    router = _router(init, nested).float()
    batch = ids(2, 64, seed=1)
    teacher, _ = teacher_outputs(model, batch, WINDOW)
    shares = {}
    for key_gate in (False, True):
        router.zero_grad()
        try:
            routing = route(model, schedule, router)
            coverage = gradient_coverage(model, routing, batch, teacher, key_gate)
        finally:
            unroute(model)
        assert coverage.total >= 40
        shares[key_gate] = coverage.reached / coverage.total
        if not key_gate:
            assert coverage.reached == 0 and bool((coverage.grads == 0).all())
    assert shares[True] >= 0.95, shares
