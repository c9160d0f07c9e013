"""Exact Hessian-vector products of ReLU MLPs under cross-entropy, by Pearlmutter's R-operator.

Why a second HVP path next to `torch.func`: on fully connected nets (LeNet-300-100, FC5, FC12, the
limit paper's subjects) the products are a handful of matrix multiplications, and the generic
transforms spend about half their time on batched (bmm) forms of them and on separate elementwise
adds. Written out, B directions share every multiplication with a cached matrix as *one* large GEMM
(the probe dimension sits next to the sample dimension, layout (N, B, d)), and the sum of the two
terms of each product rule is accumulated inside the GEMM (`addmm`). The arithmetic is the same as
forward-over-reverse AD; `tests/test_hvp_mlp.py` checks it against `torch.func.hessian`.

The equations, for the summed loss L = Σ_n CE(z_L[n], y_n) of the chain z_l = h_{l-1} W_lᵀ + b_l,
h_l = relu(z_l), and one direction (V_l, c_l) (a dot marks the directional derivative):

    forward    ż_l = ḣ_{l-1} W_lᵀ + h_{l-1} V_lᵀ + c_l,   ḣ_l = ż_l ⊙ [z_l > 0],   ḣ_0 = 0
    output     g_L = softmax(z_L) − onehot(y),  ġ_L = p ⊙ ż_L − p (pᵀ ż_L)      (per sample)
    backward   ġ_{l-1} = (ġ_l W_l + g_l V_l) ⊙ [z_{l-1} > 0]
    products   (H v)_{W_l} = ġ_lᵀ h_{l-1} + g_lᵀ ḣ_{l-1},   (H v)_{b_l} = Σ_n ġ_l

ReLU's second derivative is zero wherever it exists, and at z = 0 the mask [z > 0] is PyTorch's own
convention, so the result is the Hessian autograd differentiates. A layer masked by
`torch.nn.utils.prune` has W = W_orig ⊙ M: directions and products of `weight_orig` are masked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import prune

# Leaves that do nothing to a 2-D activation in eval mode: skipped (Flatten only before the first Linear).
_PASS_THROUGH = (nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class _Layer:
    """One Linear of the chain: its parameter-name prefix, which weight name it has, and what follows."""

    prefix: str
    weight: str                 # "weight" or "weight_orig" (masked)
    relu: bool                  # followed by a ReLU
    has_bias: bool


def mlp_chain(model: nn.Module, loss_fn, input_ndim: int = 2) -> list[_Layer] | str:
    """The model's Linear layers if it is an `nn.Sequential` chain [Flatten] (Linear [ReLU])* Linear
    with cross-entropy loss, else a sentence saying why not (the R-operator path does not apply).

    `input_ndim`: dimensions of an input batch; without a Flatten it must be 2 (a Linear applied to
    the last axis of a 3-D batch is not an MLP on samples)."""
    if loss_fn not in (None, F.cross_entropy):
        return "the loss is not torch.nn.functional.cross_entropy"
    if not isinstance(model, nn.Sequential):
        return f"the model is a {type(model).__name__}, not an nn.Sequential chain"
    layers: list[_Layer] = []
    for name, module in model.named_children():
        if module._forward_hooks or module._backward_hooks or any(
                not isinstance(h, prune.BasePruningMethod) for h in module._forward_pre_hooks.values()):
            return f"layer {name} has hooks other than torch.nn.utils.prune masks"
        if isinstance(module, nn.Flatten):
            if layers or module.start_dim != 1 or module.end_dim != -1:
                return f"layer {name}: only a Flatten(1, -1) before the first Linear is supported"
            input_ndim = 2
        elif isinstance(module, nn.Linear):
            if not layers and input_ndim != 2:
                return f"layer {name}: {input_ndim}-D inputs reach the first Linear without a Flatten"
            if layers and not layers[-1].relu:
                return f"layer {name}: two Linear layers without a ReLU between them"
            masked = hasattr(module, "weight_mask")
            layers.append(_Layer(f"{name}.", "weight_orig" if masked else "weight", False, module.bias is not None))
        elif isinstance(module, nn.ReLU):
            if not layers or layers[-1].relu:
                return f"layer {name}: a ReLU must follow a Linear"
            layers[-1] = _Layer(layers[-1].prefix, layers[-1].weight, True, layers[-1].has_bias)
        elif not isinstance(module, _PASS_THROUGH):
            return f"layer {name} is a {type(module).__name__} (supported: Flatten, Linear, ReLU, Identity, Dropout)"
    if not layers or layers[-1].relu:
        return "the chain must end with a Linear layer (the logits)"
    return layers


class MLPHVP:
    """Cached R-operator HVPs of one batch: the forward and first backward are computed once, each
    call costs six GEMMs per layer for all B directions together."""

    def __init__(self, layers: Sequence[_Layer], values: Mapping[str, Tensor], names: Sequence[str],
                 x: Tensor, y: Tensor, workspace: dict[tuple, Tensor] | None = None):
        """`workspace`: buffers shared by the batches of one backend (keyed by shape), so that many
        batches do not each keep their own multi-MB tangent buffers."""
        self.layers = list(layers)
        chosen = set(names)
        self.W: list[Tensor] = []
        self.masks: list[Tensor | None] = []
        for layer in self.layers:
            w = values[layer.prefix + layer.weight]
            mask = values.get(layer.prefix + "weight_mask") if layer.weight == "weight_orig" else None
            self.masks.append(mask)
            self.W.append(w * mask if mask is not None else w)
        self._workspace = {} if workspace is None else workspace
        self.wanted = [(layer.prefix + layer.weight in chosen, layer.prefix + "bias" in chosen)
                       for layer in self.layers]
        with torch.no_grad():
            h = x.flatten(1)
            self.inputs: list[Tensor] = []       # h_{l-1}, with a column of ones where the layer has a bias
            self.relu: list[Tensor | None] = []  # [z_l > 0] as 0/1 of the compute dtype
            for layer, w in zip(self.layers, self.W):
                self.inputs.append(torch.cat([h, h.new_ones(len(h), 1)], dim=1) if layer.has_bias else h)
                z = self.inputs[-1] @ torch.cat([w, values[layer.prefix + "bias"][:, None]], dim=1).T \
                    if layer.has_bias else h @ w.T
                if layer.relu:
                    active = (z > 0).to(z.dtype)
                    self.relu.append(active)
                    h = z * active
                else:
                    self.relu.append(None)
            self.p = torch.softmax(z, dim=1)
            g = self.p - F.one_hot(y, z.shape[1]).to(z.dtype)
            self.g: list[Tensor] = [g]           # ∂L/∂z_l, from the last layer back
            for layer in range(len(self.layers) - 1, 0, -1):
                g = (g @ self.W[layer]) * self.relu[layer - 1]
                self.g.append(g)
            self.g.reverse()

    def _direction(self, l: int, T: Mapping[str, Tensor], b: int) -> Tensor | None:
        """(B, out, in[+1]) tangent of layer l's weight (masked) and bias; None if not in the set."""
        layer, w = self.layers[l], self.W[l]
        want_w, want_b = self.wanted[l]
        if not (want_w or want_b):
            return None
        V = T[layer.prefix + layer.weight] if want_w else w.new_zeros(b, *w.shape)
        if want_w and self.masks[l] is not None:
            V = V * self.masks[l]
        if layer.has_bias:
            c = T[layer.prefix + "bias"] if want_b else w.new_zeros(b, w.shape[0])
            V = torch.cat([V, c[:, :, None]], dim=2)
        return V

    def _buffer(self, key: tuple, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A workspace tensor reused across calls: a fresh multi-MB tensor per call costs page
        faults and kernel zeroing comparable to a GEMM on CPU."""
        key = (*key, shape, like.dtype, like.device)
        buf = self._workspace.get(key)
        if buf is None:
            buf = self._workspace[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    def products(self, T: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{name: (B, *shape)} = H·t for the B directions `T` ({name: (B, *shape)}) of `names`."""
        b = next(iter(T.values())).shape[0]
        n = self.inputs[0].shape[0]
        dirs = [self._direction(l, T, b) for l in range(len(self.layers))]
        # forward tangents ż_l, ḣ_l in (N, B, d) layout
        h_dot: list[Tensor | None] = [None]
        for l, (w, V) in enumerate(zip(self.W, dirs)):
            out = w.shape[0]
            z_dot = self._buffer(("z", l), (n, b * out), w)
            if h_dot[-1] is not None:   # ḣ_{l-1} W_lᵀ: one GEMM over all samples and directions
                torch.mm(h_dot[-1].view(n * b, -1), w.T, out=z_dot.view(n * b, out))
            if V is not None:           # + h_{l-1} V_lᵀ (bias column included): one GEMM, accumulated
                Vt = V.permute(2, 0, 1).reshape(V.shape[2], b * out)
                if h_dot[-1] is None:
                    torch.mm(self.inputs[l], Vt, out=z_dot)
                else:
                    z_dot.addmm_(self.inputs[l], Vt)
            elif h_dot[-1] is None:
                z_dot.zero_()
            z_dot = z_dot.view(n, b, out)
            h_dot.append(z_dot.mul_(self.relu[l][:, None, :]) if self.layers[l].relu else None)
        # output: ġ_L = p ⊙ ż_L − p (pᵀ ż_L)
        p = self.p[:, None, :]
        g_dot = torch.mul(p, z_dot, out=self._buffer(("g", len(self.layers) - 1), tuple(z_dot.shape), z_dot))
        g_dot.sub_(p * g_dot.sum(dim=2, keepdim=True))
        # backward tangents and the products
        result: dict[str, Tensor] = {}
        for l in range(len(self.layers) - 1, -1, -1):
            layer, w, V = self.layers[l], self.W[l], dirs[l]
            out, fan_in = w.shape
            flat = g_dot.view(n, b * out)
            # ġ_lᵀ h_{l-1} (and Σ_n ġ_l through the ones column): one GEMM for all directions
            HV = (flat.T @ self.inputs[l]).view(b, out, -1)
            if h_dot[l] is not None:    # + g_lᵀ ḣ_{l-1}
                HV[:, :, :fan_in] += (self.g[l].T @ h_dot[l].view(n, b * fan_in)).view(out, b, fan_in).transpose(0, 1)
            want_w, want_b = self.wanted[l]
            if want_w:
                HW = HV[:, :, :fan_in]
                result[layer.prefix + layer.weight] = HW * self.masks[l] if self.masks[l] is not None else HW
            if want_b:
                result[layer.prefix + "bias"] = HV[:, :, fan_in]
            if l == 0:
                break
            # ġ_{l-1} = (ġ_l W_l + g_l V_l) ⊙ [z_{l-1} > 0]
            g_prev = self._buffer(("g", l - 1), (n, b * fan_in), w)
            torch.mm(g_dot.view(n * b, out), w, out=g_prev.view(n * b, fan_in))
            if V is not None:
                g_prev.addmm_(self.g[l], V[:, :, :fan_in].permute(1, 0, 2).reshape(out, b * fan_in))
            g_dot = g_prev.view(n, b, fan_in).mul_(self.relu[l - 1][:, None, :])
        return result
