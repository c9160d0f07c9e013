"""LAMP (Lee et al. 2021): layer-adaptive magnitude scores, pruned globally.

Within a layer sort w² ascending; the score of weight u is w_u² / Σ_{v ≥ u} w_v² (the sum over u
and every weight after it in that order). The largest weight of a layer scores 1, so no layer is
ever emptied before the others are nearly so: layerwise balance comes from the score itself.
"""

from __future__ import annotations

import torch
from torch import nn

from pruning import masks as masks_lib
from pruning.pruners.common import current_keep, order_from_scores
from pruning.pruners.plan import Layout, OrderPlan


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP score of every entry of one layer's weight (same shape); 0/0 (all-zero tail) -> 0."""
    w2 = weight.detach().reshape(-1).to(torch.float64) ** 2
    idx = torch.argsort(w2, stable=True)
    sorted_w2 = w2[idx]
    tail = torch.flip(torch.cumsum(torch.flip(sorted_w2, [0]), 0), [0])  # Σ_{v ≥ u}
    score_sorted = torch.where(tail > 0, sorted_w2 / tail.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    out = torch.empty_like(w2)
    out[idx] = score_sorted
    return out.reshape(weight.shape)


def prune_lamp(model: nn.Module, sparsity: float, *, data=None, seed: int = 0) -> OrderPlan:
    scores = torch.cat([lamp_scores(w).reshape(-1) for w in masks_lib.weights(model).values()])
    return order_from_scores(Layout.of(model), scores, current_keep(model), seed)
