"""Masks on prunable layers, owned by `torch.nn.utils.prune`.

Why torch's pruning utilities and not a second copy of the masks: `prune.custom_from_mask` keeps the
mask as the `weight_mask` buffer and the dense values as the `weight_orig` parameter, and recomputes
`weight = weight_orig * weight_mask` before every forward. Gradients of pruned entries are therefore
exactly zero, the masked weight stays exactly zero through any optimizer step, and the mask travels
with `state_dict`.

Prunable weights (docs/algorithms.md §1) are the weights of every Conv*d and Linear layer, in
`named_modules()` order. Biases and BatchNorm parameters are never masked and never counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import prune

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every prunable layer, in model order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


def device_of(model: nn.Module) -> torch.device:
    """Where `model` computes: the device of its first parameter (CPU when it has none)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def is_masked(module: nn.Module) -> bool:
    return hasattr(module, "weight_mask")


def _dense_weight(module: nn.Module) -> torch.Tensor:
    """The parameter that holds the weight values (`weight_orig` once masked)."""
    return module.weight_orig if is_masked(module) else module.weight


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Set the masks of the named layers (others are untouched).

    A layer already masked gets its `weight_mask` buffer overwritten in place (so optimizers and
    hooks keep their references); an unmasked one is wrapped by `prune.custom_from_mask`.
    """
    layers = dict(prunable_layers(model))
    unknown = set(masks) - set(layers)
    if unknown:
        raise ValueError(f"masks for unknown layers {sorted(unknown)}: prunable are {sorted(layers)}")
    for name, mask in masks.items():
        module = layers[name]
        w = _dense_weight(module)
        if tuple(mask.shape) != tuple(w.shape):
            raise ValueError(f"{name}: mask {tuple(mask.shape)} != weight {tuple(w.shape)}")
        mask = mask.to(device=w.device, dtype=w.dtype)
        if is_masked(module):
            module.weight_mask.copy_(mask)
        else:
            prune.custom_from_mask(module, "weight", mask)
        with torch.no_grad():  # keep `module.weight` current even before the next forward
            module.weight = module.weight_orig * module.weight_mask


def ensure_masked(model: nn.Module) -> None:
    """Give every prunable layer an all-ones mask, so that state_dicts of masked models load."""
    for _, module in prunable_layers(model):
        if not is_masked(module):
            prune.identity(module, "weight")


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Boolean mask per prunable layer (all True for an unmasked layer)."""
    out = {}
    for name, module in prunable_layers(model):
        if is_masked(module):
            out[name] = module.weight_mask.detach() != 0
        else:
            out[name] = torch.ones_like(module.weight, dtype=torch.bool)
    return out


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Current (masked) weight of every prunable layer, detached."""
    out = {}
    for name, module in prunable_layers(model):
        w = _dense_weight(module).detach()
        out[name] = w * module.weight_mask if is_masked(module) else w
    return out


def remove_masks(model: nn.Module) -> None:
    """Make the pruning permanent: `weight` becomes a plain parameter with zeros where pruned."""
    for _, module in prunable_layers(model):
        if is_masked(module):
            prune.remove(module, "weight")


def load_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a state dict saved from a masked or unmasked model into `model`.

    A masked model's state has `*.weight_orig` and `*.weight_mask` keys; the target is wrapped with
    identity masks first so that the keys line up, then the stored masks overwrite them.
    """
    if any(k.endswith(".weight_mask") for k in state):
        ensure_masked(model)
        model.load_state_dict(state)
        for _, module in prunable_layers(model):
            with torch.no_grad():
                module.weight = module.weight_orig * module.weight_mask
    else:
        remove_masks(model)
        model.load_state_dict(state)


def copy_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Overwrite weight values from an (unmasked or masked) state dict, keeping the current masks.

    This is rewinding: survivors take their values from `state` (e.g. the initialization), pruned
    entries stay masked. Non-prunable parameters and buffers (biases, BatchNorm) are copied too.
    """
    plain = {}
    for k, v in state.items():
        if k.endswith(".weight_mask"):
            continue
        plain[k[: -len("_orig")] if k.endswith(".weight_orig") else k] = v
    layer_names = {n for n, _ in prunable_layers(model)}
    own = dict(model.named_parameters())
    own.update(dict(model.named_buffers()))
    with torch.no_grad():
        for key, value in plain.items():
            owner, _, leaf = key.rpartition(".")
            if leaf == "weight" and owner in layer_names:
                target = _dense_weight(model.get_submodule(owner))
            elif key in own:
                target = own[key]
            else:
                raise KeyError(f"copy_weights: {key!r} not in model")
            target.copy_(value)
        for _, module in prunable_layers(model):
            if is_masked(module):
                module.weight = module.weight_orig * module.weight_mask


def layer_counts(model: nn.Module) -> list[int]:
    """n_l: prunable weights per layer, in model order."""
    return [_dense_weight(m).numel() for _, m in prunable_layers(model)]


def count_prunable(model: nn.Module) -> int:
    """N: the number of prunable weights."""
    return sum(layer_counts(model))


def direct_sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Pruned / total over all layers, count-weighted (never a mean of layer ratios)."""
    total = sum(m.numel() for m in masks.values())
    if total == 0:
        raise ValueError("direct_sparsity: no prunable weights")
    kept = sum(int(m.count_nonzero()) for m in masks.values())
    return (total - kept) / total


def compression(sparsity: float) -> float:
    """1 / (1 − sparsity); `inf` for a fully pruned (or disconnected) network."""
    if not 0.0 <= sparsity <= 1.0 or math.isnan(sparsity):
        raise ValueError(f"sparsity {sparsity}: must be in [0, 1]")
    return math.inf if sparsity >= 1.0 else 1.0 / (1.0 - sparsity)


def check_sparsity(sparsity: float, field: str = "sparsity") -> float:
    """Refuse a target outside [0, 1): a sparsity of 1 removes every weight and is never a target."""
    s = float(sparsity)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"{field} {sparsity}: must be in [0, 1)")
    return s
