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

from pruning.slq import SLQResult
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

RESOLUTION_TOL = 0.01  # |s*(m) − s*(m/2)| or 2·SE above this flags the prediction as unresolved


def half_iterations(spectrum: SLQResult) -> SLQResult | None:
    """The SLQ result the first ⌊m/2⌋ Lanczos steps of every probe would have given.

    Each probe's Jacobi matrix is re-diagonalized from its stored alphas/betas, leading
    ⌊m/2⌋ × ⌊m/2⌋ block only (a probe that stopped earlier keeps all its steps: it had found an
    invariant subspace). None when the result carries no coefficients or m < 2.
    """
    m = int(spectrum.iterations)
    if spectrum.alphas is None or spectrum.betas is None or m < 2:
        return None
    half = m // 2
    P = len(spectrum.steps)
    nodes, weights = np.zeros((P, half)), np.zeros((P, half))
    steps = np.minimum(np.asarray(spectrum.steps), half)
    for p, k in enumerate(steps):
        k = int(k)
        if k == 1:
            theta, U = spectrum.alphas[p, :1], np.ones((1, 1))
        else:
            theta, U = eigh_tridiagonal(spectrum.alphas[p, :k], spectrum.betas[p, : k - 1])
        nodes[p, :k], weights[p, :k] = theta, U[0] ** 2
    return replace(spectrum, nodes=nodes, weights=weights, steps=steps, iterations=half,
                   alphas=spectrum.alphas[:, :half], betas=spectrum.betas[:, :half],
                   info={**spectrum.info, "rule": f"gauss@{half}"})


def jackknife_se(values: Sequence[float]) -> float:
    """Jackknife standard error from leave-one-out estimates: sqrt((P−1)/P · Σ (x_i − x̄)²)."""
    x = np.asarray(values, dtype=np.float64)
    return float(math.sqrt((len(x) - 1) / len(x) * ((x - x.mean()) ** 2).sum()))


@dataclass
class LimitPrediction:
    """The predicted pruning limit: both fractions, ε and how it was found, the policy, q, bounds,
    and how far the prediction is resolved (m/2 vs m steps, standard error over probes)."""

    removed_frac: float
    kept_frac: float
    epsilon: float
    epsilon_source: str
    policy: str
    zero_mass: float
    r: float                       # R(s*)
    g_of_r: float                  # G(R(s*))
    band_kept_frac_low: float      # kinematic band (our derivation)
    band_kept_frac_high: float
    trace_bound_removed_frac: float  # Jensen bound (our derivation): removable ≥ this
    n_weights: int
    dim: int                       # Hessian dimension D (full, before deflation)
    eta: float = 0.05
    zero_curvature_tol: float = 0.0  # absolute: nodes with |θ| ≤ this count as zero curvature
    radau_rule_removed_frac: float | None = None  # s* by the Gauss–Radau rule (node at 0): diagnostic, no bound
    half_iters_removed_frac: float | None = None  # s* from the first m/2 Lanczos steps
    removed_frac_se: float | None = None          # jackknife standard error of s* over probes
    resolution_tol: float = RESOLUTION_TOL
    unresolved: bool | None = None  # |s* − half| or 2·SE > resolution_tol; None: neither measurable

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
            "predicted_removed_frac_half_iters": self.half_iters_removed_frac,
            "predicted_removed_frac_se": self.removed_frac_se,
            "predicted_resolution_tol": self.resolution_tol,
            "predicted_unresolved": self.unresolved,
        }


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

    Resolution (docs/algorithms.md §7): `half_iters_removed_frac` is s* from the first m/2 Lanczos
    steps (needs the Lanczos coefficients) and `removed_frac_se` the jackknife standard error over
    probes (needs ≥ 2): leave each probe out, re-solve, SE = sqrt((P−1)/P·Σ(s₋ₚ − s̄)²). Jackknife
    rather than the spread of single-probe solutions because s* is a nonlinear function of the
    probe *mean* of the quadratures: the jackknife measures the error of that statistic, while a
    single probe's fixed point solves a different (noisier, biased) equation. `unresolved` is set
    when |s* − half| or 2·SE exceeds `resolution_tol`.

    `radau_rule_removed_frac` is s* with the Gauss–Radau rule (`SLQResult.radau`, node at 0).
    For a PSD spectrum and the f of G, Gauss and Radau bound each probe's quadratic form, so they
    bracket the probe-mean estimate of s*; not the exact s*, which probe noise moves (and with
    negative eigenvalues not even that). Kept as a diagnostic, not as a bound.
    """
    eps = check_epsilon(epsilon)
    check_policy(policy)
    if epsilon_source not in EPSILON_SOURCES:
        raise ValueError(f"epsilon_source {epsilon_source!r}: choose from {list(EPSILON_SOURCES)}")
    if not (resolution_tol > 0 and math.isfinite(resolution_tol)):
        raise ValueError(f"resolution_tol {resolution_tol}: must be a finite number > 0")
    tol = zero_curvature_tol(slq_result, zero_tol)
    dist = SparseDistance(weights)

    def solve(spectrum: SLQResult) -> float:
        return removed_frac_at_scale(dist, spectrum, eps, policy, tol=tol)

    s_star = solve(slq_result)
    bound = _jensen(slq_result, eps, policy, tol)
    s_bound = solve_fixed_point(lambda s: s - bound(dist(s)))
    half = kinematic_halfwidth(slq_result.full_dim, eta)
    kept = 1.0 - s_star
    s_radau = solve(slq_result.radau()) if slq_result.alphas is not None else None
    halved = half_iterations(slq_result)
    s_half = solve(halved) if halved is not None else None
    se = None
    P, q = slq_result.probes, slq_result.zero_mass
    if P >= 2:
        def loo(p: int) -> float:
            def h(s: float) -> float:
                g = probe_g(slq_result, eps, dist(s), policy, tol=tol)
                return s - (q + (1 - q) * (g.sum() - g[p]) / (P - 1))
            return solve_fixed_point(h)

        se = jackknife_se([loo(p) for p in range(P)])
    spreads = ([abs(s_star - s_half)] if s_half is not None else []) + ([2 * se] if se is not None else [])
    return LimitPrediction(
        removed_frac=s_star, kept_frac=kept, epsilon=eps, epsilon_source=epsilon_source,
        policy=policy, zero_mass=slq_result.zero_mass, r=dist(s_star),
        g_of_r=g_of_r(slq_result, eps, dist(s_star), policy, tol=tol),
        band_kept_frac_low=max(0.0, kept - half), band_kept_frac_high=min(1.0, kept + half),
        trace_bound_removed_frac=s_bound, n_weights=dist.n, dim=slq_result.full_dim, eta=eta,
        zero_curvature_tol=tol, radau_rule_removed_frac=s_radau, half_iters_removed_frac=s_half,
        removed_frac_se=se, resolution_tol=float(resolution_tol),
        unresolved=bool(max(spreads) > resolution_tol) if spreads else None,
    )


# --- the actual limit from a curve ---------------------------------------------------------------

LIMIT_RULES = ("strict", "tol")


@dataclass
class ActualLimit:
    """Largest removed fraction that keeps the dense accuracy, by two named rules.

    strict (authors): test accuracy > dense accuracy; tol: ≥ dense − tolerance_pp/100.
    When no point qualifies the limit is 0 (the dense network itself).
    """

    removed_frac_strict: float
    kept_frac_strict: float
    removed_frac_tol: float
    kept_frac_tol: float
    tolerance_pp: float
    dense_acc: float

    def columns(self) -> dict:
        return {"actual_removed_frac_strict": self.removed_frac_strict,
                "actual_kept_frac_strict": self.kept_frac_strict,
                "actual_removed_frac_tol": self.removed_frac_tol,
                "actual_kept_frac_tol": self.kept_frac_tol, "limit_tolerance_pp": self.tolerance_pp}


def actual_limit(removed_frac: Sequence[float], test_acc: Sequence[float], dense_acc: float,
                 *, tolerance_pp: float = 0.1) -> ActualLimit:
    """Read the actual limit off a curve; accuracies are fractions in [0, 1]."""
    s, acc = np.asarray(removed_frac, dtype=np.float64), np.asarray(test_acc, dtype=np.float64)
    if s.shape != acc.shape or s.ndim != 1 or len(s) == 0:
        raise ValueError(f"curve: removed_frac {s.shape} and test_acc {acc.shape} must be equal, non-empty 1-D")
    if tolerance_pp < 0:
        raise ValueError(f"limit_tolerance_pp {tolerance_pp}: must be ≥ 0")
    strict = s[acc > dense_acc]
    tol = s[acc >= dense_acc - tolerance_pp / 100.0 - 1e-12]
    rs = float(strict.max()) if len(strict) else 0.0
    rt = float(tol.max()) if len(tol) else 0.0
    return ActualLimit(rs, 1.0 - rs, rt, 1.0 - rt, float(tolerance_pp), float(dense_acc))


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

