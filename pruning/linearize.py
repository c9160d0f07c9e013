"""The linearized copy of a network (docs/algorithms.md §2 step 1), shared by effective sparsity and SynFlow.

Both measure the network as a sum over input→output paths of products of non-negative weights, so
both need the same copy: BatchNorm (and the other normalizations), activations and dropout become
`Identity`, biases are dropped and max-pooling becomes average pooling over the same windows (a
max-pool routes the gradient to one element only: it would make a dense VGG look 6.5% sparse);
residual additions, average pools, flatten, option-A shortcuts, upsampling and any other
parameter-free module stay. They must be linear with non-negative coefficients: a *functional*
max-pool or sigmoid inside `forward` is not seen by this module surgery and gives wrong answers.

What differs between the two is only what the prunable weights are set to, so that stays with each
caller: effective sparsity writes each layer's 0/1 mask and guards every layer's output against
overflow (`pruning.sparsity`); SynFlow writes |w| ⊙ mask and rescales the input once
(`pruning.pruners.synflow`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import prune

from pruning import masks as masks_lib

# Modules that become the identity: connectivity is a property of the weights, and these only
# transform units one by one (activations, dropout) or re-centre/re-scale them (normalization).
IDENTITY_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.dropout._DropoutNd,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.Softmax, nn.LogSoftmax,
)


def _check_max_pool(name: str, m: nn.Module) -> None:
    if m.return_indices:
        raise ValueError(f"layer {name!r}: max-pool with return_indices=True is not supported")
    dilation = m.dilation if isinstance(m.dilation, tuple) else (m.dilation,)
    if any(d != 1 for d in dilation):
        raise ValueError(f"layer {name!r}: max-pool dilation {m.dilation}: only 1 is supported")


def _avg_like(avg: type[nn.Module]) -> Callable[[str, nn.Module], nn.Module]:
    def swap(name: str, m: nn.Module) -> nn.Module:
        _check_max_pool(name, m)
        return avg(m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode)

    return swap


def _adaptive_avg_like(avg: type[nn.Module]) -> Callable[[str, nn.Module], nn.Module]:
    def swap(name: str, m: nn.Module) -> nn.Module:
        if m.return_indices:
            raise ValueError(f"layer {name!r}: max-pool with return_indices=True is not supported")
        return avg(m.output_size)

    return swap


# Max-pool -> average pool over the *same* windows, so that every element of a window is on a path.
POOL_SWAPS: dict[type[nn.Module], Callable[[str, nn.Module], nn.Module]] = {
    nn.MaxPool1d: _avg_like(nn.AvgPool1d),
    nn.MaxPool2d: _avg_like(nn.AvgPool2d),
    nn.MaxPool3d: _avg_like(nn.AvgPool3d),
    nn.AdaptiveMaxPool1d: _adaptive_avg_like(nn.AdaptiveAvgPool1d),
    nn.AdaptiveMaxPool2d: _adaptive_avg_like(nn.AdaptiveAvgPool2d),
    nn.AdaptiveMaxPool3d: _adaptive_avg_like(nn.AdaptiveAvgPool3d),
}


def _replacement(name: str, module: nn.Module) -> nn.Module | None:
    """The module that stands for `module` in the linearized copy (None: keep it)."""
    if isinstance(module, IDENTITY_TYPES):
        return nn.Identity()
    swap = POOL_SWAPS.get(type(module))
    return swap(name, module) if swap is not None else None


def _unmask(module: nn.Module) -> None:
    """Drop torch's pruning re-parametrization (hooks, `*_orig`, `*_mask`, the computed tensor)."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, prune.BasePruningMethod):
            name = hook._tensor_name
            del module._forward_pre_hooks[key]
            module._parameters.pop(name + "_orig", None)
            module._buffers.pop(name + "_mask", None)
            module.__dict__.pop(name, None)


def _placeholders(model: nn.Module) -> dict[int, object]:
    """deepcopy memo that swaps the tensors the copy throws away for empty ones.

    Why: the copy replaces prunable weights and drops biases and normalization layers, so copying
    their values would only cost memory; and after a forward with autograd on, a masked layer's
    `weight` is a non-leaf tensor, which `copy.deepcopy` refuses to copy.
    """
    prunable = {id(m) for _, m in masks_lib.prunable_layers(model)}
    memo: dict[int, object] = {}
    for module in model.modules():
        if id(module) in prunable or isinstance(module, IDENTITY_TYPES):
            tensors = [*module._parameters.values(), *module._buffers.values(),
                       *(v for v in vars(module).values() if isinstance(v, torch.Tensor))]
            for t in tensors:
                if t is not None:
                    memo[id(t)] = torch.empty(0)
    return memo


def linearized_copy(model: nn.Module, dtype: torch.dtype) -> tuple[nn.Module, list[nn.Parameter]]:
    """A linearized deep copy of `model` in `dtype`, in eval mode, and its prunable weights.

    Every prunable layer (model order) has a fresh all-zero `weight` parameter of the dense shape on
    the device of `model`'s parameters and no bias; the caller writes the values. No parameter
    requires grad. `model` is not modified. A non-prunable module with parameters of its own (other
    than the normalizations and activations above) is refused: it has no linear stand-in.
    """
    shapes = [tuple(getattr(m, "weight_orig", m.weight).shape) for _, m in masks_lib.prunable_layers(model)]
    device = masks_lib.device_of(model)
    net = copy.deepcopy(model, _placeholders(model))
    # replace every reference (remove_duplicate=False: torchvision reuses one `relu` module, and a
    # module shared under two names must be replaced under both)
    for name, module in list(net.named_modules(remove_duplicate=False)):
        if not name:
            continue
        new = _replacement(name, module)
        if new is not None:
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent), child, new)
    layers = masks_lib.prunable_layers(net)
    prunable_ids = {id(m) for _, m in layers}
    for name, module in net.named_modules():
        if id(module) in prunable_ids:
            continue
        own = [p for p, _ in module.named_parameters(recurse=False)]
        if own:
            raise ValueError(
                f"layer {name!r} ({type(module).__name__}) has parameters {own}: the linearized copy "
                f"(effective sparsity, SynFlow) supports Conv*d/Linear plus parameter-free or "
                f"normalization/activation layers"
            )
    weights = []
    for (_, module), shape in zip(layers, shapes):
        _unmask(module)
        module.register_parameter("bias", None)
        module.register_parameter("weight", nn.Parameter(torch.zeros(shape, dtype=dtype, device=device)))
        weights.append(module.weight)
    net.to(dtype).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, weights
