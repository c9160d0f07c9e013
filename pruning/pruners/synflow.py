"""SynFlow (Tanaka et al. 2020): data-free iterative synaptic-flow pruning.

Each round scores the *linearized* network (ALGORITHMS.md §2: no BatchNorm, activations, dropout
or biases, max-pool as average pool) with weights |w| ⊙ mask in float64 and an all-ones input:
R = Σ outputs, score = ∂R/∂w ⊙ |w|. Overflow guard: a first no-grad pass measures R, and the
input is divided by it; R is linear in the input, so every score is scaled by the same constant
and the ranking is unchanged (per-layer rescaling would distort residual sums).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from pruning import masks as masks_lib
from pruning import sparsity as sparsity_lib
from pruning.pruners.common import check_count, current_keep, iterative_order, kept_after_round
from pruning.pruners.plan import Layout, OrderPlan


def _stand_in(name: str, module: nn.Module) -> nn.Module | None:
    """The linear replacement of a module (None: keep it), the same as effective sparsity's copy."""
    if isinstance(module, sparsity_lib.IDENTITY_TYPES):
        return nn.Identity()
    swap = sparsity_lib.POOL_SWAPS.get(type(module))
    return swap(name, module) if swap is not None else None


def linearized(model: nn.Module) -> nn.Module:
    """A float64 linear copy of `model` with |w| in every prunable layer and no biases."""
    lin = copy.deepcopy(model)
    masks_lib.remove_masks(lin)
    for name, module in list(lin.named_modules()):
        for child_name, child in list(module.named_children()):
            replacement = _stand_in(f"{name}.{child_name}", child)
            if replacement is not None:
                setattr(module, child_name, replacement)
    for _, layer in masks_lib.prunable_layers(lin):
        if layer.bias is not None:
            layer.register_parameter("bias", None)
    lin = lin.double().eval()
    for p in lin.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        for _, layer in masks_lib.prunable_layers(lin):
            layer.weight.abs_()
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
    model: nn.Module, sparsity: float, *, data=None, seed: int = 0, rounds: int = 100, input_shape=None
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
