"""Direct and effective sparsity (docs/algorithms.md §1–§2, *Connectivity Matters*).

A prunable weight is *effective* iff it lies on a path from an input unit to an output unit through
unpruned weights, at the resolution of single pixels. We find all such weights with one forward and
one backward pass of a *linearized copy* of the model:

1. copy the model linearized (`pruning.linearize`, shared with SynFlow): BatchNorm, activations
   and dropout become `Identity`, biases are dropped and max-pooling becomes average pooling with
   the same window (max-pool would route the gradient to one element only and make a dense VGG
   look 6.5% sparse); residual additions, average pools, flatten, option-A shortcuts, upsampling
   and any other parameter-free module stay as they are;
2. every prunable weight := its 0/1 mask;
3. feed one all-ones input, R = Σ outputs;
4. effective = mask ∧ (∂R/∂w > 0).

Every value is ≥ 0, so ∂R/∂w is a sum of positive path products: non-zero exactly on path members.

Overflow guard. Path counts grow exponentially with depth (1e29 in float32 on deep nets, and
`inf · 0 = NaN` would count pruned weights as alive). Dividing each layer by one layer-wide scalar,
e.g. its max, prevents overflow but can still *underflow*: a unit fed by a single path sits next to
units fed by astronomically many. So, on top of float64, at every prunable layer's output we divide
each element by its own (detached, positive) value in the forward pass and each gradient element by
its own value in the backward pass: activations and output-gradients become exact 0/1 reachability
indicators. That is a positive rescaling, so every zero pattern (and thus the result) is that of the
plain ∂R/∂w, while every intermediate value stays moderate: between two guards a value is a sum over
one layer's fan-in (forward) or fan-out (backward), residual chains and pool windows (dense
ResNet-50: activations ≤ 7, gradients ≤ 4,608), and never below the pooling factors: no overflow and
no underflow at any depth. Rounding a sum of non-negative terms never turns it into zero, so the zero patterns are
exact in any floating-point type that holds such values.

Hence float32 gives bit-identical masks (tested against the oracle) at about half the cost on CPU;
float64 stays the default because docs/algorithms.md §2 prescribes it, and callers that evaluate many
masks (the bisection) may pass `dtype=torch.float32`.

`EffectiveMaskEvaluator` builds the copy once and re-evaluates it for any candidate masks: the
effective-target bisection of the pruners (§3) calls it ~20 times per search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pruning import masks as masks_lib
from pruning.linearize import linearized_copy

__all__ = [
    "EffectiveMaskEvaluator",
    "LayerSparsity",
    "SparsityReport",
    "effective_masks",
    "effective_masks_from",
    "report_from_masks",
    "sparsity_report",
]

# --- the linearized copy, guarded ----------------------------------------------------------------

class _Reachability(torch.autograd.Function):
    """Forward x -> 1[x > 0]; backward g -> 1[g > 0]: the per-element positive rescaling guard.

    Both are divisions of a non-negative tensor by its own detached positive entries, so zero
    patterns are kept and values stay small however deep the network.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x.sign()  # x ≥ 0, so sign(x) = 1[x > 0] in one pass, same dtype

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad.sign()


def _guard_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return _Reachability.apply(output)


def _linearize(model: nn.Module, dtype: torch.dtype) -> tuple[nn.Module, list[nn.Parameter]]:
    """The linearized copy (`pruning.linearize`) with the per-element guard on every prunable layer's
    output, and its prunable weights (model order, in `dtype`) ready to take masks and gradients."""
    net, weights = linearized_copy(model, dtype)
    for _, module in masks_lib.prunable_layers(net):
        module.register_forward_hook(_guard_hook)
    for w in weights:
        w.requires_grad_(True)
    return net, weights


def _input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError(
            "input_shape: required (C, H, W) or (features,) when the model has no `input_shape` "
            "attribute (pruning.models.build sets it)"
        )
    shape = tuple(int(d) for d in shape)
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"input_shape {shape}: must be positive sizes, e.g. (3, 32, 32)")
    return shape


class EffectiveMaskEvaluator:
    """Effective masks of `model`'s architecture for any candidate masks, reusing one linearized copy.

    Why a class: building the copy (a deepcopy plus module surgery) costs more than a pass, and the
    effective-target bisection (§3) evaluates ~⌈log2 N⌉ candidate masks of the same model. Weight
    values of `model` are irrelevant (each weight is replaced by its mask); `model` is not modified.
    The passes run on the device of `model`'s parameters.
    """

    def __init__(self, model: nn.Module, *, input_shape: Sequence[int] | None = None,
                 dtype: torch.dtype = torch.float64):
        if dtype not in (torch.float64, torch.float32):
            raise ValueError(f"dtype {dtype}: choose from torch.float64, torch.float32")
        device = masks_lib.device_of(model)
        self.names: list[str] = [n for n, _ in masks_lib.prunable_layers(model)]
        if not self.names:
            raise ValueError("model: has no prunable (Conv*d / Linear) layers")
        self.input_shape = _input_shape(model, input_shape)
        self._net, self._weights = _linearize(model, dtype)
        self._ones = torch.ones((1, *self.input_shape), dtype=dtype, device=device)

    def _check(self, masks: Mapping[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if n not in masks]
        unknown = sorted(set(masks) - set(self.names))
        if missing or unknown:
            raise ValueError(
                f"masks: keys must be the prunable layers {self.names}; missing {missing}, "
                f"unknown {unknown}"
            )
        for name, w in zip(self.names, self._weights):
            if tuple(masks[name].shape) != tuple(w.shape):
                raise ValueError(f"masks[{name!r}]: shape {tuple(masks[name].shape)} != weight "
                                 f"{tuple(w.shape)}")

    def __call__(self, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Boolean effective mask per layer (same keys, shapes and devices as `masks`)."""
        self._check(masks)
        kept = [m if m.dtype == torch.bool else m != 0 for m in (masks[n] for n in self.names)]
        with torch.no_grad():
            for k, w in zip(kept, self._weights):
                w.copy_(k)
        with torch.enable_grad():
            out = self._net(self._ones)
            if not isinstance(out, torch.Tensor):
                raise ValueError(f"model output: expected a tensor, got {type(out).__name__}")
            r = out.sum()
            alive = bool(r > 0) and r.requires_grad
            grads = (torch.autograd.grad(r, self._weights, allow_unused=True) if alive
                     else [None] * len(self._weights))
        result = {}
        for name, k, g in zip(self.names, kept, grads):
            result[name] = k & (g > 0).to(k.device) if g is not None else torch.zeros_like(k)
        return result

    def effective_sparsity(self, masks: Mapping[str, torch.Tensor]) -> float:
        """Count-weighted effective sparsity of `masks`: the quantity the bisection compares."""
        return masks_lib.direct_sparsity(self(masks))


def effective_masks_from(model: nn.Module, masks: Mapping[str, torch.Tensor], *,
                         input_shape: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Effective masks for candidate `masks` on `model`'s architecture, without applying them.

    One-shot convenience; for repeated calls build an `EffectiveMaskEvaluator` once.
    """
    return EffectiveMaskEvaluator(model, input_shape=input_shape)(masks)


def effective_masks(model: nn.Module, *,
                    input_shape: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Effective masks of `model` under its current masks (`pruning.masks.get_masks`)."""
    return effective_masks_from(model, masks_lib.get_masks(model), input_shape=input_shape)


# --- reports -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSparsity:
    """One row of the `layers` table (sweeps/schema.py LAYERS)."""

    layer_index: int          # model order
    layer: str                # module name, e.g. "features.0"
    n_weights: int
    direct_sparsity: float
    effective_sparsity: float


@dataclass(frozen=True)
class SparsityReport:
    """Count-weighted sparsities over all prunable weights (names as in the `trials` table)."""

    n_prunable: int
    direct_sparsity: float
    effective_sparsity: float
    direct_compression: float     # 1 / (1 − s); inf when s == 1
    effective_compression: float
    layers: tuple[LayerSparsity, ...]

    def trial_columns(self) -> dict[str, float | int]:
        """The `trials` columns this report fills."""
        return {"n_prunable": self.n_prunable, "direct_sparsity": self.direct_sparsity,
                "effective_sparsity": self.effective_sparsity,
                "direct_compression": self.direct_compression,
                "effective_compression": self.effective_compression}

    def layer_rows(self) -> list[dict[str, float | int | str]]:
        """The `layers` columns, one dict per prunable layer in model order."""
        return [vars(layer).copy() for layer in self.layers]


def report_from_masks(masks: Mapping[str, torch.Tensor],
                      effective: Mapping[str, torch.Tensor]) -> SparsityReport:
    """Direct and effective sparsity from a mask dict and its effective masks (model order)."""
    if not masks:
        raise ValueError("masks: empty; expected one mask per prunable layer")
    if list(masks) != list(effective):
        raise ValueError(f"effective: keys {list(effective)} must equal the masks' keys {list(masks)}")
    layers = []
    for i, (name, m) in enumerate(masks.items()):
        e = effective[name]
        if e.shape != m.shape:
            raise ValueError(f"effective[{name!r}]: shape {tuple(e.shape)} != mask {tuple(m.shape)}")
        if bool(((e != 0) & (m == 0)).any()):
            raise ValueError(f"effective[{name!r}]: marks pruned weights as effective; it must be "
                             f"a subset of the mask")
        n = m.numel()
        layers.append(LayerSparsity(
            layer_index=i, layer=name, n_weights=n,
            direct_sparsity=(n - int(m.count_nonzero())) / n,
            effective_sparsity=(n - int(e.count_nonzero())) / n,
        ))
    direct = masks_lib.direct_sparsity(masks)
    eff = masks_lib.direct_sparsity(effective)
    return SparsityReport(
        n_prunable=sum(layer.n_weights for layer in layers),
        direct_sparsity=direct,
        effective_sparsity=eff,
        direct_compression=masks_lib.compression(direct),
        effective_compression=masks_lib.compression(eff),
        layers=tuple(layers),
    )


def sparsity_report(model: nn.Module, *, input_shape: Sequence[int] | None = None) -> SparsityReport:
    """Direct and effective sparsity of `model` under its current masks."""
    masks = masks_lib.get_masks(model)
    return report_from_masks(masks, effective_masks_from(model, masks, input_shape=input_shape))

