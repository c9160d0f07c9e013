"""random/<scheme>: layer counts from a quota scheme, survivors uniformly at random in each layer.

Why random scores and not `randperm` per call: one fixed random score per weight and seed makes the
masks nested in the number removed (a smaller removal is a subset), which the effective-sparsity
bisection needs; drawing afresh at every k would not be.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pruning.pruners.plan import Layout, QuotaPlan
from pruning.pruners.quota import quota_plan


def random_scores(layout: Layout, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=g, dtype=torch.float64) for n in layout.counts]


def make(scheme: str) -> Callable[..., QuotaPlan]:
    def prune_random(model: nn.Module, sparsity: float, *, data=None, seed: int = 0, **options) -> QuotaPlan:
        scores = random_scores(Layout.of(model), seed)
        return quota_plan(model, scheme, scores, sparsity, data=data, seed=seed, **options)

    prune_random.__doc__ = f"Random survivors per layer, layer counts from the {scheme!r} quota."
    return prune_random
