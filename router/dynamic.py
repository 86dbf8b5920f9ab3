"""Learned token routers: FTP's dynamic router and a hidden-state baseline.

Both implement the :class:`~router.routers.TokenRouter` seam and are ``nn.Module`` s, so
they train with ``router.training`` and save with ``router.checkpoint``. Scores are keep
logits: sigmoid(score) is the router's keep probability. At prefill the engine keeps the
top k_i scores of each row (plus its first and last token), so a block's budget holds
exactly whatever the router outputs. A router made with ``nested=True`` routes with nested
selection (see :mod:`router.engine`): a token an earlier block skipped stays skipped.

:class:`DynamicRouter` is FTP's router: ONE small MLP shared by all blocks, reading four
per-token factors from the forward's :class:`~router.state.ForwardState`
(``state.features(block)``): position j/(L-1), the latest attention the token received,
its attention rank among the row's tokens in [0, 1], and the block's sparsity s_i. Any
subset of the factors can be used (the ablation drops one). Block 0 has no earlier
attention to read, so it is routed by FTP's static position priority (the
:class:`~router.routers.StaticRouter` scores), never by the MLP.

:class:`HiddenStateRouter` is the baseline: one MLP over the block's input hidden state,
shared by all blocks; it reads no attention, so its routed model runs on plain SDPA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, cast

import torch
from torch import Tensor, nn

from router.routers import StaticRouter

if TYPE_CHECKING:
    from router.state import ForwardState

FACTORS = ("position", "attention", "rank", "sparsity")
HIDDEN_UNITS = 64
STATIC_SHARPNESS = 10.0  # keep logit per unit of (position - sparsity) at a static start


def _mlp(inputs: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Linear(hidden, 1))


def _input_weight(mlp: nn.Sequential) -> Tensor:
    """The MLP's first weight: its device and dtype are the router's."""
    return cast(nn.Linear, mlp[0]).weight


class DynamicRouter(nn.Module):
    """FTP's dynamic router: MLP(factors -> ``hidden`` -> 1 keep logit), shared by blocks.

    Guarantees: the MLP reads only the listed ``factors`` (in :data:`FACTORS` order);
    its inputs are detached from the language model (gradients reach the router only
    through its own scores); block 0 gets static position-priority scores.
    """

    needs_attention = True
    columns: Tensor  # buffer: the indices of the chosen factors among FACTORS

    def __init__(
        self, factors: Sequence[str] = FACTORS, hidden: int = HIDDEN_UNITS, nested: bool = False
    ) -> None:
        super().__init__()
        self.nested = nested
        unknown = sorted(set(factors) - set(FACTORS))
        if unknown or not factors:
            raise ValueError(
                f"router factors must be a non-empty subset of "
                f"{', '.join(FACTORS)}; got {list(factors)}"
            )
        self.factors = tuple(name for name in FACTORS if name in factors)
        self.hidden = hidden
        columns = torch.tensor([FACTORS.index(name) for name in self.factors])
        self.register_buffer("columns", columns, persistent=False)
        self.mlp = _mlp(len(self.factors), hidden)

    @torch.no_grad()
    def start_at_static(self, sharpness: float = STATIC_SHARPNESS) -> "DynamicRouter":
        """Set the MLP so that its keep logit is exactly ``sharpness`` · (position − s_i)
        (− 0 when the router does not read the sparsity), and return the router.

        From there the router keeps exactly the static router's tokens at prefill (the
        logit rises with position, so the top k_i are the static router's; block 0 is
        static anyway), so training starts at the baseline rather than at a random ranking.
        Two hidden units carry the line (GELU(z) − GELU(−z) = z exactly); every other
        unit keeps its random input weights and starts with output weight 0, so it joins
        as soon as training moves its output weight. Raises ValueError without the
        ``position`` factor.
        """
        if "position" not in self.factors or self.hidden < 2:
            raise ValueError("a static start needs the position factor and 2 hidden units")
        first, last = cast(nn.Linear, self.mlp[0]), cast(nn.Linear, self.mlp[2])
        line = torch.zeros(len(self.factors))
        line[self.factors.index("position")] = 1.0
        if "sparsity" in self.factors:
            line[self.factors.index("sparsity")] = -1.0
        first.weight[:2] = torch.stack([line, -line]).to(first.weight)
        first.bias[:2] = 0.0
        last.weight.zero_()
        last.weight[0, :2] = torch.tensor([sharpness, -sharpness]).to(last.weight)
        last.bias.zero_()
        return self

    def scores(self, block: int, hidden_states: Tensor, state: "ForwardState") -> Tensor:
        """(batch, new tokens) keep logits of ``block``; static priority at block 0."""
        if block == 0:
            return StaticRouter().scores(block, hidden_states, state)
        features = state.features(block).detach().index_select(-1, self.columns)
        weight = _input_weight(self.mlp)
        return self.mlp(features.to(weight.device, weight.dtype)).squeeze(-1).float()


class HiddenStateRouter(nn.Module):
    """Baseline router: MLP(LayerNorm(block input hidden state) -> ``hidden`` -> 1),
    shared by all blocks. Guarantees: reads no attention (``needs_attention = False``);
    its input is detached from the language model, as for :class:`DynamicRouter`."""

    needs_attention = False

    def __init__(self, hidden_size: int, hidden: int = HIDDEN_UNITS, nested: bool = False) -> None:
        super().__init__()
        self.nested = nested
        self.hidden_size = hidden_size
        self.hidden = hidden
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False)
        self.mlp = _mlp(hidden_size, hidden)

    def scores(self, block: int, hidden_states: Tensor, state: "ForwardState") -> Tensor:
        """(batch, new tokens) keep logits read from the block's input hidden states."""
        weight = _input_weight(self.mlp)
        inputs = self.norm(hidden_states.detach().to(weight.device, weight.dtype))
        return self.mlp(inputs).squeeze(-1).float()
