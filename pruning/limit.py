"""The pruning limit of *How Sparse Can We Prune A Deep Network* (ALGORITHMS.md §7).

For trained prunable weights w* (N of them) and the Hessian spectrum from SLQ:
- R(s): distance from w* to its best sparse approximation with removed fraction s, i.e.
  sqrt(Σ of the ⌈sN⌉ smallest w_i²) — one sort, prefix sums, O(1) per s;
- G(R) = (1/D) Σ_i 2ε / (2ε + R²|λ_i|): the normalized statistical dimension of the ε-sublevel
  ellipsoid seen from distance R, summed directly over the SLQ nodes (with the zero mass q at 0);
- the predicted removable fraction s* solves s = G(R(s)); s − G(R(s)) increases with s, so
  bisection finds it to machine precision.
The kinematic band and the Jensen trace bound are our derivations from the paper's framework.
The actual limit is read from a one-shot accuracy-vs-sparsity curve by a named rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from pruning.slq import SLQResult

# --- ε: the loss tolerance -----------------------------------------------------------------------

EPSILON_SOURCES = ("batch_loss_std", "given")


@torch.no_grad()
def batch_loss_std(model: nn.Module, train, *, batch_size: int = 128, device: str | torch.device = "cpu",
                   loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> float:
    """ε as the authors take it: the standard deviation of the per-batch training loss over one pass.

    Why this: it is the scale of loss change that SGD noise makes anyway, so a perturbation costing
    less than ε is invisible. We use one deterministic pass (eval mode, fixed order, no
    augmentation) and the sample standard deviation (ddof=1) over full batches.
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    was_training = model.training
    model.eval()
    losses = [float(loss_fn(model(x), y)) for x, y in
              train.batches(batch_size, shuffle=False, device=device, drop_last=True)]
    model.train(was_training)
    if len(losses) < 2:
        raise ValueError(f"batch_size {batch_size}: gives {len(losses)} full batch(es); ε needs ≥ 2")
    return float(np.std(losses, ddof=1))


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
# it no width (0, no renormalization); "flat" treats it as a flat direction (term 1).
EIGEN_POLICIES: dict[str, Callable[[np.ndarray, float, float], np.ndarray]] = {
    "abs": _abs, "drop": _drop, "flat": _flat,
}


def check_policy(policy: str) -> str:
    if policy not in EIGEN_POLICIES:
        raise ValueError(f"eigen_policy {policy!r}: choose from {sorted(EIGEN_POLICIES)}")
    return policy


def g_of_r(spectrum: SLQResult, epsilon: float, r: float, policy: str = "abs") -> float:
    """G(R) = q + (1 − q)·mean_p Σ_j τ_j·term(θ_j) summed over the nodes directly (no binning)."""
    term = EIGEN_POLICIES[check_policy(policy)]
    a, r2 = 2.0 * check_epsilon(epsilon), float(r) ** 2
    return spectrum.expect(lambda t: term(t, a, r2))


def _jensen(spectrum: SLQResult, epsilon: float, policy: str) -> Callable[[float], float]:
    """A lower bound B(R) ≤ G(R) from Jensen's inequality (our derivation).

    x ↦ 2ε/(2ε + R²x) is convex, so the mean of the terms over the eigenvalues a policy treats
    as curvature is ≥ the term at their mean. With mass p of those eigenvalues, mean curvature
    m/p and a constant c from the others: B(R) = c + p · 2ε/(2ε + R² m/p). For "abs", c = 0, p = 1,
    m = tr|H|/D, i.e. removable ≥ 2εD/(2εD + R² tr|H|).
    """
    neg = spectrum.expect(lambda t: (t < 0).astype(np.float64))
    if policy == "abs":
        c, p, m = 0.0, 1.0, spectrum.expect(np.abs)
    else:
        pos = spectrum.expect(lambda t: np.maximum(t, 0.0))
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


def kinematic_halfwidth(dim: int, eta: float = 0.05) -> float:
    """a_η/√D with a_η = sqrt(8 ln(4/η)) (approximate kinematic formula, Amelunxen et al. 2014):
    the transition of a random-subspace intersection is this sharp; our reading of the paper's base."""
    if not 0 < eta < 1:
        raise ValueError(f"eta {eta}: must be in (0, 1)")
    return math.sqrt(8 * math.log(4 / eta)) / math.sqrt(dim)


@dataclass
class LimitPrediction:
    """The predicted pruning limit: both fractions, ε and how it was found, the policy, q, bounds."""

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
    radau_removed_frac: float | None = None  # s* with the Gauss–Radau rule: the bracket's upper end

    def columns(self) -> dict:
        """The prediction columns of sweeps/schema.py TRIALS."""
        return {
            "epsilon": self.epsilon, "epsilon_source": self.epsilon_source, "eigen_policy": self.policy,
            "zero_mass": self.zero_mass, "predicted_removed_frac": self.removed_frac,
            "predicted_kept_frac": self.kept_frac, "band_kept_frac_low": self.band_kept_frac_low,
            "band_kept_frac_high": self.band_kept_frac_high,
            "trace_bound_removed_frac": self.trace_bound_removed_frac,
            "predicted_removed_frac_radau": self.radau_removed_frac,
        }


def predict_limit(
    weights: Tensor | Mapping[str, Tensor] | Sequence[Tensor],
    slq_result: SLQResult,
    epsilon: float,
    *,
    policy: str = "abs",
    epsilon_source: str = "given",
    eta: float = 0.05,
) -> LimitPrediction:
    """Solve s = G(R(s)) for the removable fraction s* of the prunable `weights`.

    G uses the full Hessian dimension (zero mass included). The band is kept_frac ± a_η/√D and
    the trace bound solves s = B(R(s)) with Jensen's B ≤ G, so it lies below s* (both ours).
    When the SLQ result carries its Lanczos coefficients, `radau_removed_frac` is s* with the
    Gauss–Radau rule (`SLQResult.radau`): Gauss under-counts near-zero curvature at large R and
    Radau over-counts it, so [removed_frac, radau_removed_frac] brackets the exact s* on the
    nets of docs/zero_mass.md; a wide bracket says the prediction is not resolved.
    """
    eps = check_epsilon(epsilon)
    check_policy(policy)
    if epsilon_source not in EPSILON_SOURCES:
        raise ValueError(f"epsilon_source {epsilon_source!r}: choose from {list(EPSILON_SOURCES)}")
    dist = SparseDistance(weights)
    g = lambda s: g_of_r(slq_result, eps, dist(s), policy)  # noqa: E731
    s_star = solve_fixed_point(lambda s: s - g(s))
    bound = _jensen(slq_result, eps, policy)
    s_bound = solve_fixed_point(lambda s: s - bound(dist(s)))
    half = kinematic_halfwidth(slq_result.full_dim, eta)
    kept = 1.0 - s_star
    s_radau = None
    if slq_result.alphas is not None:  # [Gauss, Radau] brackets s* where the rules bound G
        upper = slq_result.radau()
        s_radau = solve_fixed_point(lambda s: s - g_of_r(upper, eps, dist(s), policy))
    return LimitPrediction(
        removed_frac=s_star, kept_frac=kept, epsilon=eps, epsilon_source=epsilon_source,
        policy=policy, zero_mass=slq_result.zero_mass, r=dist(s_star), g_of_r=g(s_star),
        band_kept_frac_low=max(0.0, kept - half), band_kept_frac_high=min(1.0, kept + half),
        trace_bound_removed_frac=s_bound, n_weights=dist.n, dim=slq_result.full_dim, eta=eta,
        radau_removed_frac=s_radau,
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
               policy: str = "abs") -> list[dict]:
    """Rows of sweeps/schema.py CURVES (without cell_id, sweep, schema_version)."""
    dist = SparseDistance(weights)
    rows = []
    for s, acc, tl, trl in zip(removed_frac, test_acc, test_loss, train_loss):
        r = dist(float(s))
        rows.append({"removed_frac": float(s), "kept_frac": 1.0 - float(s), "test_acc": float(acc),
                     "test_loss": float(tl), "train_loss": float(trl), "r": r,
                     "g_of_r": g_of_r(spectrum, epsilon, r, policy)})
    return rows

