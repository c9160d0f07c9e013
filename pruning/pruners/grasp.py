"""GraSP (Wang et al. 2020): keep the weights whose removal least reduces gradient flow.

Score S = −w ⊙ (H g) with g the mean loss gradient and H the Hessian, both with respect to the
prunable weights; the weights with the *highest* S are pruned. H g is a Hessian-vector product
by double backward: ∂/∂w ⟨∇L(w), g⟩ with g held fixed, accumulated batch by batch so that only one
batch's graph is alive at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pruning.pruners.common import (
    current_keep,
    mean_over_batches,
    order_from_scores,
    prunable_params,
    scores_on_batches,
)
from pruning.pruners.plan import Layout, OrderPlan
from pruning.pruners.snip import mean_gradient


def hessian_gradient_product(clone: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """H g for the mean loss over `batches` (H and g of the same mean loss)."""
    g = mean_gradient(clone, batches)

    def product(params: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        grads = torch.autograd.grad(F.cross_entropy(clone(x), y), params, create_graph=True)
        return torch.autograd.grad(sum((gi * fixed).sum() for gi, fixed in zip(grads, g)), params)

    return mean_over_batches(clone, batches, product)


def grasp_scores(clone: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Flat (N,) GraSP scores S = −w ⊙ (H g); the highest are pruned first."""
    hg = hessian_gradient_product(clone, batches)
    return torch.cat([(-p * h).reshape(-1) for p, h in zip(prunable_params(clone), hg)])


def prune_grasp(
    model: nn.Module, sparsity: float, *, data=None, seed: int = 0, batches: int = 10, batch_size: int = 128
) -> OrderPlan:
    scores = scores_on_batches(model, data, grasp_scores, seed=seed, batches=batches, batch_size=batch_size)
    return order_from_scores(Layout.of(model), -scores, current_keep(model), seed)  # highest S first
