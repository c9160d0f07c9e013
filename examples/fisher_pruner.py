"""A pruner of our own, swept against the baselines: Fisher saliency at initialization.

SNIP ranks a weight by |ḡ_i w_i|, the first-order change of the loss when w_i is removed, with ḡ the
gradient averaged over batches. Averaging first lets gradients of opposite sign cancel, so a weight
whose gradient is large but inconsistent scores low. The second-order Taylor term with the empirical
Fisher diagonal for the Hessian (Optimal Brain Damage with F_ii = E_b[g_{b,i}²], as in Theis et al.
2018, "Faster gaze prediction with dense networks and Fisher pruning") keeps the variance:

    s_i = ½ w_i² · mean over batches b of g_{b,i}²      (higher = keep)

This file is all it takes: `register_pruner` makes `fisher` (ranked over all layers) and
`fisher/igq` (the same scores choosing survivors inside IGQ's layer counts) pruners like the
built-ins, for direct and effective targets, specs, `prunetune prune --plugin fisher_pruner` and the
tables. `examples/fisher_sweep.yaml` compares them with random/igq, snip and synflow on digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pruning.masks import prunable_layers
from pruning.options import option, validate
from pruning.pruners import register_pruner


@dataclass(frozen=True)
class FisherOptions:
    """The options a spec sets in `prune.options` (or `prune.options.fisher`), checked like a built-in's."""

    batches: int = option(10, "batches the squared gradients are averaged over", ge=1)
    batch_size: int = option(32, "images per batch: each batch is one sample of the gradient", ge=1)

    def __post_init__(self) -> None:
        validate(self)


def fisher_scores(model: nn.Module, *, data, seed: int, batches: int, batch_size: int) -> list[torch.Tensor]:
    """½ w² · E_b[g_b²] per prunable weight (model order), on `batches` seeded batches of `data`.

    `model` is prunetune's copy (masks baked in, train mode), so forward and backward are free here."""
    weights = [m.weight for _, m in prunable_layers(model)]
    device = weights[0].device
    fisher = [torch.zeros_like(w) for w in weights]
    stream = data.batches(batch_size, shuffle=True, seed=seed, device=device)
    for _, (x, y) in zip(range(batches), stream):
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), weights)
        for acc, g in zip(fisher, grads):
            acc += g.detach() ** 2
    return [0.5 * w.detach() ** 2 * f / batches for w, f in zip(weights, fisher)]


register_pruner("fisher", fisher_scores, needs_data=True, options=FisherOptions,
                doc="Fisher saliency ½ w² E[g²] at initialization, ranked over all layers")
register_pruner("fisher/igq", fisher_scores, needs_data=True, options=FisherOptions, quota="igq",
                doc="Fisher saliency inside IGQ's layer counts")
