"""Magnitude pruning on the current (trained) weights: global, or per layer under a quota.

`lomp` (docs/algorithms.md §7) is global magnitude on a model trained with the L1 term; the trial
does that training, so here it is the same ranking under its own registry name.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pruning import masks as masks_lib
from pruning.pruners.common import current_keep, order_from_scores
from pruning.pruners.plan import Layout, OrderPlan, QuotaPlan, flatten
from pruning.pruners.quota import quota_plan


def prune_global(model: nn.Module, sparsity: float, *, data=None, seed: int = 0) -> OrderPlan:
    """Remove the smallest |w| over all layers at once."""
    scores = flatten(masks_lib.weights(model)).abs()
    return order_from_scores(Layout.of(model), scores, current_keep(model), seed)


def make(scheme: str) -> Callable[..., QuotaPlan]:
    def prune_quota(model: nn.Module, sparsity: float, *, data=None, seed: int = 0) -> QuotaPlan:
        scores = [w.abs() for w in masks_lib.weights(model).values()]
        return quota_plan(model, scheme, scores, sparsity, data=data, seed=seed)

    prune_quota.__doc__ = f"Smallest |w| per layer, layer counts from the {scheme!r} quota."
    return prune_quota
