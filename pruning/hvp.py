"""Hessian-vector products: the operator that SLQ (`pruning.slq`) runs on, docs/algorithms.md §6.

Data flow: `LocalHVPBackend` turns (model, loss, data) into Hessian-vector products of the
*summed* per-sample loss, B directions per data pass, in one of several AD modes ("auto" measures
them online and keeps the fastest); `mean_hvp` adds the sums of one or more backends and divides
by their total sample count (the Hessian of the mean loss over the whole data set).

Why a backend Protocol: the operator is the only part that touches data. A data-parallel backend
(one per exact, non-overlapping shard; `sweeps/` builds one on Ray) returns the *sum* of its
per-sample HVPs and its sample count; the coordinator adds the sums and divides by the total count,
so sharded and local runs agree to rounding. `DeflatedBackend` restricts any backend to a subset of
coordinates (SLQ's zero-mass deflation) and `CountedBackend` records what the products cost.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, linearize, vjp, vmap

from pruning import masks as masks_lib
from pruning.hvp_mlp import MLPHVP, mlp_chain

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


@contextmanager
def _quiet_forward_ad() -> Iterator[None]:
    """Silence two notes torch prints from inside forward-mode AD, for this call only.

    torch scripts its forward-AD decompositions on first use and warns that `torch.jit.script` is
    deprecated, and `torch.func.linearize` (torch.fx) notes the traced constants it keeps: torch's
    own internals, nothing a caller can act on (and every Ray worker would print them).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
        yield


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
    Optional: `dtype` (`slq`'s default basis dtype; float64 without it) and `mode` (a name that
    `slq` records as `info["hvp_mode"]`; the class name without it).
    """

    dim: int

    def hvp_sum(self, V: Tensor) -> tuple[Tensor, int]: ...


def hessian_param_names(model: nn.Module, params: Sequence[str] | str | None = None) -> list[str]:
    """Names of the parameters the Hessian is taken over, in `named_parameters()` order.

    None: every trainable parameter not owned by a BatchNorm layer (docs/algorithms.md §6: BN affine
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
        out = []
        for name, module in masks_lib.prunable_layers(model):
            leaf = "weight_orig" if masks_lib.is_masked(module) else "weight"
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
    spectra of `bench/zero_mass_error.py`. `params` as in `hessian_param_names`. `x` should have
    the model's dtype (float64 for an oracle).
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

    with _quiet_forward_ad():  # torch.func.hessian is forward-over-reverse
        return torch.func.hessian(loss)(flat0)


def _to_batches(data, batch_size: int, device: torch.device, dtype: torch.dtype) -> list[Batch]:
    """A Split (normalized, fixed order, no augmentation) or an iterable of (x, y) batches → list.

    Floating inputs take the parameters' `dtype`: a float64 model on float32 data (every Split)
    would otherwise fail in its first matmul.
    """
    if hasattr(data, "batches"):
        it: Iterable[Batch] = data.batches(batch_size, shuffle=False, device=device, augment=False)
    else:
        it = data
    batches = [(x.to(device=device, dtype=dtype if x.is_floating_point() else None), y.to(device))
               for x, y in it]
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
      cached once for all batches, which it walks in steps of `pruning.hvp_mlp.CHUNK_ROWS` samples.
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

    The caller's model is changed in place: it is moved to `device` and put in eval mode (the
    operator must be fixed: BatchNorm on its running statistics, no dropout), and its parameters
    are read, never written. `slq` undoes both when it returns (`restoring`); a caller who builds a
    backend directly can do the same with `with restoring(model): ...`. Floating data are cast to
    the parameters' dtype.
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
        self.batches = _to_batches(data, batch_size, self.device, self.dtype)
        self.count = int(sum(len(y) for _, y in self.batches))
        self._cache: dict[tuple[str, int], Callable] = {}  # (mode, batch) -> kept HVP function
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
        masks_lib.load_state_dict(model, state_dict)
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
            with _quiet_forward_ad():
                return vmap(lambda t: jvp(g, (self.primals,), (t,))[1])(T)
        if mode == "rev_rev":
            return vmap(vjp(self._grad_fn(x, y), self.primals)[1])(T)[0]
        if mode.startswith("autograd"):
            return self._autograd_products(mode, i, T)
        key = (mode, i)
        if key not in self._cache:
            if mode == "fwd_rev_cached":
                with _quiet_forward_ad():
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
            if mode == "mlp_rop":  # one cache over all batches, which it walks in its own steps
                key = (mode, -1)
                if key not in self._cache:
                    self._cache[key] = MLPHVP(self._chain, {**self.fixed, **self.primals}, self.names, self.batches)
                total += self._join(self._cache[key].products(T), b)
            else:
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


# --- what the products cost ----------------------------------------------------------------------

@dataclass
class HVPStats:
    """The operator's cost in one SLQ run (`SLQResult.hvp_seconds`, `data_passes`, `n_hvp`)."""

    seconds: float = 0.0  # wall time inside `hvp_sum`
    calls: int = 0        # `hvp_sum` calls: one pass over the data each
    products: int = 0     # single Hessian-vector products: Σ over calls of the B directions


class CountedBackend:
    """`inner` with every `hvp_sum` call added to `stats` (time, calls, directions)."""

    def __init__(self, inner: HVPBackend, stats: HVPStats):
        self.inner, self.stats, self.dim = inner, stats, inner.dim

    def hvp_sum(self, V: Tensor) -> tuple[Tensor, int]:
        t0 = time.perf_counter()
        out = self.inner.hvp_sum(V)
        self.stats.seconds += time.perf_counter() - t0
        self.stats.calls += 1
        self.stats.products += V.shape[1]
        return out


# --- the caller's model --------------------------------------------------------------------------

@contextmanager
def restoring(model: nn.Module) -> Iterator[nn.Module]:
    """Undo, on exit, what `LocalHVPBackend` does to `model`: every module's train/eval flag is
    set back, and a model whose parameters and buffers were all on one device goes back there
    (`model.to`; a model spread over several devices is left where the backend put it).
    Parameter values are never changed by the backend, so nothing else needs restoring.
    """
    modes = [(m, m.training) for m in model.modules()]
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
        if len(devices) == 1:
            model.to(devices.pop())
