"""Quota plans: per-layer kept counts from a quota scheme, survivors chosen inside each layer.

Used by random/<scheme> (survivors at random) and magnitude/<scheme> (largest |w| survive). For
the effective target (docs/algorithms.md §3) the plan is bisected over the direct removal k: the layer
counts follow the quota function near sparsity k/N (`quotas.nested_kept_counts`, never growing
with k) and each layer's removal order is fixed once per seed, so a larger k removes a superset.

The snip / synflow quotas (docs/algorithms.md §4) are the per-layer sparsities of a real SNIP / SynFlow
mask at the same target: they run a pruner, so they live here (`mask_quotas`) and not in the pure
`pruning.quotas`, which only maps layer shapes and a sparsity to densities.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from pruning import masks as masks_lib
from pruning import quotas as quotas_lib
from pruning.pruners.common import ascending, check_options, current_keep
from pruning.pruners.plan import Layout, OrderPlan, QuotaPlan
from pruning.pruners.snip import prune_snip
from pruning.pruners.synflow import prune_synflow

KeptFor = Callable[[int], list[int]]

# the pruner whose mask each mask-based quota reads (keys: `quotas.MASK_QUOTAS`)
MASK_QUOTA_PRUNERS: dict[str, Callable[..., OrderPlan]] = {"snip": prune_snip, "synflow": prune_synflow}


def counts_from_order(plan: OrderPlan) -> KeptFor:
    """Per-layer survivors of a global order after its first k removals (snip/synflow quotas)."""
    layer = plan.layout.layer_of()[plan.order]
    counts = plan.layout.counts

    def kept_for(k: int) -> list[int]:
        removed = torch.bincount(layer[:k], minlength=len(counts))
        return [n - int(r) for n, r in zip(counts, removed)]

    return kept_for


def mask_quota_counts(scheme: str, model: nn.Module, sparsity: float, *, data=None, seed: int = 0,
                      **options) -> KeptFor:
    """k -> per-layer kept counts of a real SNIP / SynFlow mask (the snip and synflow quotas).

    SNIP is global, so its prefixes give the mask at every k; SynFlow is run to `sparsity` and its
    removal order (§3) gives nested counts up to there and beyond. `options` go to the pruner
    (snip: batches=, batch_size=; synflow: rounds=, input_shape=); SNIP needs `data`.
    """
    if scheme not in MASK_QUOTA_PRUNERS:
        raise ValueError(f"mask quota {scheme!r}: choose from {', '.join(MASK_QUOTA_PRUNERS)}")
    fn = MASK_QUOTA_PRUNERS[scheme]
    check_options(scheme, fn, options)
    return counts_from_order(fn(model, masks_lib.check_sparsity(sparsity), data=data, seed=seed, **options))


def mask_quotas(scheme: str, model: nn.Module, sparsity: float, *, data=None, seed: int = 0,
                **options) -> list[float]:
    """Layer sparsities s_l (in `prunable_layers` order) of the snip / synflow quota on `model` at
    `sparsity`: those of the real pruner's mask with round((1 − s)·N) survivors."""
    counts = masks_lib.layer_counts(model)
    n = sum(counts)
    kept = mask_quota_counts(scheme, model, sparsity, data=data, seed=seed, **options)(
        n - quotas_lib.n_kept(n, masks_lib.check_sparsity(sparsity)))
    return [1.0 - k / c for k, c in zip(kept, counts)]


def scheme_counts(
    scheme: str, model: nn.Module, sparsity: float, *, data, seed: int, **options
) -> tuple[KeptFor, KeptFor, int]:
    """(exact counts, nested counts, the largest reachable k) for quota `scheme` on `model`.

    Both map k removed to kept counts per layer; see `QuotaPlan`. For the mask-based quotas the
    counts come from one global order, so they are exact and nested at once.
    """
    layout = Layout.of(model)
    if scheme in quotas_lib.MASK_QUOTAS:
        counts = mask_quota_counts(scheme, model, sparsity, data=data, seed=seed, **options)
        return counts, counts, layout.n
    if options:
        raise ValueError(f"quota {scheme!r}: unexpected option(s) {sorted(options)}")
    shapes = [tuple(s) for s in layout.shapes]
    quotas_lib.check_applicable(scheme, shapes)
    vgg = quotas_lib.is_vgg_style(model)
    n = layout.n
    sizes = np.array(layout.counts, dtype=np.float64)

    def kept_for(k: int) -> list[int]:
        d = quotas_lib.densities(scheme, shapes, k / n, vgg_style=vgg)
        return quotas_lib.kept_counts(d, layout.counts, k / n)

    def kept_at(s: float) -> np.ndarray:
        return sizes * np.array(quotas_lib.densities(scheme, shapes, s, vgg_style=vgg))

    max_s = (n - 1) / n
    if scheme == "smart_ratio" and len(shapes) > 1:  # the classifier keeps a fixed 30%
        max_s = min(max_s, 1.0 - quotas_lib.SMART_RATIO_LAST_KEEP * layout.counts[-1] / n)

    def nested_for(k: int) -> list[int]:
        return quotas_lib.nested_kept_counts(kept_at, n - k, max_s)

    max_k = n - int(np.floor(kept_at(max_s) + 0.5).sum())
    return kept_for, nested_for, max_k


def quota_plan(
    model: nn.Module,
    scheme: str,
    layer_scores: list[torch.Tensor],
    sparsity: float,
    *,
    data,
    seed: int,
    **options,
) -> QuotaPlan:
    """A quota plan with each layer's survivors ranked by `layer_scores` (ascending = removed first).

    Weights already pruned in the model head every layer's order: they stay pruned unless the quota
    gives a layer more survivors than it still has.
    """
    layout = Layout.of(model)
    keep = layout.split(current_keep(model))
    orders = []
    for i, (score, k) in enumerate(zip(layer_scores, keep.values())):
        score = score.detach().reshape(-1).to("cpu", torch.float64).clone()
        score[~k.reshape(-1)] = -torch.inf
        orders.append(ascending(score, seed * 1_000_003 + i))
    kept_for, nested_for, max_k = scheme_counts(scheme, model, sparsity, data=data, seed=seed, **options)
    return QuotaPlan(layout, tuple(orders), kept_for, nested_for, max_k)
