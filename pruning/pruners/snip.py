"""SNIP (Lee et al. 2019): connection sensitivity |ḡ ⊙ w| at initialization, and its iterative form.

ḡ is the mean gradient of the cross-entropy loss over several batches (one batch is noisy);
`F.cross_entropy(logits, targets)` — logits first (the authors' code swapped them). The iterative
variant re-scores the masked network on a fresh batch every round and removes weights on the
exponential schedule; removed weights are never revived.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pruning.masks import device_of
from pruning.pruners.common import (
    batch_stream,
    check_count,
    current_keep,
    iterative_order,
    kept_after_round,
    mean_over_batches,
    order_from_scores,
    prunable_params,
    scores_on_batches,
    scoring_copy,
    set_keep,
    take,
)
from pruning.options import option, validate
from pruning.pruners.plan import Layout, OrderPlan


@dataclass(frozen=True)
class SnipOptions:
    """SNIP's options (also those of random/snip, whose layer quotas are a SNIP mask's)."""

    batches: int = option(10, "batches the mean gradient ḡ is taken over", ge=1)
    batch_size: int = option(128, "images per scoring batch", ge=1)

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class IterativeSnipOptions:
    """Iterative SNIP's options."""

    rounds: int = option(300, "pruning rounds on the exponential schedule, a fresh batch each", ge=1)
    batch_size: int = option(128, "images per scoring batch", ge=1)

    def __post_init__(self) -> None:
        validate(self)


def mean_gradient(clone: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """Mean over `batches` of ∂L/∂w for each prunable weight of `clone` (an unmasked scoring copy)."""
    return mean_over_batches(clone, batches,
                             lambda params, x, y: torch.autograd.grad(F.cross_entropy(clone(x), y), params))


def snip_scores(clone: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Flat (N,) |ḡ ⊙ w| of the copy's current (masked) weights."""
    grads = mean_gradient(clone, batches)
    return torch.cat([(g * p).abs().reshape(-1) for g, p in zip(grads, prunable_params(clone))])


def prune_snip(
    model: nn.Module, sparsity: float, *, data=None, seed: int = 0, batches: int = SnipOptions.batches,
    batch_size: int = SnipOptions.batch_size
) -> OrderPlan:
    """One-shot SNIP with the gradient averaged over `batches` batches."""
    scores = scores_on_batches(model, data, snip_scores, seed=seed, batches=batches, batch_size=batch_size)
    return order_from_scores(Layout.of(model), scores, current_keep(model), seed)


def prune_snip_iterative(
    model: nn.Module, sparsity: float, *, data=None, seed: int = 0, rounds: int = IterativeSnipOptions.rounds,
    batch_size: int = IterativeSnipOptions.batch_size
) -> OrderPlan:
    """Iterative SNIP: `rounds` rounds, survivors N(1−s)^(t/T) after round t, a fresh batch each."""
    check_count("rounds", rounds)
    check_count("batch_size", batch_size)
    layout = Layout.of(model)
    clone = scoring_copy(model)
    originals = [p.detach().clone() for p in prunable_params(clone)]
    stream = batch_stream(data, batch_size=batch_size, seed=seed, device=device_of(model))

    def score(keep: torch.Tensor) -> torch.Tensor:
        set_keep(clone, originals, layout, keep)  # masked weights: removed ones score 0
        return snip_scores(clone, take(stream, 1))

    schedule = (kept_after_round(t, rounds, layout.n, sparsity) for t in range(1, rounds + 1))
    return iterative_order(layout, current_keep(model), schedule, score, seed)
