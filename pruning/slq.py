"""Hessian spectrum by stochastic Lanczos quadrature (SLQ), docs/algorithms.md §6–§7.

Data flow: an `HVPBackend` (`pruning.hvp`; `LocalHVPBackend` by default) gives Hessian-vector
products of the summed loss, B probes at a time → `slq` normalizes them by the sample count (mean
loss over the whole data set), optionally deflates coordinates whose Hessian rows vanish
(`zero_rows`: the zero mass q), and runs `lanczos` with full reorthogonalization → `SLQResult`
holds Ritz nodes θ and weights τ per probe and computes every quadrature sum from them directly
(no binning).

Probe-parallel runs agree with one run: probe j's start vector depends only on (seed, j)
(`rademacher`), and `SLQResult.merge` concatenates runs in probe order.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal, eigvalsh_tridiagonal, solve_banded
from torch import Tensor, nn

from pruning.hvp import (
    CountedBackend, DeflatedBackend, HVPBackend, HVPStats, LocalHVPBackend, LossFn, mean_hvp, restoring,
)

log = logging.getLogger(__name__)


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
    """Memory a new allocation can have: the GPU's free memory, or on Linux MemAvailable (free pages
    plus the page cache the kernel gives back on demand: reading a data set fills that cache, and
    counting only free pages refused bases that fit); elsewhere the free pages."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
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
    stop: Callable[[int, np.ndarray, np.ndarray, np.ndarray], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lanczos on B start vectors at once; returns alphas (B, m), betas (B, m), steps (B,).

    `stop(depth, alphas, betas, steps)`, when given, is asked after every step (the arrays hold the
    first `depth` columns); True ends the run there, the same recurrence a fixed run of that depth
    would have computed (the basis is allocated for `iterations`, the cap). The returned arrays are
    then `depth` columns wide.

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
        if stop is not None and k + 1 < m and stop(k + 1, alphas[:, : k + 1], betas[:, : k + 1], steps):
            return alphas[:, : k + 1].copy(), betas[:, : k + 1].copy(), steps
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


def gauss_rule(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes θ and weights τ of the Jacobi matrix with diagonal `a` (k,) and off-diagonal `b` (k−1,),
    from eigenvalues only: τ_j = ∏_i (θ_j − θ̂_i) / ∏_{i≠j} (θ_j − θ_i), θ̂ the eigenvalues of the
    matrix without its first row and column (τ_j is the residue of e1ᵀ(z − T)⁻¹e1 at θ_j).

    Why: the resolution signal re-solves s* at many depths of every probe, and eigenvalues alone
    (LAPACK sterf) cost 5–50× less than eigenvectors; on Lanczos matrices with a near-zero cluster
    the weights agree with eigh's squared first components to ~1e-11 relative. Interlacing keeps
    every difference non-zero for an unreduced matrix; should the products still lose accuracy
    (weights not summing to 1 within 1e-9), eigh decides."""
    k = len(a)
    if k == 1:
        return a[:1].astype(np.float64), np.ones(1)
    theta = eigvalsh_tridiagonal(a, b, lapack_driver="sterf")
    hat = eigvalsh_tridiagonal(a[1:], b[1:], lapack_driver="sterf") if k > 2 else a[1:2].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        num = np.log(np.abs(theta[:, None] - hat[None, :])).sum(axis=1)
        gaps = np.abs(theta[:, None] - theta[None, :])
        np.fill_diagonal(gaps, 1.0)
        tau = np.exp(num - np.log(gaps).sum(axis=1))
    if not (np.all(np.isfinite(tau)) and abs(tau.sum() - 1.0) <= 1e-9):
        theta, U = eigh_tridiagonal(a, b)
        tau = U[0] ** 2
    return theta, tau


def ritz(alphas: np.ndarray, betas: np.ndarray, steps: np.ndarray, m: int, *,
         fast: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Nodes θ and weights τ (squared first eigenvector components) per probe, padded to m.

    A probe that broke down after k < m steps gets nodes 0 with weight 0 in slots k..m−1.
    `fast`: the weights from eigenvalues alone (`gauss_rule`), for the many re-solves of the
    resolution signal; the run's own result uses eigh.
    """
    P = len(steps)
    nodes, weights = np.zeros((P, m)), np.zeros((P, m))
    for p, k in enumerate(steps):
        k = int(k)
        if fast:
            theta, tau = gauss_rule(alphas[p, :k], betas[p, : k - 1])
        elif k == 1:
            theta, tau = alphas[p, :1], np.ones(1)
        else:
            theta, U = eigh_tridiagonal(alphas[p, :k], betas[p, : k - 1])
            tau = U[0] ** 2
        nodes[p, :k], weights[p, :k] = theta, tau
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
    until: Callable[[SLQResult], bool] | None = None,
    min_iterations: int = 1,
    check_every: int = 16,
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

    What happens to `model` (when no `backend` is given): while SLQ runs it sits on `device` in
    eval mode (the operator needs BatchNorm's running statistics and no dropout); on return, also
    by an exception, every module's train/eval flag and the model's device are restored
    (`pruning.hvp.restoring`). Its parameter values are only read. Floating data are cast to the
    parameters' dtype, so a float64 model works on float32 data. With `backend`, `model` is unused.

    Adaptive depth (`until`): `iterations` is then the cap. After `min_iterations` steps and every
    `check_every` steps after that, `until(partial)` is asked with the result the run would return
    at that depth; True ends it there (same recurrence, so the result equals a fixed run of that
    depth). The bases are allocated for the cap, logged first; when the cap does not fit with
    `batch_probes` probes at once, fewer share a pass (down to 1, else the run fails before any
    product). With several probe batches the first one decides the depth and the others run to
    it (Lanczos depth is a property of the operator and f, not of one probe; the last batch would
    otherwise wait on the first). `info` records `max_iterations` and `adaptive`.
    """
    t_start = time.perf_counter()
    if probes < 1:
        raise ValueError(f"probes {probes}: must be ≥ 1")
    if iterations < 1:
        raise ValueError(f"iterations {iterations}: must be ≥ 1")
    if until is not None and not (1 <= min_iterations and 1 <= check_every):
        raise ValueError(f"min_iterations {min_iterations}, check_every {check_every}: must be ≥ 1")
    device = torch.device(device)
    if backend is None and model is None:
        raise ValueError("slq: give a model (with loss_fn and data) or a backend")
    with restoring(model) if backend is None else nullcontext():
        if backend is None:
            backend = LocalHVPBackend(model, loss_fn, data, params=params, device=device,
                                      batch_size=batch_size, mode=hvp_mode)
        dtype = basis_dtype or getattr(backend, "dtype", torch.float64)
        full_dim = backend.dim
        stats = HVPStats()  # zero detection and Lanczos products alike count as operator time
        if keep is None and deflate:
            keep = ~zero_rows(CountedBackend(backend, stats), probes=zero_probes, seed=seed, tol=zero_tol,
                              device=device)
        if keep is not None and bool(keep.all()):
            keep = None
        inner = backend if keep is None else DeflatedBackend(backend, keep.nonzero().squeeze(1))
        op = CountedBackend(inner, stats)
        dim = op.dim
        if iterations >= dim:
            if until is None:
                raise ValueError(f"iterations {iterations}: must be < the operator dimension {dim}")
            iterations = dim - 1  # the cap of an adaptive run: never deeper than the operator allows
        zero_mass = 1.0 - dim / full_dim
        bp = min(probes, batch_probes or 8)
        basis_device = torch.device("cpu") if basis_on_host else device
        limit = max_basis_bytes if max_basis_bytes is not None else _available_bytes(basis_device) // 2
        per_probe = basis_bytes(1, iterations, dim, dtype)
        if until is not None and bp * per_probe > limit and per_probe <= limit:
            log.info("slq: the adaptive cap of %d iterations fits %d probe(s) per pass, not %d",
                     iterations, limit // per_probe, bp)
            bp = int(limit // per_probe)
        need = bp * per_probe
        log.info("slq: dim=%d (full %d, zero mass %.4f) probes=%d×%d iterations=%s%d basis %.3f GiB on %s "
                 "(limit %.3f GiB)", dim, full_dim, zero_mass, probes, bp, iterations,
                 "≤" if until is not None else "", need / 2**30, basis_device, limit / 2**30)
        if need > limit:
            raise ValueError(
                f"slq basis: {bp} probes × {iterations} iterations × {dim} params × "
                f"{torch.empty((), dtype=dtype).element_size()} B = {need / 2**30:.2f} GiB > limit "
                f"{limit / 2**30:.2f} GiB; lower batch_probes/iterations or use basis_dtype=float32"
            )
        pin = basis_on_host and device.type == "cuda"
        info = {"hvp_mode": getattr(backend, "mode", type(backend).__name__), "batch_probes": bp,
                "basis_dtype": str(dtype).removeprefix("torch."), "basis_bytes": need, "rule": "gauss"}
        if until is not None:
            info.update(adaptive=True, max_iterations=iterations)

        def result(alphas: np.ndarray, betas: np.ndarray, steps: np.ndarray, ids: np.ndarray, *,
                   partial: bool = False) -> SLQResult:
            depth = alphas.shape[1]
            nodes, weights = ritz(alphas, betas, steps, depth, fast=partial)  # a check's partial: eigenvalues only
            seconds = time.perf_counter() - t_start
            return SLQResult(
                nodes=nodes, weights=weights, steps=steps, probe_ids=ids, dim=dim, full_dim=full_dim,
                zero_mass=zero_mass, seed=seed, iterations=depth, seconds=seconds, hvp_seconds=stats.seconds,
                lanczos_seconds=seconds - stats.seconds, n_hvp=stats.products, data_passes=stats.calls,
                info=dict(info), alphas=alphas, betas=betas)

        all_alpha, all_beta, all_steps = [], [], []
        depth = iterations
        for start in range(0, probes, bp):
            ids = np.arange(probe_offset + start, probe_offset + min(start + bp, probes))
            V0 = torch.stack([rademacher(dim, seed, int(j)) for j in ids]).to(device=device, dtype=dtype)
            stop = None
            if until is not None and start == 0:
                def stop(k: int, a: np.ndarray, b: np.ndarray, st: np.ndarray) -> bool:
                    due = k >= min_iterations and (k - min_iterations) % check_every == 0
                    return due and bool(until(result(a, b, np.minimum(st, k), ids, partial=True)))
            a, b, s = lanczos(lambda q: mean_hvp(op, q.T).T, V0, depth,
                              basis_dtype=dtype, basis_device=basis_device, pin=pin, stop=stop)
            depth = a.shape[1]
            all_alpha.append(a), all_beta.append(b), all_steps.append(s)
        alphas, betas, steps = (np.concatenate(x) for x in (all_alpha, all_beta, all_steps))
        return result(alphas, betas, steps, np.arange(probe_offset, probe_offset + probes))
