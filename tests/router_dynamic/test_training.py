"""Straight-through router training: exact forward values, gradients, learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from router import StaticRouter, route, unroute
from router.dynamic import DynamicRouter, HiddenStateRouter
from router.losses import LossWeights, distillation_loss
from router.training import (
    TrainConfig,
    router_losses,
    teacher_outputs,
    train_router,
    training_forward,
)
from search.config import build_config
from search.settings import scorer_settings, training_request
from tests.router_dynamic.conftest import ids
from workers.data import DataSpec, build_sequences
from workers.scoring import Scorer, WindowComparator, merge_stats
from workers.training import HeldoutEvaluator, train_request

ROOT = Path(__file__).resolve().parents[2]

SCHEDULE = [0.0, 0.5, 0.5, 0.5]
WINDOW = 16


@pytest.fixture(scope="module")
def calibration(tiny_models):
    _, tokenizer = tiny_models["llama"]
    spec = DataSpec("builtin:pydoc", "calibration", (64,), 4)
    return build_sequences(spec, tokenizer)


@pytest.mark.parametrize("nested", [False, True], ids=["free", "nested"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("kind", ["dynamic", "hidden_state"])
def test_training_forward_equals_the_routed_inference_forward(tiny_models, family, kind, nested):
    model, _ = tiny_models[family]
    torch.manual_seed(0)
    if kind == "dynamic":
        router = DynamicRouter(nested=nested)
    else:
        router = HiddenStateRouter(model.config.hidden_size, nested=nested)
    routing = route(model, [0.3, 0.5, 0.6, 0.7], router)
    try:
        batch = ids(2, 29)
        with torch.no_grad():
            expected = model(batch).logits[:, -WINDOW:]
        output = training_forward(model, routing, batch, WINDOW)
    finally:
        unroute(model)
    torch.testing.assert_close(output.logits, expected, atol=1e-5, rtol=1e-5)
    # The dynamic router routes block 0 by static priority: no learned decision there.
    first = 1 if kind == "dynamic" else 0
    assert [d.block for d in output.decisions] == list(range(first, 4))


def test_gradients_reach_the_router_and_never_the_model(tiny_llama, calibration):
    model, _ = tiny_llama
    model.requires_grad_(True)
    try:
        torch.manual_seed(0)
        router = DynamicRouter()
        train_router(
            model,
            router,
            SCHEDULE,
            calibration,
            config=TrainConfig(steps=2, window=WINDOW, progress=False),
        )
        assert all(p.grad is None for p in model.parameters())
        assert all(p.requires_grad for p in model.parameters())  # flags restored
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in router.parameters())
    finally:
        model.requires_grad_(False)


def test_every_loss_has_a_gradient_path_to_the_router(tiny_llama, calibration):
    model, _ = tiny_llama
    torch.manual_seed(0)
    router = DynamicRouter()
    batch = torch.stack(calibration)[:, :-1]
    teacher = teacher_outputs(model, batch, WINDOW)
    routing = route(model, SCHEDULE, router)
    try:
        output = training_forward(model, routing, batch, WINDOW)
    finally:
        unroute(model)
    losses = router_losses(output, *teacher, SCHEDULE, two_sided=True)
    losses["mse"] = router_losses(output, *teacher, SCHEDULE, distill="mse")["distill"]
    assert losses["mse"].item() == pytest.approx(
        torch.nn.functional.mse_loss(output.hidden, teacher[1]).item()
    )
    for name, loss in losses.items():
        router.zero_grad()
        loss.backward(retain_graph=True)
        assert router.mlp[0].weight.grad.abs().sum() > 0, name


def _distillation(model, router, batch, teacher_log_probs):
    routing = route(model, SCHEDULE, router)
    try:
        with torch.no_grad():
            return distillation_loss(
                training_forward(model, routing, batch, WINDOW).logits, teacher_log_probs
            ).item()
    finally:
        unroute(model)


@pytest.mark.parametrize("key_gate", [False, True], ids=["residual-gate", "key-gate"])
def test_training_lowers_the_distillation_loss(tiny_llama, calibration, key_gate):
    model, _ = tiny_llama
    batch = torch.stack(calibration)[:, :-1]
    teacher_log_probs, _ = teacher_outputs(model, batch, WINDOW)
    torch.manual_seed(2)
    router = DynamicRouter()
    before = _distillation(model, router, batch, teacher_log_probs)
    config = TrainConfig(
        steps=40,
        lr=1e-2,
        window=WINDOW,
        progress=False,
        weights=LossWeights(guide=0.0, sparse=0.0),
        key_gate=key_gate,
    )
    history = train_router(model, router, SCHEDULE, calibration, config=config)
    after = _distillation(model, router, batch, teacher_log_probs)
    assert after < 0.5 * before
    assert history["distill"][0] == pytest.approx(before, rel=1e-4)


def test_given_teacher_log_probs_train_exactly_like_computed_ones(tiny_llama, calibration):
    """The scorer's dense window log-probs replace training's own teacher pass: the same
    history and router, step by step (``on_step`` sees each one)."""
    model, _ = tiny_llama
    comparator = WindowComparator(model, calibration, WINDOW, batch_size=2)
    given = comparator.teacher_log_probs()
    assert given is not None
    config = TrainConfig(steps=3, batch_size=2, window=WINDOW, progress=False)
    routers, histories, steps = [], [], []
    for teachers in (None, given):
        torch.manual_seed(0)
        routers.append(DynamicRouter())
        histories.append(
            train_router(
                model, routers[-1], SCHEDULE, calibration, None, config, teachers, steps.append
            )
        )
    assert histories[0] == histories[1] and steps == [1, 2, 3, 1, 2, 3]
    for name, tensor in routers[0].state_dict().items():
        assert torch.equal(tensor, routers[1].state_dict()[name]), name
    assert WindowComparator(model, calibration, WINDOW, teacher_top_k=8).teacher_log_probs() is None


def test_history_records_steps_and_heldout_evaluations(tiny_llama, calibration):
    model, tokenizer = tiny_llama
    heldout = build_sequences(DataSpec("builtin:pydoc", "heldout", (48,), 2), tokenizer)
    torch.manual_seed(0)
    config = TrainConfig(
        steps=4,
        window=WINDOW,
        eval_every=3,
        progress=False,
        weights=LossWeights(guide=1.0, guide_steps=2),
    )
    comparator = WindowComparator(model, heldout, WINDOW)
    evaluate = HeldoutEvaluator(comparator, SCHEDULE)
    history = train_router(model, DynamicRouter(), SCHEDULE, calibration, evaluate, config)
    assert all(len(history[key]) == 4 for key in ("loss", "guide", "sparse", "distill"))
    assert history["lambda_guide"] == [1.0, 0.5, 0.0, 0.0]
    assert history["eval_step"] == [0, 3, 4]
    assert all(0.0 <= top1 <= 1.0 for top1 in history["heldout_top1"])
    assert history["heldout_sparsity"][-1] == pytest.approx(3 * 0.5 / 4, abs=0.02)
    assert evaluate.last.kl == history["heldout_kl"][-1]
    assert not hasattr(model, "_ftprune_routing")  # left unrouted


@pytest.mark.parametrize("init", ["static", "random"])
def test_a_static_start_begins_at_the_static_routers_heldout_kl(init):
    """The run config's ``init: static`` reaches the router a worker trains: its first
    held-out measurement (before any step) is the static router's (up to the rounding of
    the attention-measuring kernel); a random start's is not."""
    config = build_config(
        ROOT / "configs/tiny.yaml",
        router_training={"steps": 2, "batch_size": 2, "eval_every": 2, "init": init},
    )
    scorer = Scorer(scorer_settings(config))
    schedule = [0.0, 0.5, 0.5, 0.5]
    state = train_request(scorer, training_request(config, schedule, show_progress=False))
    stats = scorer.comparator("heldout").compare(schedule, StaticRouter())
    static = merge_stats(list(stats.values())).metrics().kl
    first = state.history["heldout_kl"][0]
    assert (first == pytest.approx(static, rel=1e-4)) == (init == "static"), (first, static)


def test_a_nested_run_config_trains_a_nested_router():
    config = build_config(
        ROOT / "configs/tiny.yaml",
        monotone=True,
        router_training={"steps": 1, "batch_size": 2, "nested": True},
    )
    scorer = Scorer(scorer_settings(config))
    state = train_request(
        scorer, training_request(config, [0.0, 0.3, 0.5, 0.5], show_progress=False)
    )
    assert state.fields["nested"] is True and state.router().nested is True
