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


# Samples per step of `MLPHVP.products`: the tangents of one step ((rows, B·width) each, ~40 MB at
# B = 8, width 300) stay in the last-level cache between the GEMMs that write and read them, and the
# cache of the forward pass is read in row slices (views, no copies). docs/benchmarks.md has the sweep.
CHUNK_ROWS = 4096


class MLPHVP:
    """Cached R-operator HVPs over a data set: the forward and first backward are computed once;
    each call costs six GEMMs per layer for all B directions together, in steps of `chunk` samples
    whose products are accumulated inside the GEMMs (`addmm_`)."""

    def __init__(self, layers: Sequence[_Layer], values: Mapping[str, Tensor], names: Sequence[str],
                 batches: Sequence[tuple[Tensor, Tensor]], chunk: int = CHUNK_ROWS):
        if chunk < 1:
            raise ValueError(f"chunk: {chunk}, expected a positive number of samples")
        self.layers = list(layers)
        self.chunk = chunk
        chosen = set(names)
        self.W: list[Tensor] = []
        self.masks: list[Tensor | None] = []
        for layer in self.layers:
            w = values[layer.prefix + layer.weight]
            mask = values.get(layer.prefix + "weight_mask") if layer.weight == "weight_orig" else None
            self.masks.append(mask)
            self.W.append(w * mask if mask is not None else w)
        self.wanted = [(layer.prefix + layer.weight in chosen, layer.prefix + "bias" in chosen)
                       for layer in self.layers]
        self._buffers: dict[tuple, Tensor] = {}
        with torch.no_grad():
            y = torch.cat([yb for _, yb in batches])
            h = _stack_inputs([xb.flatten(1) for xb, _ in batches], self.layers[0].has_bias)
            self.n = len(y)
            self.inputs: list[Tensor] = []       # h_{l-1}, with a column of ones where the layer has a bias
            self.relu: list[Tensor | None] = []  # [z_l > 0] as 0/1 of the compute dtype
            for l, (layer, w) in enumerate(zip(self.layers, self.W)):
                if l > 0 and layer.has_bias:
                    h = torch.cat([h, h.new_ones(len(h), 1)], dim=1)
                self.inputs.append(h)
                z = h @ (torch.cat([w, values[layer.prefix + "bias"][:, None]], dim=1) if layer.has_bias else w).T
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

    def _buffer(self, key: str, l: int, rows: int, cols: int, like: Tensor) -> Tensor:
        """A (rows, cols) view of a buffer of one step's size, kept across calls and steps: a fresh
        multi-MB tensor per step costs page faults and kernel zeroing comparable to a GEMM on CPU."""
        buf = self._buffers.get((key, l, cols))
        if buf is None:
            buf = self._buffers[key, l, cols] = like.new_empty(min(self.chunk, self.n), cols)
        return buf[:rows]

    def products(self, T: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{name: (B, *shape)} = H·t summed over the samples, for the B directions `T`
        ({name: (B, *shape)}) of `names`."""
        b = next(iter(T.values())).shape[0]
        dirs = [self._direction(l, T, b) for l in range(len(self.layers))]
        # the directions as GEMM operands, once per call: forward (in[+1], B·out), backward (out, B·in)
        fwd = [None if V is None else V.permute(2, 0, 1).reshape(V.shape[2], -1) for V in dirs]
        bwd = [None if V is None or l == 0 else V[:, :, :self.W[l].shape[1]].permute(1, 0, 2).reshape(V.shape[1], -1)
               for l, V in enumerate(dirs)]
        like = self.W[0]
        # Σ_n ġ_lᵀ h_{l-1} (bias column included) as (B·out, in[+1]); Σ_n g_lᵀ ḣ_{l-1} as (out, B·in)
        acc_out = [like.new_zeros(b * w.shape[0], self.inputs[l].shape[1]) if any(self.wanted[l]) else None
                   for l, w in enumerate(self.W)]
        acc_in = [like.new_zeros(w.shape[0], b * w.shape[1]) if l > 0 and self.wanted[l][0] else None
                  for l, w in enumerate(self.W)]
        for s in range(0, self.n, self.chunk):
            e = min(s + self.chunk, self.n)
            self._step(s, e, b, fwd, bwd, acc_out, acc_in)
        result: dict[str, Tensor] = {}
        for l, (layer, w) in enumerate(zip(self.layers, self.W)):
            want_w, want_b = self.wanted[l]
            if acc_out[l] is None:
                continue
            out, fan_in = w.shape
            HV = acc_out[l].view(b, out, -1)
            if want_w:
                HW = HV[:, :, :fan_in]
                if acc_in[l] is not None:
                    HW += acc_in[l].view(out, b, fan_in).transpose(0, 1)
                result[layer.prefix + layer.weight] = HW * self.masks[l] if self.masks[l] is not None else HW
            if want_b:
                result[layer.prefix + "bias"] = HV[:, :, fan_in]
        return result

    def _step(self, s: int, e: int, b: int, fwd, bwd, acc_out, acc_in) -> None:
        """Samples s:e of one call: the forward tangents, the backward tangents, and their
        contributions added into the accumulators."""
        c = e - s
        # forward tangents ż_l, ḣ_l in (rows, B, d) layout
        h_dot: list[Tensor | None] = [None]
        for l, w in enumerate(self.W):
            out = w.shape[0]
            z_dot = self._buffer("z", l, c, b * out, w)
            if h_dot[-1] is not None:   # ḣ_{l-1} W_lᵀ: one GEMM over all samples and directions
                torch.mm(h_dot[-1].view(c * b, -1), w.T, out=z_dot.view(c * b, out))
            if fwd[l] is not None:      # + h_{l-1} V_lᵀ (bias column included): one GEMM, accumulated
                if h_dot[-1] is None:
                    torch.mm(self.inputs[l][s:e], fwd[l], out=z_dot)
                else:
                    z_dot.addmm_(self.inputs[l][s:e], fwd[l])
            elif h_dot[-1] is None:
                z_dot.zero_()
            z_dot = z_dot.view(c, b, out)
            h_dot.append(z_dot.mul_(self.relu[l][s:e, None, :]) if self.layers[l].relu else None)
        # output: ġ_L = p ⊙ ż_L − p (pᵀ ż_L)
        p = self.p[s:e, None, :]
        g_dot = torch.mul(p, z_dot, out=self._buffer("g", len(self.W) - 1, c, z_dot[0].numel(), z_dot).view_as(z_dot))
        g_dot.sub_(p * g_dot.sum(dim=2, keepdim=True))
        # backward tangents, the products accumulated
        for l in range(len(self.W) - 1, -1, -1):
            w = self.W[l]
            out, fan_in = w.shape
            flat = g_dot.view(c, b * out)
            if acc_out[l] is not None:
                if self.wanted[l][0]:   # ġ_lᵀ h_{l-1} (and Σ_n ġ_l through the ones column)
                    acc_out[l].addmm_(flat.T, self.inputs[l][s:e])
                else:                   # the bias alone: Σ_n ġ_l
                    acc_out[l][:, -1] += flat.sum(dim=0)
            if acc_in[l] is not None and h_dot[l] is not None:   # + g_lᵀ ḣ_{l-1}
                acc_in[l].addmm_(self.g[l][s:e].T, h_dot[l].view(c, b * fan_in))
            if l == 0:
                break
            # ġ_{l-1} = (ġ_l W_l + g_l V_l) ⊙ [z_{l-1} > 0]
            g_prev = self._buffer("g", l - 1, c, b * fan_in, w)
            torch.mm(g_dot.view(c * b, out), w, out=g_prev.view(c * b, fan_in))
            if bwd[l] is not None:
                g_prev.addmm_(self.g[l][s:e], bwd[l])
            g_dot = g_prev.view(c, b, fan_in).mul_(self.relu[l - 1][s:e, None, :])


def _stack_inputs(xs: Sequence[Tensor], ones: bool) -> Tensor:
    """The batches' flattened inputs as one (N, d[+1]) tensor, a column of ones appended for a bias,
    written in place (one copy of the data, not two)."""
    n, d = sum(len(x) for x in xs), xs[0].shape[1]
    out = xs[0].new_empty(n, d + int(ones))
    start = 0
    for x in xs:
        out[start:start + len(x), :d] = x
        start += len(x)
    if ones:
        out[:, d] = 1
    return out
