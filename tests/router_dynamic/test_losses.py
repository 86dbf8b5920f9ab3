"""The three losses against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from router.losses import (
    LossWeights,
    achieved_sparsity,
    distillation_loss,
    guide_loss,
    guide_weight,
    hidden_mse,
    sparsity_loss,
    total_loss,
)


def test_guide_loss_is_bce_against_the_static_mask():
    prob = torch.tensor([[0.5, 0.8]])
    static = torch.tensor([[True, False]])
    # -(ln 0.5 + ln 0.2) / 2
    assert guide_loss(prob, static).item() == pytest.approx((math.log(2) + math.log(5)) / 2)


def test_guide_weight_decays_linearly_to_zero():
    assert [guide_weight(step, 2.0, 10) for step in (0, 5, 10, 20)] == [2.0, 1.0, 0.0, 0.0]
    assert guide_weight(0, 2.0, 0) == 0.0


def test_sparsity_loss_is_one_sided_unless_asked():
    prob = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    assert achieved_sparsity(prob).item() == pytest.approx(0.5)
    achieved = torch.tensor([0.4, 0.5], requires_grad=True)
    one_sided = sparsity_loss([0.5, 0.3], achieved)
    assert one_sided.item() == pytest.approx(0.1)
    one_sided.backward()
    assert achieved.grad.tolist() == [-1.0, 0.0]  # exceeding the target costs nothing
    assert sparsity_loss([0.5, 0.3], achieved, two_sided=True).item() == pytest.approx(0.3)


def test_distillation_loss_is_mean_kl_dense_to_routed():
    teacher = torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]).log()
    routed_logits = torch.tensor([[[0.25, 0.75], [0.9, 0.1]]]).log() + 3.0  # logits: any shift
    kl_first = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert distillation_loss(routed_logits, teacher).item() == pytest.approx(kl_first / 2, rel=1e-5)
    assert distillation_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_hidden_mse_and_total():
    assert hidden_mse(torch.tensor([1.0, 2.0]), torch.zeros(2)).item() == pytest.approx(2.5)
    weights = LossWeights(guide=9.0, sparse=3.0, distill=5.0)
    total = total_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0), 0.5, weights)
    assert total.item() == pytest.approx(0.5 * 1 + 3 * 2 + 5 * 4)
