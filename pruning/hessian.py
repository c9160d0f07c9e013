"""Hessian spectrum by stochastic Lanczos quadrature (SLQ), ALGORITHMS.md §6–§7.

Data flow: `LocalHVPBackend` turns (model, loss, data) into Hessian-vector products of the summed
per-sample loss, B probes at a time → `slq` normalizes them by the sample count (mean loss over the
whole data set), optionally deflates coordinates whose Hessian rows vanish (the zero mass q), and
runs Lanczos with full reorthogonalization → `SLQResult` holds Ritz nodes θ and weights τ per probe
and computes every quadrature sum from them directly (no binning).

Why a backend Protocol: the operator is the only part that touches data. A data-parallel backend
(one per exact, non-overlapping shard; `sweeps/` builds one on Ray) returns the *sum* of its
per-sample HVPs and its sample count; the coordinator adds the sums and divides by the total count,
so sharded and local runs agree to rounding. Probe-parallel runs agree too: probe j's start vector
depends only on (seed, j), and `SLQResult.merge` concatenates runs in probe order.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import eigh_tridiagonal, solve_banded
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, linearize, vjp, vmap

from pruning.hvp_mlp import MLPHVP, mlp_chain

# torch's forward-mode AD scripts its decompositions on first use and warns that torch.jit.script is
# deprecated: torch's own internals, nothing a caller can act on (and every Ray worker would print it).
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


# --- the operator --------------------------------------------------------------------------------

@runtime_checkable
class HVPBackend(Protocol):
    """The Hessian operator as SLQ sees it.

    Contract (what a Ray or any other backend must implement):
    - `dim`: the number D of parameters the Hessian is taken over (the same ordered parameter set
      on every shard: `hessian_param_names(model, params)`, flattened in that order).
    - `hvp_sum(V)`: V is a (D, B) tensor of B directions (any float dtype, any device). Return
      `(S, n)` where S (D, B) is Σ over the samples this backend covers of ∇²ℓ_i · V (the Hessian
      of each sample's loss, *summed*, never averaged), and n is how many samples that was. The
      caller divides Σ S by Σ n, so shards must be exact and non-overlapping, the model in eval
      mode, no augmentation, and the same fixed data every call (Lanczos needs a fixed operator).
    """

    dim: int

    def hvp_sum(self, V: Tensor) -> tuple[Tensor, int]: ...


def hessian_param_names(model: nn.Module, params: Sequence[str] | str | None = None) -> list[str]:
    """Names of the parameters the Hessian is taken over, in `named_parameters()` order.

    None: every trainable parameter not owned by a BatchNorm layer (ALGORITHMS.md §6: BN affine
    parameters are excluded by default). "prunable": the weights of the Conv/Linear layers only
    (`weight_orig` for a masked layer). Otherwise an explicit list of names.
    """
    named = dict(model.named_parameters())
    if params is None:
        bn = {n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)}
        return [n for n, p in named.items() if p.requires_grad and n.rpartition(".")[0] not in bn]
    if isinstance(params, str):
        if params != "prunable":
            raise ValueError(f"params {params!r}: choose None, 'prunable' or a list of parameter names")
        from pruning.masks import prunable_layers

        out = []
        for name, module in prunable_layers(model):
            leaf = "weight_orig" if hasattr(module, "weight_mask") else "weight"
            out.append(f"{name}.{leaf}" if name else leaf)
        return out
    unknown = [p for p in params if p not in named]
    if unknown:
        raise ValueError(f"params {unknown}: not parameters of the model; choose from {sorted(named)}")
    if not params:
        raise ValueError("params: empty list; choose None, 'prunable' or parameter names")
    return [n for n in named if n in set(params)]


def dense_hessian(model: nn.Module, x: Tensor, y: Tensor, params: Sequence[str] | str | None = None) -> Tensor:
    """The exact D×D Hessian of the mean cross-entropy on (x, y), by `torch.func.hessian`.

    For small nets only (D² memory): it is the independent oracle of the tests and gives the exact
    spectra of `bench/zero_mass_error.py`. `params` as in `hessian_param_names`.
    """
    names = hessian_param_names(model, params)
    named = dict(model.named_parameters())
    shapes = [named[n].shape for n in names]
    flat0 = torch.cat([named[n].detach().reshape(-1) for n in names])

    def loss(flat: Tensor) -> Tensor:
        parts, i = {}, 0
        for n, shape in zip(names, shapes):
            parts[n] = flat[i : i + shape.numel()].view(shape)
            i += shape.numel()
        return F.cross_entropy(functional_call(model, parts, (x,)), y)

    return torch.func.hessian(loss)(flat0)


def _to_batches(data, batch_size: int, device: torch.device) -> list[Batch]:
    """A Split (normalized, fixed order, no augmentation) or an iterable of (x, y) batches → list."""
    if hasattr(data, "batches"):
        it: Iterable[Batch] = data.batches(batch_size, shuffle=False, device=device, augment=False)
    else:
        it = data
    batches = [(x.to(device), y.to(device)) for x, y in it]
    if sum(len(y) for _, y in batches) == 0:
        raise ValueError("data: empty data set; the Hessian needs at least one sample")
    return batches


def _activation_bytes_per_sample(model: nn.Module, x: Tensor) -> int:
    """Bytes of every leaf module's output for one sample: a proxy for what a cached HVP keeps."""
    total = [0]

    def hook(_m, _i, out):
        if isinstance(out, Tensor):
            total[0] += out[:1].numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return total[0]


HVP_MODES = ("fwd_rev", "rev_rev", "autograd", "fwd_rev_cached", "rev_rev_cached", "autograd_cached")
# Modes for one architecture family: eligible models only (`pruning.hvp_mlp.mlp_chain` says why not).
STRUCTURED_MODES = ("mlp_rop",)
AUTO_ROUNDS = 3  # calls per candidate before "auto" settles (the first of each is a warm-up)
AUTO_MARGIN = 1.5  # after one timed call each, a candidate this much faster than all others wins at once


class LocalHVPBackend:
    """Exact HVPs of the summed loss over a fixed list of batches, B probes per data pass.

    Modes (registry `HVP_MODES`; `bench/slq_vs_pyhessian.py` times them):
    - "fwd_rev": `vmap(jvp(grad(f)))`, forward-over-reverse, recomputed per call;
    - "rev_rev": `vmap(vjp(grad(f)))`, reverse-over-reverse, recomputed per call;
    - "fwd_rev_cached": `torch.func.linearize(grad(f))` once per batch, then only the tangent
      pass per call: the forward and first backward that every Lanczos step shares are kept;
    - "rev_rev_cached": `vjp(grad(f))` once per batch, its pullback reused by every call;
    - "autograd" / "autograd_cached": torch.autograd double backward, one per direction, from a
      gradient graph built per call / kept per batch (see `_autograd_products`).
    - "mlp_rop": for ReLU MLPs under cross-entropy only (`pruning.hvp_mlp`): Pearlmutter's
      R-operator written out as one GEMM per term for all B directions, forward and first backward
      cached per batch.
    "auto" takes "mlp_rop" for an eligible MLP whose cache (below) fits: it is the arithmetic of
    "fwd_rev_cached" in fewer, larger operations, and measured 1.3–1.6× faster than every generic
    mode (docs/benchmarks.md). Otherwise it picks per architecture by measuring, online: the first
    calls rotate through the candidates (the three cached modes when the estimated cache, 4× the
    activations of the data set, fits `cache_bytes`; else the three recomputing ones), each call
    giving exact products, and the
    fastest call per direction after each one's warm-up wins (after three calls each, or two when
    one is `AUTO_MARGIN` times faster than the rest). Which mode wins depends on architecture, dtype and
    device (see docs/benchmarks.md, SLQ section), so it is measured, not guessed; `mode` shows the winner.
    In every mode one forward + first backward serves all B directions (vmap over the probe dim).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn | None,
        data,
        *,
        params: Sequence[str] | str | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 1024,
        mode: str = "auto",
        cache_bytes: int = 2 << 30,
    ):
        if mode not in HVP_MODES + STRUCTURED_MODES and mode != "auto":
            raise ValueError(f"hvp mode {mode!r}: choose from {sorted(HVP_MODES + STRUCTURED_MODES) + ['auto']}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.loss_fn = loss_fn or F.cross_entropy
        self.names = hessian_param_names(model, params)
        named = dict(model.named_parameters())
        self.primals = {n: named[n].detach() for n in self.names}
        self.fixed = {n: p.detach() for n, p in named.items() if n not in self.primals}
        self.fixed.update(dict(model.named_buffers()))
        self.shapes = [self.primals[n].shape for n in self.names]
        self.sizes = [self.primals[n].numel() for n in self.names]
        self.dim = int(sum(self.sizes))
        self.dtype = next(iter(self.primals.values())).dtype
        self.batches = _to_batches(data, batch_size, self.device)
        self.count = int(sum(len(y) for _, y in self.batches))
        self._cache: dict[tuple[str, int], Callable] = {}  # (mode, batch) -> kept HVP function
        self._workspace: dict[tuple, Tensor] = {}  # mlp_rop's tangent buffers, shared by the batches
        self.mode = mode
        self._trials: list[tuple[str, float]] = []  # auto: (mode, seconds per direction) per call
        self._chain = mlp_chain(self.model, loss_fn, self.batches[0][0].ndim)
        if mode == "mlp_rop" and isinstance(self._chain, str):
            raise ValueError(f"hvp mode 'mlp_rop': not applicable, {self._chain}; use 'auto' or one of {list(HVP_MODES)}")
        self._candidates = list(HVP_MODES[:3])
        if mode == "auto":
            need = 4 * _activation_bytes_per_sample(self.model, self.batches[0][0]) * self.count
            if need <= cache_bytes:
                self._candidates = list(HVP_MODES[3:])
                if not isinstance(self._chain, str):
                    self.mode = "mlp_rop"
        log.info("hvp backend: dim=%d samples=%d batches=%d mode=%s %s", self.dim, self.count,
                 len(self.batches), self.mode, self._candidates if mode == "auto" else "")

    @classmethod
    def from_state_dict(
        cls,
        model: nn.Module,
        state_dict: Mapping[str, Tensor],
        batches: Sequence[Batch],
        *,
        loss_fn: LossFn | None = None,
        **kwargs,
    ) -> LocalHVPBackend:
        """A backend for one data shard: `model` (any instance of the architecture) takes the
        weights in `state_dict` (masked or not), and `batches` is this shard's list of (x, y).

        This is what a data-parallel worker needs: ship the state dict and its shard, build the
        backend there, answer `hvp_sum` calls; sum the answers on the coordinator.
        """
        from pruning.masks import load_state_dict

        load_state_dict(model, state_dict)
        return cls(model, loss_fn, list(batches), **kwargs)

    # flat (D, B) <-> per-parameter (B, *shape)
    def _split(self, V: Tensor) -> dict[str, Tensor]:
        out, start = {}, 0
        for name, shape, n in zip(self.names, self.shapes, self.sizes):
            out[name] = V[start : start + n].T.reshape(V.shape[1], *shape)
            start += n
        return out

    def _join(self, parts: Mapping[str, Tensor], b: int) -> Tensor:
        return torch.cat([parts[n].reshape(b, -1) for n in self.names], dim=1)  # (B, D)

    def _grad_fn(self, x: Tensor, y: Tensor) -> Callable:
        def summed_loss(p: dict[str, Tensor]) -> Tensor:
            out = functional_call(self.model, {**self.fixed, **p}, (x,))
            return self.loss_fn(out, y) * y.shape[0]  # loss_fn gives the batch mean: × n = sum

        return grad(summed_loss)

    def _products(self, mode: str, i: int, T: dict[str, Tensor]) -> dict[str, Tensor]:
        x, y = self.batches[i]
        if mode == "fwd_rev":
            g = self._grad_fn(x, y)
            return vmap(lambda t: jvp(g, (self.primals,), (t,))[1])(T)
        if mode == "rev_rev":
            return vmap(vjp(self._grad_fn(x, y), self.primals)[1])(T)[0]
        if mode.startswith("autograd"):
            return self._autograd_products(mode, i, T)
        key = (mode, i)
        if mode == "mlp_rop":
            if key not in self._cache:
                self._cache[key] = MLPHVP(self._chain, {**self.fixed, **self.primals}, self.names, x, y,
                                          workspace=self._workspace)
            return self._cache[key].products(T)
        if key not in self._cache:
            if mode == "fwd_rev_cached":
                with warnings.catch_warnings():  # torch.fx notes the traced constants it keeps
                    warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
                    self._cache[key] = linearize(self._grad_fn(x, y), self.primals)[1]
            else:
                pullback = vjp(self._grad_fn(x, y), self.primals)[1]
                self._cache[key] = lambda t, pb=pullback: pb(t)[0]
        return vmap(self._cache[key])(T)

    def _autograd_products(self, mode: str, i: int, T: dict[str, Tensor]) -> dict[str, Tensor]:
        """Reverse-over-reverse with torch.autograd: the gradient graph (create_graph) is built once
        per batch (kept across calls in "autograd_cached") and each direction is one more backward.

        Why besides torch.func: a torch.func pullback is itself differentiable and vmap adds
        batching overhead, which on CPU made it several times slower than this loop on MLPs
        (docs/benchmarks.md, SLQ section); the forward and first backward are still shared by all B.
        """
        key = (mode, i)
        with torch.enable_grad():
            if key not in self._cache:
                x, y = self.batches[i]
                leaves = [self.primals[n].detach().requires_grad_(True) for n in self.names]
                out = functional_call(self.model, {**self.fixed, **dict(zip(self.names, leaves))}, (x,))
                g = torch.autograd.grad(self.loss_fn(out, y) * y.shape[0], leaves, create_graph=True)
                self._cache[key] = (leaves, g)
            leaves, g = self._cache[key]
            b = next(iter(T.values())).shape[0]
            cols = [torch.autograd.grad(g, leaves, [T[n][j] for n in self.names], retain_graph=True)
                    for j in range(b)]
        if mode == "autograd":
            del self._cache[key]
        return {n: torch.stack([c[k] for c in cols]) for k, n in enumerate(self.names)}

    def _next_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return self._candidates[len(self._trials) % len(self._candidates)]

    def _record(self, mode: str, seconds: float) -> None:
        """Auto mode: keep the candidate with the fastest call after its first (the first builds
        caches and warms up). Min, not mean: on a shared machine noise only ever adds time. It
        settles after `AUTO_ROUNDS` calls per candidate, or after two when one is `AUTO_MARGIN`
        times faster than every other: each trial call of a loser costs its slowness (up to 4× on
        the small ResNet), and a clear winner does not need a third look."""
        self._trials.append((mode, seconds))
        n = len(self._candidates)
        if len(self._trials) < 2 * n:
            return
        second: dict[str, float] = {}
        for m, t in self._trials[n:]:
            second[m] = min(t, second.get(m, math.inf))
        ranked = sorted(second.values())
        clear = len(ranked) == 1 or ranked[1] >= AUTO_MARGIN * ranked[0]
        if len(self._trials) < AUTO_ROUNDS * n and not (len(self._trials) == 2 * n and clear):
            return
        self.mode = min(second, key=second.get)
        self._cache = {k: v for k, v in self._cache.items() if k[0] == self.mode}
        log.info("hvp mode: %s (seconds per direction, best timed call: %s)", self.mode,
                 {k: round(v, 6) for k, v in second.items()})

    def hvp_sum(self, V: Tensor) -> tuple[Tensor, int]:
        """(Σ_i ∇²ℓ_i V, n) over this backend's samples; V is (D, B)."""
        if V.ndim != 2 or V.shape[0] != self.dim:
            raise ValueError(f"V: shape {tuple(V.shape)}, expected ({self.dim}, B)")
        b = V.shape[1]
        mode = self._next_mode()
        t0 = time.perf_counter()
        T = self._split(V.to(device=self.device, dtype=self.dtype))
        total = torch.zeros(b, self.dim, dtype=self.dtype, device=self.device)  # (B, D): rows are products
        with torch.no_grad():
            for i in range(len(self.batches)):
                total += self._join(self._products(mode, i, T), b)
        if self.mode == "auto":
            self._record(mode, (time.perf_counter() - t0) / b)
        return total.T, self.count  # (D, B) as the protocol says, a view: Lanczos wants the rows back


class DeflatedBackend:
    """The operator restricted to the coordinates `keep` (zero-mass coordinates removed).

    Exact when the removed rows of H vanish: then H = 0 ⊕ H_KK and spec(H) = {0}^|Z| ∪ spec(H_KK).
    """

    def __init__(self, inner: HVPBackend, keep: Tensor):
        self.inner, self.keep = inner, keep
        self.dim = int(keep.numel())

    def hvp_sum(self, V: Tensor) -> tuple[Tensor, int]:
        full = torch.zeros(self.inner.dim, V.shape[1], dtype=V.dtype, device=V.device)
        full[self.keep] = V
        S, n = self.inner.hvp_sum(full)
        return S[self.keep.to(S.device)], n


def mean_hvp(backends: HVPBackend | Sequence[HVPBackend], V: Tensor) -> Tensor:
    """H V for the mean loss: add every backend's sum, divide by the total sample count."""
    backends = [backends] if not isinstance(backends, Sequence) else backends
    total, count = None, 0
    for b in backends:
        S, n = b.hvp_sum(V)
        S = S.to(device=V.device, dtype=torch.float64 if V.dtype == torch.float64 else S.dtype)
        total = S if total is None else total + S
        count += n
    if count == 0:
        raise ValueError("data: the backends cover no samples")
    return total / count


class SumOfBackends:
    """Several shard backends as one (sums and counts add): the local view of data parallelism."""

    def __init__(self, backends: Sequence[HVPBackend]):
        dims = {b.dim for b in backends}
        if len(dims) != 1:
            raise ValueError(f"backends: dims {sorted(dims)} differ; shards must share the parameter set")
        self.backends, self.dim = list(backends), dims.pop()

    def hvp_sum(self, V: Tensor) -> tuple[Tensor, int]:
        parts = [b.hvp_sum(V) for b in self.backends]
        return sum(S.to(V.device) for S, _ in parts), sum(n for _, n in parts)


# --- zero mass -----------------------------------------------------------------------------------

def zero_rows(backend: HVPBackend, *, probes: int = 2, seed: int = 0, tol: float = 1e-10,
              device: str | torch.device = "cpu") -> Tensor:
    """Boolean (D,) mask of coordinates whose Hessian row vanishes on the data.

    Why Gaussian probes: (H v)_i = Σ_j H_ij v_j, and E[(Hv)_i²] = ‖H_i,:‖². With Gaussian v a
    non-zero row gives (Hv)_i = 0 with probability 0, so a row is declared zero when its estimated
    norm is ≤ `tol` × the largest (dead units, always-zero inputs and masked weights give exact
    zeros). Zero eigenvalues that do not come from zero rows (symmetries) are not found: q is a
    lower bound of the true zero mass.
    """
    g = torch.Generator().manual_seed(_probe_seed(seed, -1))
    V = torch.randn(backend.dim, probes, generator=g, dtype=torch.float64).to(device)
    S, _ = backend.hvp_sum(V)
    norms = S.double().pow(2).mean(dim=1).sqrt()
    top = float(norms.max())
    return norms <= tol * top if top > 0 else torch.ones_like(norms, dtype=torch.bool)


# --- Lanczos -------------------------------------------------------------------------------------

def _probe_seed(seed: int, j: int) -> int:
    """A 63-bit seed depending only on (seed, j): probe j is the same in any split of the probes."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(j) + 1]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def rademacher(dim: int, seed: int, j: int) -> Tensor:
    """Probe j of `seed`: ±1 entries (float64, CPU), independent of how probes are batched."""
    g = torch.Generator().manual_seed(_probe_seed(seed, j))
    return torch.randint(0, 2, (dim,), generator=g, dtype=torch.int8).to(torch.float64) * 2 - 1


def basis_bytes(batch_probes: int, iterations: int, dim: int, dtype: torch.dtype) -> int:
    """Memory of the preallocated Lanczos bases: batch_probes × iterations × dim."""
    return batch_probes * iterations * dim * torch.empty((), dtype=dtype).element_size()


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def lanczos(
    matvec: Callable[[Tensor], Tensor],
    V0: Tensor,
    iterations: int,
    *,
    basis_dtype: torch.dtype = torch.float64,
    basis_device: str | torch.device = "cpu",
    pin: bool = False,
    breakdown_tol: float | None = None,
    batched_reorth: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lanczos on B start vectors at once; returns alphas (B, m), betas (B, m), steps (B,).

    `matvec` maps (B_active, D) directions to (B_active, D) products. Full reorthogonalization by
    two classical Gram–Schmidt passes against a preallocated (B, m, D) basis keeps the Ritz nodes
    free of ghost copies. Breakdown (β ≤ tol·max‖Hq‖: an invariant subspace was found) stops that
    probe; its later steps are not computed. Scalars are float64.

    `batched_reorth` (default: when basis and products are both on a GPU) does each pass for all
    probes in one bmm instead of one gemv per probe (and α in one batched dot): on a GPU the
    per-probe loop is 4·B small kernel launches per step, while on a CPU one gemv per probe streams
    the basis fastest (docs/benchmarks.md). A step after some probe broke down uses the per-probe
    loop either way.
    """
    B, D = V0.shape
    m = iterations
    dev = torch.device(basis_device)
    Q = torch.empty(B, m, D, dtype=basis_dtype, device=dev, pin_memory=pin)  # (probes, iters, params)
    tol = breakdown_tol if breakdown_tol is not None else math.sqrt(torch.finfo(basis_dtype).eps)
    alphas = np.zeros((B, m))
    betas = np.zeros((B, m))
    steps = np.zeros(B, dtype=np.int64)
    scale = np.zeros(B)
    q = (V0 / V0.norm(dim=1, keepdim=True)).to(basis_dtype)  # (B, D), on the compute device
    q_prev = torch.zeros_like(q)
    coef = torch.empty(B, m, dtype=basis_dtype, device=q.device)   # Gram–Schmidt coefficients
    active = np.arange(B)
    if batched_reorth is None:
        batched_reorth = dev.type == "cuda" and q.device == dev
    # In-place ops on preallocated buffers, elementwise work batched over the probes and one gemv per
    # probe and pass for the reorthogonalization: on a busy CPU every fresh allocation (page faults)
    # and every extra parallel op costs milliseconds, and a bmm with n = 1 streams Q slower than gemv.
    for k in range(m):
        full = len(active) == B
        idx = torch.as_tensor(active, device=q.device)
        Q[:, k].copy_(q)
        qa = q if full else q[idx]                                    # (b, D)
        w = matvec(qa).to(basis_dtype).contiguous()                   # (b, D)
        norms = torch.linalg.vector_norm(w, dim=1)
        if batched_reorth:
            alpha = torch.linalg.vecdot(qa, w)
        else:
            alpha = torch.stack([torch.dot(qa[r], w[r]) for r in range(len(active))])
        w.addcmul_(qa, alpha[:, None], value=-1)
        if k:
            beta_prev = torch.as_tensor(betas[active, k - 1], dtype=basis_dtype, device=w.device)
            w.addcmul_(q_prev if full else q_prev[idx], beta_prev[:, None], value=-1)
        if batched_reorth and full:  # two classical Gram–Schmidt passes: w -= Qᵀ (Q w)
            Qk, w3 = Q[:, : k + 1], w.unsqueeze(1)                      # (B, k+1, D), (B, 1, D)
            for _ in range(2):
                w3.baddbmm_(torch.bmm(w3, Qk.transpose(1, 2)), Qk, alpha=-1)
        else:
            gram_schmidt(Q, w, coef, k, enumerate(active))
        beta = torch.linalg.vector_norm(w, dim=1)
        scalars = torch.stack([norms, alpha, beta]).double().cpu().numpy()  # one sync per step
        scale[active] = np.maximum(scale[active], scalars[0])
        alphas[active, k], betas[active, k] = scalars[1], scalars[2]
        steps[active] = k + 1
        w.div_(torch.where(beta > 0, beta, torch.ones_like(beta))[:, None])
        if full:
            q_prev, q = q, w   # w is a fresh tensor every step: swap, no copies
        else:
            q_prev[idx], q[idx] = qa, w
        active = active[betas[active, k] > tol * scale[active]]
        if len(active) == 0:
            break
    return alphas, betas, steps


def gram_schmidt(Q: Tensor, w: Tensor, coef: Tensor, k: int, rows: Iterable[tuple[int, int]],
                 passes: int = 2) -> None:
    """Classical Gram–Schmidt passes w[r] -= Q[p]ᵀ (Q[p] w[r]) against basis rows 0..k, in place,
    one gemv per probe and pass; `rows` pairs each row r of w with its probe p (Lanczos: 2 passes).
    """
    for r, p in rows:
        Qp, cp = Q[p, : k + 1].to(w.device), coef[p, : k + 1]
        for _ in range(passes):
            torch.mv(Qp, w[r], out=cp)
            w[r].addmv_(Qp.T, cp, alpha=-1)


def ritz(alphas: np.ndarray, betas: np.ndarray, steps: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes θ and weights τ (squared first eigenvector components) per probe, padded to m.

    A probe that broke down after k < m steps gets nodes 0 with weight 0 in slots k..m−1.
    """
    P = len(steps)
    nodes, weights = np.zeros((P, m)), np.zeros((P, m))
    for p, k in enumerate(steps):
        k = int(k)
        if k == 1:
            theta, U = alphas[p, :1], np.ones((1, 1))
        else:
            theta, U = eigh_tridiagonal(alphas[p, :k], betas[p, : k - 1])
        nodes[p, :k], weights[p, :k] = theta, U[0] ** 2
    return nodes, weights


# --- results -------------------------------------------------------------------------------------

@dataclass
class SLQResult:
    """Ritz nodes and weights of P probes; every spectral sum comes from them directly.

    The represented spectrum is that of the full operator (dimension `full_dim`): a point mass
    `zero_mass` = q at 0 (the deflated zero-row coordinates) plus (1 − q) × the quadrature measure
    of the deflated operator (dimension `dim`).
    """

    nodes: np.ndarray         # (P, m) Ritz values θ, float64; padded with 0 after a breakdown
    weights: np.ndarray       # (P, m) τ, each row sums to 1; padding has weight 0
    steps: np.ndarray         # (P,) Lanczos steps actually taken per probe
    probe_ids: np.ndarray     # (P,) j of each probe (its start vector depends on (seed, j) only)
    dim: int                  # operator dimension after deflation
    full_dim: int             # dimension before deflation
    zero_mass: float          # q = deflated / full_dim
    seed: int
    iterations: int
    seconds: float = 0.0      # wall time of the whole run (zero detection included)
    hvp_seconds: float = 0.0  # time spent in the operator
    lanczos_seconds: float = 0.0  # time spent in Lanczos proper (reorthogonalization, scalars)
    n_hvp: int = 0            # single Hessian-vector products computed
    data_passes: int = 0
    info: dict = field(default_factory=dict)
    alphas: np.ndarray | None = None  # (P, m) Lanczos diagonals (for `radau`)
    betas: np.ndarray | None = None   # (P, m) off-diagonals; betas[p, steps−1] is the next β

    @property
    def probes(self) -> int:
        return int(len(self.probe_ids))

    def _valid(self) -> np.ndarray:
        return np.arange(self.nodes.shape[1])[None, :] < self.steps[:, None]

    def quadrature(self, f: Callable[[np.ndarray], np.ndarray]) -> float:
        """mean over probes of Σ_j τ_j f(θ_j) on the deflated operator (no zero mass)."""
        valid = self._valid()
        vals = np.zeros_like(self.nodes)
        vals[valid] = np.asarray(f(self.nodes[valid]), dtype=np.float64)
        return float((self.weights * vals).sum(axis=1).mean())

    def expect(self, f: Callable[[np.ndarray], np.ndarray]) -> float:
        """(1/D) tr f(H) ≈ q f(0) + (1 − q) · mean_p Σ_j τ_j f(θ_j)."""
        q = self.zero_mass
        zero = float(np.asarray(f(np.zeros(1)))[0]) if q > 0 else 0.0
        return q * zero + (1 - q) * self.quadrature(f)

    def trace(self) -> float:
        """tr H ≈ D_full · E[λ] (the deflated rows contribute exactly 0)."""
        return self.full_dim * self.expect(lambda t: t)

    def lambda_max(self) -> float:
        top = float(self.nodes[self._valid()].max())
        return max(top, 0.0) if self.zero_mass > 0 else top

    def lambda_min(self) -> float:
        low = float(self.nodes[self._valid()].min())
        return min(low, 0.0) if self.zero_mass > 0 else low

    def density(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian-smoothed spectral density on `grid`, for plots only (never for sums)."""
        grid = np.asarray(grid, dtype=np.float64)
        valid = self._valid()
        theta, tau = self.nodes[valid], self.weights[valid] / self.probes
        kern = lambda c: np.exp(-((grid[:, None] - c) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))  # noqa: E731
        dens = (1 - self.zero_mass) * (kern(theta[None, :]) * tau[None, :]).sum(axis=1)
        return dens + self.zero_mass * kern(np.zeros((1, 1)))[:, 0]

    def radau(self, anchor: float = 0.0) -> SLQResult:
        """The Gauss–Radau rule with one node fixed at `anchor` (default 0), from the same Lanczos run.

        Why: for f(λ) = 2ε/(2ε + R²λ) on a PSD spectrum (f completely monotone), the Gauss rule
        (this result) is a lower bound of (1/D) tr f(H) and the Radau rule anchored at the bottom
        of the spectrum an upper bound (Golub & Meurant, *Matrices, Moments and Quadrature*). Where
        the two agree the quadrature is resolved; where they split (large R, much mass near 0) the
        truth lies between. With negative eigenvalues this is a heuristic bracket, not a bound.
        The rule: extend the Jacobi matrix T_k by one row so that `anchor` is an eigenvalue,
        φ = anchor + δ_k with (T_k − anchor·I) δ = β_k² e_k. Probes that broke down keep Gauss.
        """
        if self.alphas is None or self.betas is None:
            raise ValueError("radau: this result carries no Lanczos coefficients (alphas/betas)")
        P, m = self.nodes.shape
        nodes, weights = np.zeros((P, m + 1)), np.zeros((P, m + 1))
        steps = self.steps.copy()
        for p in range(P):
            k = int(self.steps[p])
            a, b = self.alphas[p, :k], self.betas[p, :k]
            if b[-1] <= math.sqrt(np.finfo(np.float64).eps) * max(np.abs(a).max(), 1e-300):
                nodes[p, :k], weights[p, :k] = self.nodes[p, :k], self.weights[p, :k]
                continue
            band = np.zeros((3, k))
            band[0, 1:], band[1], band[2, :-1] = b[:-1], a - anchor, b[:-1]
            rhs = np.zeros(k)
            rhs[-1] = b[-1] ** 2
            delta = solve_banded((1, 1), band, rhs)
            theta, U = eigh_tridiagonal(np.append(a, anchor + delta[-1]), b)
            nodes[p, : k + 1], weights[p, : k + 1] = theta, U[0] ** 2
            steps[p] = k + 1
        return replace(self, nodes=nodes, weights=weights, steps=steps, alphas=None, betas=None,
                       info={**self.info, "rule": f"radau@{anchor}"})

    def spectra_rows(self) -> list[dict]:
        """Rows of sweeps/schema.py SPECTRA (without cell_id, sweep, hessian_model, schema_version)."""
        rows = []
        for p, j in enumerate(self.probe_ids):
            for i in range(int(self.steps[p])):
                rows.append({"probe": int(j), "node_index": i, "node": float(self.nodes[p, i]),
                             "weight": float(self.weights[p, i]), "zero_mass": self.zero_mass,
                             "dim": self.dim})
        return rows

    def summary(self) -> dict:
        """The SLQ columns of sweeps/schema.py TRIALS."""
        return {"slq_probes": self.probes, "slq_iterations": self.iterations, "slq_dim": self.full_dim,
                "hessian_trace": self.trace(), "hessian_lambda_max": self.lambda_max(),
                "hessian_lambda_min": self.lambda_min(), "zero_mass": self.zero_mass}

    @staticmethod
    def merge(results: Sequence[SLQResult]) -> SLQResult:
        """Join probe-parallel runs (same seed, operator and iterations) into one, in probe order."""
        if not results:
            raise ValueError("merge: no results")
        first = results[0]
        for r in results[1:]:
            for key in ("seed", "dim", "full_dim", "iterations", "zero_mass"):
                if getattr(r, key) != getattr(first, key):
                    raise ValueError(f"merge: {key} differs ({getattr(r, key)} vs {getattr(first, key)})")
        ids = np.concatenate([r.probe_ids for r in results])
        if len(set(ids.tolist())) != len(ids):
            raise ValueError(f"merge: duplicate probe ids {sorted(ids.tolist())}")
        order = np.argsort(ids, kind="stable")
        cat = lambda key: np.concatenate([getattr(r, key) for r in results])[order]  # noqa: E731
        coeffs = all(r.alphas is not None for r in results)
        return replace(
            first, nodes=cat("nodes"), weights=cat("weights"), steps=cat("steps"), probe_ids=ids[order],
            alphas=cat("alphas") if coeffs else None, betas=cat("betas") if coeffs else None,
            seconds=sum(r.seconds for r in results), hvp_seconds=sum(r.hvp_seconds for r in results),
            lanczos_seconds=sum(r.lanczos_seconds for r in results),
            n_hvp=sum(r.n_hvp for r in results), data_passes=sum(r.data_passes for r in results),
            info=dict(first.info),
        )


# --- the public entry point ----------------------------------------------------------------------

def slq(
    model: nn.Module | None,
    loss_fn: LossFn | None,
    data,
    *,
    probes: int,
    iterations: int,
    seed: int = 0,
    params: Sequence[str] | str | None = None,
    backend: HVPBackend | None = None,
    probe_offset: int = 0,
    batch_probes: int | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 1024,
    hvp_mode: str = "auto",
    deflate: bool = True,
    zero_tol: float = 1e-10,
    zero_probes: int = 2,
    keep: Tensor | None = None,
    basis_dtype: torch.dtype | None = None,
    basis_on_host: bool = False,
    max_basis_bytes: int | None = None,
) -> SLQResult:
    """Stochastic Lanczos quadrature of the Hessian of the mean loss over the whole `data`.

    Probes j = probe_offset … probe_offset+probes−1 start from Rademacher vectors that depend only
    on (seed, j), so `SLQResult.merge` of runs over disjoint offsets equals one run over all.
    `batch_probes` probes (default min(probes, 8)) share each data pass. With `deflate`, coordinates
    whose Hessian rows vanish (`zero_rows`) are removed and reported as `zero_mass` (pass `keep`,
    a boolean (D,) mask, to reuse one detection across probe-parallel runs). The Lanczos bases
    (batch_probes × iterations × dim, in `basis_dtype`, default the parameters' dtype) are sized
    and logged first; a request above `max_basis_bytes` (default: half the free memory of the
    basis device) fails before any product is computed.
    """
    t_start = time.perf_counter()
    if probes < 1:
        raise ValueError(f"probes {probes}: must be ≥ 1")
    if iterations < 1:
        raise ValueError(f"iterations {iterations}: must be ≥ 1")
    device = torch.device(device)
    if backend is None:
        if model is None:
            raise ValueError("slq: give a model (with loss_fn and data) or a backend")
        backend = LocalHVPBackend(model, loss_fn, data, params=params, device=device,
                                  batch_size=batch_size, mode=hvp_mode)
    dtype = basis_dtype or getattr(backend, "dtype", torch.float64)
    full_dim = backend.dim
    hvp_time = [0.0, 0, 0]  # seconds, products, passes

    def timed(op: HVPBackend, V: Tensor) -> Tensor:
        t0 = time.perf_counter()
        out = mean_hvp(op, V)
        hvp_time[0] += time.perf_counter() - t0
        hvp_time[1] += V.shape[1]
        hvp_time[2] += 1
        return out

    if keep is None and deflate:
        keep = ~zero_rows(_TimedBackend(backend, hvp_time), probes=zero_probes, seed=seed,
                          tol=zero_tol, device=device)
    if keep is not None and bool(keep.all()):
        keep = None
    op: HVPBackend = backend if keep is None else DeflatedBackend(backend, keep.nonzero().squeeze(1))
    dim = op.dim
    if iterations >= dim:
        raise ValueError(f"iterations {iterations}: must be < the operator dimension {dim}")
    zero_mass = 1.0 - dim / full_dim
    bp = min(probes, batch_probes or 8)
    basis_device = torch.device("cpu") if basis_on_host else device
    need = basis_bytes(bp, iterations, dim, dtype)
    limit = max_basis_bytes if max_basis_bytes is not None else _available_bytes(basis_device) // 2
    log.info("slq: dim=%d (full %d, zero mass %.4f) probes=%d×%d iterations=%d basis %.3f GiB on %s "
             "(limit %.3f GiB)", dim, full_dim, zero_mass, probes, bp, iterations, need / 2**30,
             basis_device, limit / 2**30)
    if need > limit:
        raise ValueError(
            f"slq basis: {bp} probes × {iterations} iterations × {dim} params × "
            f"{torch.empty((), dtype=dtype).element_size()} B = {need / 2**30:.2f} GiB > limit "
            f"{limit / 2**30:.2f} GiB; lower batch_probes/iterations or use basis_dtype=float32"
        )
    pin = basis_on_host and device.type == "cuda"
    all_alpha, all_beta, all_steps = [], [], []
    for start in range(0, probes, bp):
        ids = range(probe_offset + start, probe_offset + min(start + bp, probes))
        V0 = torch.stack([rademacher(dim, seed, j) for j in ids]).to(device=device, dtype=dtype)
        a, b, s = lanczos(lambda q: timed(op, q.T).T, V0, iterations,
                          basis_dtype=dtype, basis_device=basis_device, pin=pin)
        all_alpha.append(a), all_beta.append(b), all_steps.append(s)
    alphas, betas, steps = (np.concatenate(x) for x in (all_alpha, all_beta, all_steps))
    nodes, weights = ritz(alphas, betas, steps, iterations)
    seconds = time.perf_counter() - t_start
    return SLQResult(
        nodes=nodes, weights=weights, steps=steps,
        probe_ids=np.arange(probe_offset, probe_offset + probes), dim=dim, full_dim=full_dim,
        zero_mass=zero_mass, seed=seed, iterations=iterations, seconds=seconds,
        hvp_seconds=hvp_time[0], lanczos_seconds=seconds - hvp_time[0], n_hvp=hvp_time[1],
        data_passes=hvp_time[2],
        info={"hvp_mode": getattr(backend, "mode", type(backend).__name__), "batch_probes": bp,
              "basis_dtype": str(dtype).removeprefix("torch."), "basis_bytes": need, "rule": "gauss"},
        alphas=alphas, betas=betas,
    )


class _TimedBackend:
    """Counts the zero-detection pass in the operator time."""

    def __init__(self, inner: HVPBackend, acc: list):
        self.inner, self.acc, self.dim = inner, acc, inner.dim

    def hvp_sum(self, V: Tensor) -> tuple[Tensor, int]:
        t0 = time.perf_counter()
        out = self.inner.hvp_sum(V)
        self.acc[0] += time.perf_counter() - t0
        self.acc[1] += V.shape[1]
        self.acc[2] += 1
        return out
