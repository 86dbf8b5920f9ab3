"""FTP's three router-training losses, as pure functions of tensors.

    L = λ_g · L_guide + λ_s · L_sparse + λ_d · L_distill

- ``guide``: binary cross-entropy between the router's keep probabilities and the static
  router's keep mask for the same block and sparsity; its weight λ_g decays over training
  (:func:`guide_weight`), so the static priority only seeds the router.
- ``sparse``: sum over blocks of max(s_i - achieved_i, 0), where achieved_i = 1 - mean keep
  probability is a differentiable stand-in for the block's sparsity (one-sided, as in the
  paper: keeping fewer tokens than required is not penalized); ``two_sided`` uses
  |s_i - achieved_i| instead.
- ``distill``: KL(dense || routed) of the next-token distributions at the scored window
  positions (the last T), averaged over positions exactly like the search's window KL;
  :func:`hidden_mse` is the alternative on final hidden states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LossWeights:
    """λ_g at step 0 (decaying to 0 over ``guide_steps``), λ_s and λ_d."""

    guide: float = 1.0
    guide_steps: int = 100
    sparse: float = 1.0
    distill: float = 1.0


def guide_weight(step: int, start: float, steps: int) -> float:
    """λ_g at ``step``: linear decay from ``start`` at step 0 to 0 at ``steps`` and after."""
    if steps <= 0:
        return 0.0
    return start * max(0.0, 1.0 - step / steps)


def guide_loss(keep_prob: Tensor, static_keep: Tensor) -> Tensor:
    """Mean BCE between keep probabilities and the static keep mask (same shape)."""
    return F.binary_cross_entropy(keep_prob, static_keep.to(keep_prob.dtype))


def achieved_sparsity(keep_prob: Tensor) -> Tensor:
    """Differentiable sparsity of one block: 1 - mean keep probability."""
    return 1.0 - keep_prob.mean()


def sparsity_loss(targets: Sequence[float], achieved: Tensor, two_sided: bool = False) -> Tensor:
    """sum_i max(s_i - achieved_i, 0) (``two_sided``: sum_i |s_i - achieved_i|) over the
    blocks listed; ``achieved`` is a (blocks,) tensor."""
    gap = torch.as_tensor(targets, dtype=achieved.dtype, device=achieved.device) - achieved
    return (gap.abs() if two_sided else gap.clamp(min=0.0)).sum()


def distillation_loss(routed_logits: Tensor, teacher_log_probs: Tensor) -> Tensor:
    """Mean over positions of KL(teacher || routed); both (..., vocab), the teacher as
    log-probabilities, the routed model as logits."""
    routed = routed_logits.float().log_softmax(-1).flatten(0, -2)
    teacher = teacher_log_probs.float().flatten(0, -2)
    return F.kl_div(routed, teacher, log_target=True, reduction="batchmean")


def hidden_mse(routed_hidden: Tensor, dense_hidden: Tensor) -> Tensor:
    """Mean squared error between routed and dense final hidden states."""
    return F.mse_loss(routed_hidden.float(), dense_hidden.float())


def total_loss(
    guide: Tensor, sparse: Tensor, distill: Tensor, lambda_guide: float, weights: LossWeights
) -> Tensor:
    """λ_g · guide + λ_s · sparse + λ_d · distill, with λ_g given for the current step."""
    return lambda_guide * guide + weights.sparse * sparse + weights.distill * distill
