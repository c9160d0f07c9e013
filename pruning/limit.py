"""The pruning limit of *How Sparse Can We Prune A Deep Network* (docs/algorithms.md §7).

For trained prunable weights w* (N of them) and the Hessian spectrum from SLQ:
- R(s): distance from w* to its best sparse approximation with removed fraction s, i.e.
  sqrt(Σ of the ⌈sN⌉ smallest w_i²) — one sort, prefix sums, O(1) per s;
- G(R) = (1/D) Σ_i 2ε / (2ε + R²|λ_i|): the normalized statistical dimension of the ε-sublevel
  ellipsoid seen from distance R, summed directly over the SLQ nodes (with the zero mass q at 0);
- the predicted removable fraction s* solves s = G(R(s)); s − G(R(s)) increases with s, so
  bisection finds it to machine precision.
The kinematic band and the Jensen trace bound are our derivations from the paper's framework.
How well s* is resolved is measured, not assumed: s* from the first m/2 Lanczos steps against all
m, and the jackknife standard error over probes (`Resolution`); the Gauss–Radau estimate is kept
as a diagnostic, not a bound. The actual limit is read from a one-shot accuracy-vs-sparsity curve
by a named rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor, nn

from pruning.slq import SLQResult, ritz
from pruning.train import L1_SCOPES, l1_penalty

# --- ε: the loss tolerance -----------------------------------------------------------------------

# How ε was obtained, by name (recorded as `epsilon_source`): keyword sets of `batch_loss_std`.
# "batch_loss_std" is what prunetune did before (and what stored rows with that label mean): one
# deterministic pass, fixed order, no augmentation, full batches only, sample std (ddof=1).
# "batch_loss_std_authors" is the authors' recipe (Global-One-shot-Pruning, utils.cal_loss): one
# pass of their shuffled training loader with its augmentation (the data set's default: crop+flip
# for CIFAR, none for MNIST), the last partial batch included, np.std (ddof=0), model in eval mode,
# the L1 term λ·Σ|θ| added to every batch's loss.
EPSILON_RECIPES: dict[str, dict] = {
    "batch_loss_std": {"augment": False, "shuffle": False, "drop_last": True, "ddof": 1},
    "batch_loss_std_authors": {"augment": None, "shuffle": True, "drop_last": False, "ddof": 0},
}
EPSILON_SOURCES = (*EPSILON_RECIPES, "given")


def epsilon_recipe(name: str) -> dict:
    """The `batch_loss_std` keywords of recipe `name` (a copy)."""
    if name not in EPSILON_RECIPES:
        raise ValueError(f"epsilon_recipe {name!r}: choose from {list(EPSILON_RECIPES)}")
    return dict(EPSILON_RECIPES[name])


@torch.no_grad()
def batch_loss_std(
    model: nn.Module,
    train,
    *,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    augment: bool | None = False,
    shuffle: bool = False,
    drop_last: bool = True,
    ddof: int = 1,
    l1: float = 0.0,
    l1_scope: str = "all",
    seed: int = 0,
) -> float:
    """ε: the standard deviation of the per-batch training loss over one pass, model in eval mode.

    Why this: it is the scale of loss change that SGD noise makes anyway, so a perturbation costing
    less than ε is invisible. The defaults are prunetune's original deterministic variant (fixed
    order, no augmentation, full batches, ddof=1; `EPSILON_RECIPES["batch_loss_std"]`); the
    authors' variant is `**epsilon_recipe("batch_loss_std_authors")` with `l1=λ` of the LOMP run.
    `augment` None: the split's default (`train.augmentable`); the order and the crops come from
    one generator seeded with `seed`. `l1` > 0 adds λ·`l1_penalty(model, l1_scope)` to every
    batch's loss as the authors do; in eval mode it is the same constant for every batch, so it
    shifts the losses and leaves their standard deviation unchanged up to rounding.
    """
    if l1 < 0:
        raise ValueError(f"l1 {l1}: must be ≥ 0")
    if l1_scope not in L1_SCOPES:
        raise ValueError(f"l1_scope {l1_scope!r}: choose from {', '.join(L1_SCOPES)}")
    if ddof not in (0, 1):
        raise ValueError(f"ddof {ddof}: choose 0 (population, the authors' np.std) or 1 (sample)")
    loss_fn = loss_fn or nn.functional.cross_entropy
    aug = train.augmentable if augment is None else bool(augment)
    was_training = model.training
    model.eval()
    penalty = float(l1 * l1_penalty(model, l1_scope)) if l1 else 0.0
    g = torch.Generator().manual_seed(seed)
    losses = [float(loss_fn(model(x), y)) + penalty for x, y in
              train.batches(batch_size, shuffle=shuffle, generator=g, device=device, augment=aug,
                            drop_last=drop_last)]
    model.train(was_training)
    if len(losses) < 2:
        raise ValueError(f"batch_size {batch_size}: gives {len(losses)} batch(es); ε needs ≥ 2")
    return float(np.std(losses, ddof=ddof))


def check_epsilon(epsilon: float) -> float:
    e = float(epsilon)
    if not (e > 0 and math.isfinite(e)):
        raise ValueError(f"epsilon {epsilon}: must be a finite number > 0")
    return e


# --- R(s): distance to the best sparse approximation ---------------------------------------------

def flat_weights(weights: Tensor | Mapping[str, Tensor] | Sequence[Tensor]) -> np.ndarray:
    """Prunable weights as one float64 vector (a tensor, a dict of tensors or a list of tensors)."""
    if isinstance(weights, Tensor):
        parts = [weights]
    elif isinstance(weights, Mapping):
        parts = list(weights.values())
    else:
        parts = list(weights)
    if not parts or sum(p.numel() for p in parts) == 0:
        raise ValueError("weights: no prunable weights given")
    return torch.cat([p.detach().reshape(-1).double().cpu() for p in parts]).numpy()


class SparseDistance:
    """R(s) = sqrt(sum of the ⌈sN⌉ smallest squared weights), from prefix sums of sorted w²."""

    def __init__(self, weights: Tensor | Mapping[str, Tensor] | Sequence[Tensor]):
        w2 = np.sort(flat_weights(weights) ** 2)
        self.n = len(w2)
        self.prefix = np.concatenate([[0.0], np.cumsum(w2)])  # (N + 1,)

    def n_removed(self, s: float | np.ndarray) -> np.ndarray:
        """⌈sN⌉, with s·N rounded to 1e-9 first so 0.3·10 counts as 3, not 4."""
        s = np.asarray(s, dtype=np.float64)
        if np.any((s < 0) | (s > 1)):
            raise ValueError(f"removed_frac {s}: must be in [0, 1]")
        return np.ceil(np.round(s * self.n, 9)).astype(np.int64)

    def __call__(self, s: float | np.ndarray) -> np.ndarray | float:
        r = np.sqrt(self.prefix[self.n_removed(s)])
        return float(r) if r.ndim == 0 else r


# --- G(R): the normalized squared Gaussian width ------------------------------------------------

def _abs(theta: np.ndarray, a: float, r2: float) -> np.ndarray:
    return a / (a + r2 * np.abs(theta))


def _drop(theta: np.ndarray, a: float, r2: float) -> np.ndarray:
    return np.where(theta < 0, 0.0, a / (a + r2 * np.maximum(theta, 0.0)))


def _flat(theta: np.ndarray, a: float, r2: float) -> np.ndarray:
    return np.where(theta < 0, 1.0, a / (a + r2 * np.maximum(theta, 0.0)))


# What a negative eigenvalue contributes: "abs" (authors) treats it as curvature |λ|; "drop" gives
# it no width (0, no renormalization); "flat" treats it as a flat direction (term 1). Under every
# policy a node with |θ| ≤ the zero-curvature tolerance is a flat direction (term 1): see `zero_tol`.
EIGEN_POLICIES: dict[str, Callable[[np.ndarray, float, float], np.ndarray]] = {
    "abs": _abs, "drop": _drop, "flat": _flat,
}

# The zero-curvature tolerance, relative to the spectral radius ρ = max |θ|, in units of the
# rounding unit eps of the operator's dtype: |θ| ≤ ZERO_CURVATURE_ULPS · eps · ρ is zero curvature.
# Measured on the 1,810-parameter MLPs of docs/zero_mass.md (exact float64 Hessians): eigenvalues
# that are zero in exact arithmetic come out within 2·eps·ρ, of either sign, and every eigenvalue
# between 2·eps·ρ and 800·eps·ρ is positive; the same Hessians formed in float32 move every
# eigenvalue by ≤ 12·eps32·ρ. 64 clears both noise floors ≥ 5×; a real curvature below it
# (≤ 7.6e-6·ρ in float32, 1.4e-14·ρ in float64) changes its term by at most R²·tol/2ε.
ZERO_CURVATURE_ULPS = 64.0


def check_policy(policy: str) -> str:
    if policy not in EIGEN_POLICIES:
        raise ValueError(f"eigen_policy {policy!r}: choose from {sorted(EIGEN_POLICIES)}")
    return policy


def _valid(spectrum: SLQResult) -> np.ndarray:
    return np.arange(spectrum.nodes.shape[1])[None, :] < np.asarray(spectrum.steps)[:, None]


def rounding_eps(spectrum: SLQResult) -> float:
    """eps of the coarsest dtype the run computed in: `info["operator_dtype"]` and
    `info["basis_dtype"]` where recorded (names like "float32"), float64 when neither is."""
    names = [spectrum.info.get(k) for k in ("operator_dtype", "basis_dtype")]
    found = [torch.finfo(getattr(torch, str(n).removeprefix("torch."))).eps for n in names if n]
    return float(max(found)) if found else float(np.finfo(np.float64).eps)


def zero_curvature_tol(spectrum: SLQResult, zero_tol: float | None = None) -> float:
    """The absolute tolerance |θ| ≤ tol under which a node is zero curvature (term 1).

    tol = zero_tol · ρ, ρ = max |θ| over every probe's nodes (the spectral radius estimate: the
    extreme Ritz values converge first); `zero_tol` None means ZERO_CURVATURE_ULPS · eps(dtype)
    with the dtype from `rounding_eps`. Why: the sign of an eigenvalue at rounding level is noise,
    and under `drop` it decided between term 0 and term 1 (docs/algorithms.md §7). `zero_tol=0` is the
    behaviour before this rule (only exact zeros are flat).
    """
    rel = ZERO_CURVATURE_ULPS * rounding_eps(spectrum) if zero_tol is None else float(zero_tol)
    if not (rel >= 0 and math.isfinite(rel)):
        raise ValueError(f"zero_tol {zero_tol}: must be a finite number ≥ 0")
    nodes = spectrum.nodes[_valid(spectrum)]
    rho = float(np.abs(nodes).max()) if nodes.size else 0.0
    return rel * rho


def _terms(policy: str, tol: float) -> Callable[[np.ndarray, float, float], np.ndarray]:
    term = EIGEN_POLICIES[check_policy(policy)]
    return lambda t, a, r2: np.where(np.abs(t) <= tol, 1.0, term(t, a, r2))


def probe_g(spectrum: SLQResult, epsilon: float, r: float, policy: str = "abs", *,
            tol: float = 0.0) -> np.ndarray:
    """Σ_j τ_j·term(θ_j) of each probe alone (P,), on the deflated operator (no zero mass);
    `tol` is the absolute zero-curvature tolerance (`zero_curvature_tol`)."""
    term = _terms(policy, tol)
    a, r2 = 2.0 * check_epsilon(epsilon), float(r) ** 2
    valid = _valid(spectrum)
    vals = np.zeros_like(spectrum.nodes)
    vals[valid] = term(spectrum.nodes[valid], a, r2)
    return (spectrum.weights * vals).sum(axis=1)


def g_of_r(spectrum: SLQResult, epsilon: float, r: float, policy: str = "abs", *,
           zero_tol: float | None = None, tol: float | None = None) -> float:
    """G(R) = q + (1 − q)·mean_p Σ_j τ_j·term(θ_j) summed over the nodes directly (no binning).

    Nodes with |θ| ≤ tol count as zero curvature (term 1) under every policy; tol is absolute
    when given, else `zero_curvature_tol(spectrum, zero_tol)`.
    """
    tol = zero_curvature_tol(spectrum, zero_tol) if tol is None else float(tol)
    q = spectrum.zero_mass
    return float(q + (1 - q) * probe_g(spectrum, epsilon, r, policy, tol=tol).mean())


def _jensen(spectrum: SLQResult, epsilon: float, policy: str, tol: float = 0.0) -> Callable[[float], float]:
    """A lower bound B(R) ≤ G(R) from Jensen's inequality (our derivation).

    x ↦ 2ε/(2ε + R²x) is convex, so the mean of the terms over the eigenvalues a policy treats
    as curvature is ≥ the term at their mean. With mass p of those eigenvalues, mean curvature
    m/p and a constant c from the others: B(R) = c + p · 2ε/(2ε + R² m/p). For "abs", c = 0, p = 1,
    m = tr|H|/D, i.e. removable ≥ 2εD/(2εD + R² tr|H|). Nodes with |θ| ≤ tol enter as curvature 0
    (their term 1 is the term at 0, so convexity still applies).
    """
    neg = spectrum.expect(lambda t: (t < -tol).astype(np.float64))
    if policy == "abs":
        c, p, m = 0.0, 1.0, spectrum.expect(lambda t: np.where(np.abs(t) <= tol, 0.0, np.abs(t)))
    else:
        pos = spectrum.expect(lambda t: np.where(t > tol, t, 0.0))
        c, p, m = (neg if policy == "flat" else 0.0), 1.0 - neg, pos
    a = 2.0 * epsilon

    def bound(r: float) -> float:
        if p <= 0:
            return c
        return c + p * a / (a + r * r * m / p)

    return bound


def solve_fixed_point(h: Callable[[float], float]) -> float:
    """Smallest s in [0, 1] with h(s) ≥ 0 for an increasing h with h(0) < 0 ≤ h(1), by bisection
    until the bracket cannot shrink in float64."""
    lo, hi = 0.0, 1.0
    if h(lo) >= 0:
        return lo
    while True:
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            return hi
        if h(mid) >= 0:
            hi = mid
        else:
            lo = mid


def removed_frac_at_scale(dist: SparseDistance, spectrum: SLQResult, epsilon: float, policy: str = "abs", *,
                          tol: float, scale: float = 1.0) -> float:
    """s* solving s = G(scale·R(s)): the predicted removable fraction of the weights multiplied by
    `scale`, with the spectrum held fixed (`tol` absolute, as `zero_curvature_tol` gives it).

    `predict_limit` solves it at scale 1 (1.0·R is R bit for bit, so scale 1 reproduces its s*
    exactly). Why a scale: the paper's weight-magnitude experiment multiplies the trained weights by
    1…5; R grows linearly with them, and holding the Hessian fixed isolates that one factor
    (scaling the weights of a real network would also change its Hessian: not modelled here).
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale {scale}: must be a finite number > 0")
    return solve_fixed_point(lambda s: s - g_of_r(spectrum, epsilon, scale * dist(s), policy, tol=tol))


def kinematic_halfwidth(dim: int, eta: float = 0.05) -> float:
    """a_η/√D with a_η = sqrt(8 ln(4/η)) (approximate kinematic formula, Amelunxen et al. 2014):
    the transition of a random-subspace intersection is this sharp; our reading of the paper's base."""
    if not 0 < eta < 1:
        raise ValueError(f"eta {eta}: must be in (0, 1)")
    return math.sqrt(8 * math.log(4 / eta)) / math.sqrt(dim)


# --- how far s* is resolved ---------------------------------------------------------------------

RESOLUTION_TOL = 0.01  # spread of s*(k) over the last quarter, or 2·SE, above this: unresolved


def truncated(spectrum: SLQResult, k: int) -> SLQResult:
    """The SLQ result the first k Lanczos steps of every probe would have given.

    Each probe's Jacobi matrix is re-diagonalized from its stored alphas/betas, leading k × k block
    only (a probe that stopped earlier keeps all its steps: it had found an invariant subspace), by
    `gauss_rule` (eigenvalues only; the weights agree with eigh's to ~1e-11 relative).
    Needs the coefficients (`alphas`, `betas`); 1 ≤ k ≤ the run's depth.
    """
    if spectrum.alphas is None or spectrum.betas is None:
        raise ValueError("truncated: this result carries no Lanczos coefficients (alphas/betas)")
    m = int(spectrum.iterations)
    if not 1 <= k <= m:
        raise ValueError(f"truncated: k {k} must be in [1, {m}]")
    steps = np.minimum(np.asarray(spectrum.steps), k)
    nodes, weights = ritz(spectrum.alphas, spectrum.betas, steps, k, fast=True)
    return replace(spectrum, nodes=nodes, weights=weights, steps=steps, iterations=k,
                   alphas=spectrum.alphas[:, :k], betas=spectrum.betas[:, :k],
                   info={**spectrum.info, "rule": f"gauss@{k}"})


WINDOW_DEPTHS = 16  # strides of the resolution window: about this many depths k are compared


def spread_window(m: int) -> list[int]:
    """The depths k whose s*(k) the resolution signal compares: the last quarter ⌈3m/4⌉ … m, every
    step while that is at most WINDOW_DEPTHS + 1 depths, else every stride-th (a power of two, so
    that the windows of successive `iterations: auto` checks share their depths), m and ⌈3m/4⌉
    always included. Why strided: each depth costs one tridiagonal eigenproblem per probe; 17 depths
    keep the signal well under 1% of the SLQ time while still seeing s* oscillate across the window."""
    lo = max(1, math.ceil(3 * m / 4))
    if m - lo <= WINDOW_DEPTHS:
        return list(range(lo, m + 1))
    stride = 2 ** math.ceil(math.log2((m - lo) / WINDOW_DEPTHS))
    return sorted({lo, m, *range(math.ceil(lo / stride) * stride, m + 1, stride)})


def jackknife_se(values: Sequence[float]) -> float:
    """Jackknife standard error from leave-one-out estimates: sqrt((P−1)/P · Σ (x_i − x̄)²)."""
    x = np.asarray(values, dtype=np.float64)
    return float(math.sqrt((len(x) - 1) / len(x) * ((x - x.mean()) ** 2).sum()))


@dataclass(frozen=True)
class LimitEquation:
    """s = G(R(s)) for fixed weights, ε, policy and absolute zero-curvature tolerance: what every
    estimate of s* (the run, its truncations, leave-one-out, the depth loop of `iterations: auto`)
    solves, so they differ only in the spectrum they are given."""

    dist: SparseDistance
    epsilon: float
    policy: str
    tol: float  # absolute: |θ| ≤ tol is zero curvature (`zero_curvature_tol` of the full run)

    def solve(self, spectrum: SLQResult) -> float:
        return removed_frac_at_scale(self.dist, spectrum, self.epsilon, self.policy, tol=self.tol)

    def depth_spread(self, spectrum: SLQResult, rules: dict[int, SLQResult] | None = None) -> float | None:
        """max − min of s*(k) over `spread_window(m)`, from the stored coefficients (no products).

        Why this and not s*(m/2) vs s*(m): two single depths can agree by chance while both are far
        off (on exact spectra s*(16) equalled s*(32) with a 7-point error), and m/2 is far from
        where the run stands, so the comparison also flagged converged runs. The last quarter asks
        the question that matters: has s* stopped moving where the run ended? None without
        coefficients or with m < 2. `rules` caches the truncated results by depth (a growing run
        keeps its earlier coefficients, so they stay valid)."""
        m = int(spectrum.iterations)
        if spectrum.alphas is None or spectrum.betas is None or m < 2:
            return None
        rules = {} if rules is None else rules
        values = []
        for k in spread_window(m):
            if k not in rules:
                rules[k] = spectrum if k == m else truncated(spectrum, k)
            values.append(self.solve(rules[k]))
        return float(max(values) - min(values))

    def jackknife(self, spectrum: SLQResult) -> float | None:
        """Jackknife SE of s* over probes (None with one probe): leave each probe out, re-solve.

        Jackknife rather than the spread of single-probe solutions because s* is a nonlinear
        function of the probe *mean* of the quadratures: the jackknife measures the error of that
        statistic, while a single probe's fixed point solves a different (noisier) equation."""
        P, q = spectrum.probes, spectrum.zero_mass
        if P < 2:
            return None

        def loo(p: int) -> float:
            def h(s: float) -> float:
                g = probe_g(spectrum, self.epsilon, self.dist(s), self.policy, tol=self.tol)
                return s - (q + (1 - q) * (g.sum() - g[p]) / (P - 1))
            return solve_fixed_point(h)

        return jackknife_se([loo(p) for p in range(P)])

    def negative_share(self, spectrum: SLQResult, s: float) -> float:
        """What `drop` removes from G at R(s) relative to `abs`: (1 − q) × the quadrature mass of
        the nodes below −tol, each weighted by its `abs` term 2ε/(2ε + R²|θ|).

        Why this measures whether `drop` is well posed: drop's term jumps from 1 to 0 as a node
        crosses zero, so where this share is large, s* under drop depends on where Lanczos happens
        to put the near-zero mass (it swung 0.15 → 0.96 → 0.23 across depths on a real operator);
        where it is small, drop and abs differ by little and neither moves with the depth."""
        r2 = self.dist(s) ** 2
        a = 2.0 * self.epsilon
        share = spectrum.quadrature(lambda t: np.where(t < -self.tol, a / (a + r2 * np.abs(t)), 0.0))
        return float((1 - spectrum.zero_mass) * share)


def depth_resolved(weights: Tensor | Mapping[str, Tensor] | Sequence[Tensor] | SparseDistance, epsilon: float, *,
                   policy: str = "abs", zero_tol: float | None = None,
                   resolution_tol: float = RESOLUTION_TOL) -> Callable[[SLQResult], bool]:
    """The stopping rule of `iterations: auto`: True once the spread of s*(k) over the last quarter
    of the run is ≤ `resolution_tol` (`LimitEquation.depth_spread`).

    Why the spread alone and not 2·SE as well: more Lanczos steps cure a quadrature that has not
    converged, not the probes' sampling noise; a run stopped for its SE would only grow to the cap.
    The prediction's `unresolved` flag still reads both."""
    dist = weights if isinstance(weights, SparseDistance) else SparseDistance(weights)
    eps, tol = check_epsilon(epsilon), check_resolution_tol(resolution_tol)
    check_policy(policy)

    rules: dict[int, SLQResult] = {}  # truncations by depth, shared by the checks of one run

    def until(partial: SLQResult) -> bool:
        eq = limit_equation(dist, partial, eps, policy=policy, zero_tol=zero_tol)
        spread = eq.depth_spread(partial, rules)
        return spread is not None and spread <= tol

    return until


# --- the authors' estimator, side by side ---------------------------------------------------------

AUTHORS_ITERATIONS = 128     # their Lanczos depth (one probe)
AUTHORS_BINS = 100_000       # bins of their smoothed density
AUTHORS_SIGMA_SQUARED = 1e-10  # their Gaussian variance, times max(1, range of the nodes)
AUTHORS_OVERHEAD = 0.01      # margin of their grid beyond the extreme nodes
AUTHORS_GRID = 1000          # removed fractions i/1000 they scan


def authors_estimate(dist: SparseDistance, spectrum: SLQResult, epsilon: float, *, probe: int = 0,
                     iterations: int = AUTHORS_ITERATIONS, bins: int = AUTHORS_BINS,
                     sigma_squared: float = AUTHORS_SIGMA_SQUARED, overhead: float = AUTHORS_OVERHEAD,
                     grid: int = AUTHORS_GRID) -> float:
    """s* as the authors' code estimates it (Global-One-shot-Pruning), from probe `probe` of our run.

    Their steps: the Ritz nodes and weights of one probe after 128 Lanczos steps (here: the leading
    block of our probe's Jacobi matrix) → a density on `bins` equally spaced points from
    min θ − 0.01 to max θ + 0.01, each node a Gaussian of variance 1e-10·max(1, range), normalized
    to unit integral → bins of zero density dropped, the zero mass appended as one bin at 1e-30 (their
    code appends its count of zero eigenvalues there; our operator is deflated, so our q takes its
    place) → G(R) = Σ_b d_b·2ε/(2ε + R²|g_b|) / Σ_b d_b for integer R → for s = i/1000, R(s)
    rounded to an integer, and s* = the s minimizing |G(R(s)) − s| (the first on ties).

    Why we keep it beside ours: it is what the published numbers were computed with. The binning
    mis-weights nodes (a Gaussian far narrower than a bin lands on a grid point or misses it), R
    rounded to an integer moves G at small R, and one probe carries Hutchinson noise; the difference
    between the two columns is how much of a disagreement is the estimator's.
    """
    eps = check_epsilon(epsilon)
    if spectrum.alphas is not None and spectrum.iterations > iterations:
        spectrum = truncated(spectrum, iterations)
    k = int(spectrum.steps[probe])
    theta, tau = spectrum.nodes[probe, :k], spectrum.weights[probe, :k]
    lo, hi = float(theta.min()) - overhead, float(theta.max()) + overhead
    points = np.linspace(lo, hi, bins)
    var = sigma_squared * max(1.0, hi - lo)
    density = np.zeros(bins)
    step, reach = points[1] - points[0], 40.0 * math.sqrt(var)  # beyond 38.6σ the Gaussian is 0.0 in float64
    for t, w in zip(theta, tau):  # each node's Gaussian only where it is non-zero: the same sums
        i0 = max(0, int(math.floor((t - reach - lo) / step)))
        i1 = min(bins, int(math.ceil((t + reach - lo) / step)) + 1)
        x = points[i0:i1]
        density[i0:i1] += w * np.exp(-((x - t) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)
    density /= density.sum() * (points[1] - points[0])
    keep = density > 0
    d, g = density[keep], np.abs(points[keep])
    q = spectrum.zero_mass
    if q > 0:
        d, g = np.append(d, q / (1 - q) * d.sum()), np.append(g, 1e-30)
    s = np.arange(grid) / grid
    radii = np.rint(np.asarray(dist(s), dtype=np.float64))
    a = 2.0 * eps
    unique, index = np.unique(radii, return_inverse=True)
    width = np.array([(d * np.where(g > 0, a / (a + r * r * g), 1.0)).sum() / d.sum() for r in unique])
    return float(s[int(np.argmin(np.abs(width[index] - s)))])


@dataclass
class LimitPrediction:
    """The predicted pruning limit: both fractions, ε and how it was found, the policy, q, bounds,
    how far the prediction is resolved, and the authors' estimate of the same quantity."""

    removed_frac: float | None     # None: refused (drop where ill posed; `note` says why)
    kept_frac: float | None
    epsilon: float
    epsilon_source: str
    policy: str
    zero_mass: float
    r: float | None                # R(s*)
    g_of_r: float | None           # G(R(s*))
    band_kept_frac_low: float | None  # kinematic band (our derivation)
    band_kept_frac_high: float | None
    trace_bound_removed_frac: float | None  # Jensen bound (our derivation): removable ≥ this
    n_weights: int
    dim: int                       # Hessian dimension D (full, before deflation)
    eta: float = 0.05
    zero_curvature_tol: float = 0.0  # absolute: nodes with |θ| ≤ this count as zero curvature
    radau_rule_removed_frac: float | None = None  # s* by the Gauss–Radau rule (node at 0): diagnostic, no bound
    removed_frac_spread: float | None = None      # max − min of s*(k), k over the last quarter of the run
    removed_frac_se: float | None = None          # jackknife standard error of s* over probes
    resolution_tol: float = RESOLUTION_TOL
    negative_share: float = 0.0    # G at R(s*) that negative curvature carries under abs (what drop removes)
    authors_removed_frac: float | None = None     # the authors' estimator on probe 0 (first 128 steps)
    note: str | None = None        # one line when the prediction is ill posed (drop on indefinite spectra)
    unresolved: bool | None = None  # spread or 2·SE > resolution_tol, or drop ill posed; None: not measurable

    def columns(self) -> dict:
        """The prediction columns of sweeps/schema.py TRIALS."""
        return {
            "epsilon": self.epsilon, "epsilon_source": self.epsilon_source, "eigen_policy": self.policy,
            "zero_mass": self.zero_mass, "predicted_removed_frac": self.removed_frac,
            "predicted_kept_frac": self.kept_frac, "band_kept_frac_low": self.band_kept_frac_low,
            "band_kept_frac_high": self.band_kept_frac_high,
            "trace_bound_removed_frac": self.trace_bound_removed_frac,
            "zero_curvature_tol": self.zero_curvature_tol,
            "predicted_removed_frac_radau_rule": self.radau_rule_removed_frac,
            "predicted_removed_frac_spread": self.removed_frac_spread,
            "predicted_removed_frac_se": self.removed_frac_se,
            "predicted_resolution_tol": self.resolution_tol,
            "predicted_unresolved": self.unresolved,
            "predicted_negative_share": self.negative_share,
            "predicted_removed_frac_authors": self.authors_removed_frac,
            "predicted_note": self.note,
        }


def limit_equation(weights: Tensor | Mapping[str, Tensor] | Sequence[Tensor] | SparseDistance,
                   spectrum: SLQResult, epsilon: float, *, policy: str = "abs",
                   zero_tol: float | None = None) -> LimitEquation:
    """The equation `predict_limit` solves, its zero-curvature tolerance taken from `spectrum`."""
    dist = weights if isinstance(weights, SparseDistance) else SparseDistance(weights)
    return LimitEquation(dist, check_epsilon(epsilon), check_policy(policy), zero_curvature_tol(spectrum, zero_tol))


def check_resolution_tol(resolution_tol: float) -> float:
    if not (resolution_tol > 0 and math.isfinite(resolution_tol)):
        raise ValueError(f"resolution_tol {resolution_tol}: must be a finite number > 0")
    return float(resolution_tol)


def predict_limit(
    weights: Tensor | Mapping[str, Tensor] | Sequence[Tensor],
    slq_result: SLQResult,
    epsilon: float,
    *,
    policy: str = "abs",
    epsilon_source: str = "given",
    eta: float = 0.05,
    zero_tol: float | None = None,
    resolution_tol: float = RESOLUTION_TOL,
) -> LimitPrediction:
    """Solve s = G(R(s)) for the removable fraction s* of the prunable `weights`.

    G uses the full Hessian dimension (zero mass included); nodes with |θ| ≤
    `zero_curvature_tol(slq_result, zero_tol)` are zero curvature under every policy. The band is
    kept_frac ± a_η/√D and the trace bound solves s = B(R(s)) with Jensen's B ≤ G, so it lies
    below s* (both ours).

    Resolution (docs/algorithms.md §7): `removed_frac_spread` is max − min of s*(k) over the last
    quarter of the run, k = ⌈3m/4⌉ … m (`LimitEquation.depth_spread`, from the stored Lanczos
    coefficients) and `removed_frac_se` the jackknife standard error over probes (needs ≥ 2).
    `unresolved` is set when the spread or 2·SE exceeds `resolution_tol`, or when the policy is
    `drop` and negative curvature carries more than `resolution_tol` of G at R(s*)
    (`negative_share`). Then drop is ill posed: its s* moves with where Lanczos happens to put the
    near-zero mass (exactly what G_abs − G_drop measures), so it is refused — the fractions, R,
    G, the band and the bounds are None and `note` says why in one line — and reported only where
    the share is below the tolerance, where drop and abs differ by less than it.

    `authors_removed_frac` is the authors' estimator on probe 0 (`authors_estimate`), for reading
    the two side by side. `radau_rule_removed_frac` is s* with the Gauss–Radau rule
    (`SLQResult.radau`, node at 0): a diagnostic, not a bound (with probe noise or negative
    eigenvalues the Gauss/Radau pair brackets nothing).
    """
    if epsilon_source not in EPSILON_SOURCES:
        raise ValueError(f"epsilon_source {epsilon_source!r}: choose from {list(EPSILON_SOURCES)}")
    resolution_tol = check_resolution_tol(resolution_tol)
    eq = limit_equation(weights, slq_result, epsilon, policy=policy, zero_tol=zero_tol)
    dist, eps, tol = eq.dist, eq.epsilon, eq.tol
    s_star = eq.solve(slq_result)
    bound = _jensen(slq_result, eps, policy, tol)
    s_bound = solve_fixed_point(lambda s: s - bound(dist(s)))
    half = kinematic_halfwidth(slq_result.full_dim, eta)
    kept = 1.0 - s_star
    s_radau = eq.solve(slq_result.radau()) if slq_result.alphas is not None else None
    spread, se = eq.depth_spread(slq_result), eq.jackknife(slq_result)
    negative = eq.negative_share(slq_result, s_star)
    signals = ([spread] if spread is not None else []) + ([2 * se] if se is not None else [])
    unresolved = bool(max(signals) > resolution_tol) if signals else None
    common = dict(epsilon=eps, epsilon_source=epsilon_source, policy=policy, zero_mass=slq_result.zero_mass,
                  n_weights=dist.n, dim=slq_result.full_dim, eta=eta, zero_curvature_tol=tol,
                  removed_frac_spread=spread, removed_frac_se=se, resolution_tol=resolution_tol,
                  negative_share=negative, authors_removed_frac=authors_estimate(dist, slq_result, eps))
    if policy == "drop" and negative > resolution_tol:
        note = (f"drop refused: negative curvature carries {negative:.3g} of G at R(s*) (> {resolution_tol:g}), "
                "so s* moves with where Lanczos puts the near-zero mass; read eigen_policy abs")
        return LimitPrediction(removed_frac=None, kept_frac=None, r=None, g_of_r=None, band_kept_frac_low=None,
                               band_kept_frac_high=None, trace_bound_removed_frac=None, note=note,
                               unresolved=True, **common)
    return LimitPrediction(
        removed_frac=s_star, kept_frac=kept, r=dist(s_star), g_of_r=g_of_r(slq_result, eps, dist(s_star), policy, tol=tol),
        band_kept_frac_low=max(0.0, kept - half), band_kept_frac_high=min(1.0, kept + half),
        trace_bound_removed_frac=s_bound, radau_rule_removed_frac=s_radau, unresolved=unresolved, **common,
    )


# --- the actual limit from a curve ---------------------------------------------------------------

LIMIT_RULES = ("strict", "tol", "loss")


@dataclass
class ActualLimit:
    """Largest removed fraction on the curve that keeps the dense model's quality, by named rules.

    strict (authors): test accuracy > dense accuracy; tol: ≥ dense − tolerance_pp/100; loss (the
    theory's own criterion): training loss ≤ dense training loss + ε, the ε of the prediction — the
    sublevel set the Gaussian width measures is one of the training loss, not of test accuracy.
    When no point qualifies the limit is 0 (the dense network itself); without training losses
    the loss rule is None.
    """

    removed_frac_strict: float
    kept_frac_strict: float
    removed_frac_tol: float
    kept_frac_tol: float
    tolerance_pp: float
    dense_acc: float
    removed_frac_loss: float | None = None
    kept_frac_loss: float | None = None

    def removed_frac(self, rule: str) -> float | None:
        return getattr(self, f"removed_frac_{rule}")

    def columns(self) -> dict:
        out = {"limit_tolerance_pp": self.tolerance_pp}
        for rule in LIMIT_RULES:
            out[f"actual_removed_frac_{rule}"] = getattr(self, f"removed_frac_{rule}")
            out[f"actual_kept_frac_{rule}"] = getattr(self, f"kept_frac_{rule}")
        return out


def actual_limit(removed_frac: Sequence[float], test_acc: Sequence[float], dense_acc: float,
                 *, tolerance_pp: float = 0.1, train_loss: Sequence[float] | None = None,
                 dense_train_loss: float | None = None, epsilon: float | None = None) -> ActualLimit:
    """Read the actual limit off a curve; accuracies are fractions in [0, 1].

    The loss rule needs `train_loss` (one per point), `dense_train_loss` and `epsilon` together."""
    s, acc = np.asarray(removed_frac, dtype=np.float64), np.asarray(test_acc, dtype=np.float64)
    if s.shape != acc.shape or s.ndim != 1 or len(s) == 0:
        raise ValueError(f"curve: removed_frac {s.shape} and test_acc {acc.shape} must be equal, non-empty 1-D")
    if tolerance_pp < 0:
        raise ValueError(f"limit_tolerance_pp {tolerance_pp}: must be ≥ 0")

    def largest(ok: np.ndarray) -> float:
        return float(s[ok].max()) if ok.any() else 0.0

    rs = largest(acc > dense_acc)
    rt = largest(acc >= dense_acc - tolerance_pp / 100.0 - 1e-12)
    rl = None
    if train_loss is not None or dense_train_loss is not None or epsilon is not None:
        if train_loss is None or dense_train_loss is None or epsilon is None:
            raise ValueError("actual_limit: the loss rule needs train_loss, dense_train_loss and epsilon")
        loss = np.asarray(train_loss, dtype=np.float64)
        if loss.shape != s.shape:
            raise ValueError(f"curve: train_loss {loss.shape} must match removed_frac {s.shape}")
        rl = largest(loss <= float(dense_train_loss) + check_epsilon(epsilon))
    return ActualLimit(rs, 1.0 - rs, rt, 1.0 - rt, float(tolerance_pp), float(dense_acc),
                       rl, None if rl is None else 1.0 - rl)


def limit_columns(prediction: LimitPrediction, actual: ActualLimit | None = None) -> dict:
    """TRIALS columns of a limit cell: the prediction, its bounds, and the actual limit."""
    out = prediction.columns()
    if actual is not None:
        out.update(actual.columns())
    return out


def curve_rows(removed_frac: Sequence[float], test_acc: Sequence[float], test_loss: Sequence[float],
               train_loss: Sequence[float], weights, spectrum: SLQResult, epsilon: float,
               policy: str = "abs", *, zero_tol: float | None = None) -> list[dict]:
    """Rows of sweeps/schema.py CURVES (without cell_id, sweep, schema_version); `zero_tol` as in
    `predict_limit`."""
    dist = SparseDistance(weights)
    tol = zero_curvature_tol(spectrum, zero_tol)
    rows = []
    for s, acc, tl, trl in zip(removed_frac, test_acc, test_loss, train_loss):
        r = dist(float(s))
        rows.append({"removed_frac": float(s), "kept_frac": 1.0 - float(s), "test_acc": float(acc),
                     "test_loss": float(tl), "train_loss": float(trl), "r": r,
                     "g_of_r": g_of_r(spectrum, epsilon, r, policy, tol=tol)})
    return rows

