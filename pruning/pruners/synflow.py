"""SynFlow (Tanaka et al. 2020): data-free iterative synaptic-flow pruning.

Each round scores the *linearized* network (docs/algorithms.md §2: no BatchNorm, activations, dropout
or biases, max-pool as average pool) with weights |w| ⊙ mask in float64 and an all-ones input:
R = Σ outputs, score = ∂R/∂w ⊙ |w|. Overflow guard: a first no-grad pass measures R, and the
input is divided by it; R is linear in the input, so every score is scaled by the same constant
and the ranking is unchanged (per-layer rescaling would distort residual sums).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pruning import masks as masks_lib
from pruning.linearize import linearized_copy
from pruning.pruners.common import check_count, current_keep, iterative_order, kept_after_round
from pruning.options import option, validate
from pruning.pruners.plan import Layout, OrderPlan


@dataclass(frozen=True)
class SynflowOptions:
    """SynFlow's options (also those of random/synflow). `input_shape` is an argument of the Python
    call only, for a model without an `input_shape` attribute: registry models all carry theirs."""

    rounds: int = option(100, "data-free scoring rounds on the exponential schedule", ge=1)

    def __post_init__(self) -> None:
        validate(self)


def linearized(model: nn.Module) -> nn.Module:
    """The float64 linearized copy (`pruning.linearize`) with |w| ⊙ mask in every prunable layer."""
    lin, weights = linearized_copy(model, torch.float64)
    with torch.no_grad():
        for w, dense in zip(weights, masks_lib.weights(model).values()):
            w.copy_(dense.abs())
    return lin


def synflow_scores(lin: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Flat (N,) scores ∂R/∂w ⊙ w of a linearized copy (weights already |w| ⊙ mask)."""
    params = [layer.weight for _, layer in masks_lib.prunable_layers(lin)]
    x = torch.ones((1, *input_shape), dtype=torch.float64, device=params[0].device)
    with torch.no_grad():
        r0 = lin(x).sum()
    if not torch.isfinite(r0):
        raise ValueError("synflow: R overflows float64 on this network; cannot score")
    if r0 == 0:  # no input-output path left: every weight scores 0
        return torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    for p in params:
        p.requires_grad_(True)
    grads = torch.autograd.grad(lin(x / r0).sum(), params)
    for p in params:
        p.requires_grad_(False)
    return torch.cat([(g * p).reshape(-1) for g, p in zip(grads, params)])


def input_shape_of(model: nn.Module, input_shape) -> tuple[int, ...]:
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("input_shape: synflow needs the model's (C, H, W); pass input_shape=")
    return tuple(int(d) for d in shape)


def prune_synflow(
    model: nn.Module, sparsity: float, *, data=None, seed: int = 0, rounds: int = SynflowOptions.rounds,
    input_shape=None
) -> OrderPlan:
    """`rounds` rounds of SynFlow on the exponential schedule N(1−s)^(t/T)."""
    check_count("rounds", rounds)
    shape = input_shape_of(model, input_shape)
    layout = Layout.of(model)
    lin = linearized(model)
    layers = [layer for _, layer in masks_lib.prunable_layers(lin)]
    originals = [layer.weight.detach().clone() for layer in layers]

    def score(keep: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            for layer, w, k in zip(layers, originals, layout.split(keep).values()):
                layer.weight.copy_(w * k.to(w.device, w.dtype))
        return synflow_scores(lin, shape)

    schedule = (kept_after_round(t, rounds, layout.n, sparsity) for t in range(1, rounds + 1))
    return iterative_order(layout, current_keep(model), schedule, score, seed)
