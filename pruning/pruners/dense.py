"""`dense`: the unpruned reference; a plan whose only sensible point is k = 0."""

from __future__ import annotations

import torch
from torch import nn

from pruning.pruners.plan import Layout, OrderPlan


def prune_dense(model: nn.Module, sparsity: float, *, data=None, seed: int = 0) -> OrderPlan:
    if sparsity != 0:
        raise ValueError(f"sparsity {sparsity}: the 'dense' pruner only takes sparsity 0")
    layout = Layout.of(model)
    return OrderPlan(layout, torch.arange(layout.n), max_removal=0)
