"""Layerwise quotas: how much of each layer survives a global sparsity (docs/algorithms.md §4).

Why quotas are their own module: a quota pruner (random/<scheme>, magnitude/<scheme>) is "pick a
density per layer, then choose the survivors inside each layer". Keeping the density rule pure
(layer shapes and a sparsity in, densities out) makes every scheme checkable against its closed form
and lets the pruners, the sweeps and the tables share one definition.

Conventions: a *density* is d_l = 1 − s_l (kept fraction of layer l); the kept total must equal
(1 − s)·N within one weight, and `kept_counts` turns densities into integers summing exactly to
round((1 − s)·N). A scheme that cannot reach a target raises ValueError instead of returning an
invalid vector (a density outside [0, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.optimize import brentq
from torch import nn

from pruning import masks as masks_lib

Shape = tuple[int, ...]  # a weight shape; (n,) when only the count is known
DensityRule = Callable[[Sequence[Shape], float, bool], list[float]]

SMART_RATIO_LAST_KEEP = 0.3  # Su et al.: the classifier keeps 30% of its weights
UNIFORM_PLUS_LAST_MAX_SPARSITY = 0.8  # Gale et al.: the last layer is at most 80% sparse


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _counts(shapes: Sequence[Shape]) -> np.ndarray:
    return np.array([math.prod(s) for s in shapes], dtype=np.float64)


def n_kept(n: int, sparsity: float) -> int:
    """The integer number of weights a target keeps: round((1 − s)·n), used everywhere."""
    return int(round((1.0 - sparsity) * n))


def _scale_capped(counts: np.ndarray, raw: np.ndarray, kept: float) -> np.ndarray:
    """Densities d_l = min(1, c·raw_l) with Σ n_l d_l = kept (RigL-style redistribution).

    Why a loop and not a solver: this is the rule as stated by Evci et al. — solve the scale on the
    free layers, make every layer whose density would exceed 1 dense, re-solve on the rest — and
    each step is a closed form, so the result is exact. It terminates after at most L steps.
    """
    dense = np.zeros(len(counts), dtype=bool)
    while True:
        free = ~dense
        budget = kept - counts[dense].sum()
        weight = (counts[free] * raw[free]).sum()
        if weight <= 0:
            return np.where(dense, 1.0, 0.0)
        c = budget / weight
        d = np.where(dense, 1.0, c * raw)
        over = free & (d > 1.0)
        if not over.any():
            return d
        dense |= over


def _solve_increasing(f: Callable[[float], float], lo: float, hi: float) -> float:
    """Root of an increasing continuous f on [lo, hi] with f(lo) ≤ 0 ≤ f(hi), to float precision."""
    if f(lo) >= 0:
        return lo
    if f(hi) <= 0:
        return hi
    return brentq(f, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=1000)


# ---------------------------------------------------------------------------------------------
# the schemes: (shapes, sparsity, vgg_style) -> densities
# ---------------------------------------------------------------------------------------------

def _uniform(shapes: Sequence[Shape], s: float, vgg_style: bool) -> list[float]:
    return [1.0 - s] * len(shapes)


def _uniform_plus(shapes: Sequence[Shape], s: float, vgg_style: bool) -> list[float]:
    """Gale et al.: first layer dense, last layer at most 80% sparse, the others uniform.

    The layer sparsities are non-decreasing functions of one level c, solved so that the removed
    total is s·N. Middle layers follow c up to 1; the last follows min(c, 0.8). When the middle
    layers are full (c > 1) the constraints are relaxed in order — the last layer goes from 0.8 to 1
    (c in [1, 2]), then the first layer from 0 to 1 (c in [2, 3]) — so extreme targets are met by
    redistribution instead of failing.
    """
    counts = _counts(shapes)
    if len(shapes) == 1:
        return [1.0 - s]
    cap = UNIFORM_PLUS_LAST_MAX_SPARSITY

    def sparsities(c: float) -> np.ndarray:
        out = np.full(len(shapes), min(c, 1.0))
        out[-1] = min(c, cap) + (1.0 - cap) * min(max(c - 1.0, 0.0), 1.0)
        out[0] = min(max(c - 2.0, 0.0), 1.0)
        return out

    removed = s * counts.sum()
    c = _solve_increasing(lambda c: float(counts @ sparsities(c)) - removed, 0.0, 3.0)
    return list(1.0 - sparsities(c))


def _erk_raw(shape: Shape) -> float:
    """Erdős–Rényi-Kernel: (sum of the kernel's dimensions) / (their product)."""
    if len(shape) < 2:
        raise ValueError(f"quota 'erk' needs layer weight shapes, got a bare count {shape}")
    return sum(shape) / math.prod(shape)


def _erk(shapes: Sequence[Shape], s: float, vgg_style: bool) -> list[float]:
    counts = _counts(shapes)
    raw = np.array([_erk_raw(sh) for sh in shapes])
    return list(_scale_capped(counts, raw, (1.0 - s) * counts.sum()))


def igq_densities(counts: Sequence[float], force: float) -> np.ndarray:
    """Ideal Gas Quotas for a given force F: d_l = 1 / (1 + F·n_l)."""
    return 1.0 / (1.0 + force * np.asarray(counts, dtype=np.float64))


def igq_force(counts: Sequence[float], sparsity: float) -> float:
    """The common force F ≥ 0 with Σ n_l / (1 + F n_l) = (1 − s)·N, by bisection in log F.

    Why log F: F spans many decades (≈ s/n at low sparsity, ≈ L/kept near 1); a bracket from the
    two bounds N − F·Σn² ≤ kept(F) ≤ L/F always contains the root.
    """
    n = np.asarray(counts, dtype=np.float64)
    kept = (1.0 - sparsity) * n.sum()
    if sparsity <= 0.0:
        return 0.0
    if kept <= 0.0:
        return math.inf
    lo = math.log(0.5 * sparsity * n.sum() / float((n * n).sum()))
    hi = math.log(2.0 * len(n) / kept)
    return math.exp(_solve_increasing(lambda lf: kept - float(igq_densities(n, math.exp(lf)) @ n), lo, hi))


def _igq(shapes: Sequence[Shape], s: float, vgg_style: bool) -> list[float]:
    counts = _counts(shapes)
    force = igq_force(counts, s)
    if math.isinf(force):
        return [0.0] * len(shapes)
    return list(igq_densities(counts, force))


def smart_ratio_raw(num_layers: int, vgg_style: bool) -> np.ndarray:
    """Su et al.'s unnormalized keep ratios: (L−l+1)² + (L−l+1) for l = 1..L, / l² for VGG."""
    ell = np.arange(1, num_layers + 1, dtype=np.float64)
    back = num_layers - ell + 1
    raw = back**2 + back
    return raw / ell**2 if vgg_style else raw


def _smart_ratio(shapes: Sequence[Shape], s: float, vgg_style: bool) -> list[float]:
    """Smart ratio: the classifier keeps 30%, the rest follow the raw ratios, capped at 1.

    Why the last layer is special-cased both ways: at low sparsity the others are dense and still
    short of the target, so the classifier takes the surplus (redistribution); at high sparsity the
    fixed 30% alone exceeds the budget and no valid vector exists (a clear error).
    """
    counts = _counts(shapes)
    kept = (1.0 - s) * counts.sum()
    if len(shapes) == 1:
        return [1.0 - s]
    last_fixed = SMART_RATIO_LAST_KEEP * counts[-1]
    rest_budget = kept - last_fixed
    if rest_budget < -1e-9 * counts.sum():
        max_s = 1.0 - last_fixed / counts.sum()
        raise ValueError(
            f"quota 'smart_ratio': sparsity {s} is unreachable, the last layer alone keeps "
            f"{SMART_RATIO_LAST_KEEP:.0%} of its weights; allowed sparsity ≤ {max_s:.6f}"
        )
    rest_budget = max(rest_budget, 0.0)
    rest = counts[:-1]
    if rest_budget >= rest.sum():
        return [1.0] * (len(shapes) - 1) + [float((kept - rest.sum()) / counts[-1])]
    raw = smart_ratio_raw(len(shapes), vgg_style)[:-1]
    return list(_scale_capped(rest, raw, rest_budget)) + [SMART_RATIO_LAST_KEEP]


QUOTAS: dict[str, DensityRule] = {
    "uniform": _uniform,
    "uniform_plus": _uniform_plus,
    "erk": _erk,
    "igq": _igq,
    "smart_ratio": _smart_ratio,
}
# Per-layer sparsities read off a real SNIP / SynFlow mask: they need the model (and data), so they
# live beside the pruners (`pruning.pruners.quota.mask_quotas`); named here so one vocabulary of
# quota schemes serves the registry and the error messages.
MASK_QUOTAS = ("snip", "synflow")
SCHEMES = (*QUOTAS, *MASK_QUOTAS)


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------

def _as_shapes(layers: Sequence[Shape | int]) -> list[Shape]:
    shapes = [tuple(int(d) for d in x) if isinstance(x, (tuple, list)) else (int(x),) for x in layers]
    if not shapes or any(math.prod(s) < 1 for s in shapes):
        raise ValueError("layers: need at least one layer and a positive weight count per layer")
    return shapes


def check_scheme(scheme: str, allowed: Sequence[str] = SCHEMES) -> str:
    if scheme not in allowed:
        raise ValueError(f"quota scheme {scheme!r}: choose from {', '.join(allowed)}")
    return scheme


def _refuse_mask_quota(scheme: str) -> None:
    if scheme in MASK_QUOTAS:
        raise ValueError(f"quota {scheme!r} is read off a real {scheme} mask: use "
                         f"pruning.pruners.quota.mask_quotas(scheme, model, sparsity, data=...)")


def check_applicable(scheme: str, shapes: Sequence[Shape]) -> None:
    """Refuse a scheme on an architecture it is not defined for (one-line ValueError).

    uniform_plus (Gale et al.) is defined for convolutional networks only (docs/algorithms.md §4): its
    dense first layer is a small stem there, but on an MLP it holds most weights (88% of
    LeNet-300-100), so the other layers are emptied long before the target. A network counts as
    convolutional when any prunable weight has more than two dimensions. (The authors assert the
    same on the first layer's shape; every registry model with a conv starts with one.) Pure:
    shapes only, so spec validation can call it before anything is built.
    """
    check_scheme(scheme)
    if scheme == "uniform_plus" and not any(len(s) > 2 for s in shapes):
        raise ValueError("quota 'uniform_plus' is defined for convolutional networks only (a dense first "
                         "layer holds most of an MLP's weights); this network has no conv layer — "
                         "choose uniform, erk, igq or smart_ratio")


def _check_total(scheme: str, shapes: Sequence[Shape], sparsity: float, d: list[float]) -> list[float]:
    """The contract of every scheme, enforced at the boundary: valid densities, exact total."""
    counts = _counts(shapes)
    if any(not (0.0 <= x <= 1.0 + 1e-12) for x in d):
        raise ValueError(f"quota {scheme!r}: invalid densities at sparsity {sparsity}: {d}")
    d = [min(max(float(x), 0.0), 1.0) for x in d]
    total = float(np.dot(counts, d))
    if abs(total - (1.0 - sparsity) * counts.sum()) > 1.0:
        raise ValueError(f"quota {scheme!r}: cannot meet sparsity {sparsity} (keeps {total:.1f})")
    return d


def densities(
    scheme: str, layers: Sequence[Shape | int], sparsity: float, *, vgg_style: bool = False
) -> list[float]:
    """Layer densities d_l for a global `sparsity`, from weight shapes (or counts) in model order.

    Pure: no model needed. `erk` needs real shapes (out, in[, kh, kw]); `smart_ratio` treats the last
    layer as the classifier and divides by l² when `vgg_style`. The mask-based schemes (snip,
    synflow) need a model and data: `pruning.pruners.quota.mask_quotas`.
    """
    check_scheme(scheme)
    _refuse_mask_quota(scheme)
    s = masks_lib.check_sparsity(sparsity)
    shapes = _as_shapes(layers)
    return _check_total(scheme, shapes, s, QUOTAS[scheme](shapes, s, vgg_style))


def kept_counts(layer_densities: Sequence[float], counts: Sequence[int], sparsity: float) -> list[int]:
    """Integer kept counts per layer, each in [0, n_l], summing exactly to round((1 − s)·N).

    Largest remainder: floor every n_l·d_l, then hand the missing weights to the layers with the
    largest fractional parts (or take the excess from the smallest). Ties go to the earlier layer.
    """
    n = np.asarray(counts, dtype=np.int64)
    target = n_kept(int(n.sum()), sparsity)
    exact = n * np.clip(np.asarray(layer_densities, dtype=np.float64), 0.0, 1.0)
    out = np.minimum(np.floor(exact).astype(np.int64), n)
    frac = exact - out
    short = target - int(out.sum())
    order = np.argsort(-frac, kind="stable") if short > 0 else np.argsort(frac, kind="stable")
    while short != 0:
        step = 1 if short > 0 else -1
        moved = False
        for i in order:
            if short == 0:
                break
            if 0 <= out[i] + step <= n[i]:
                out[i] += step
                short -= step
                moved = True
        if not moved:
            raise ValueError(f"kept_counts: cannot place {target} weights in layers of {n.tolist()}")
    return [int(x) for x in out]


def nested_kept_counts(
    kept_at: Callable[[float], np.ndarray], total_kept: int, max_sparsity: float
) -> list[int]:
    """Per-layer kept counts for `total_kept` survivors that are *nested* in the total.

    Why not `kept_counts`: largest-remainder rounding is exact at one target but not monotone
    across targets (the Alabama paradox: removing one more weight overall can hand a layer one
    more), and the effective-sparsity bisection needs a smaller removal to be a subset of a larger
    one. Here the rank-j survivor of layer l (j = 1 is its best weight) is kept while
    x_l(s) ≥ j − ½, with x_l(s) = n_l·d_l(s) non-increasing in s: ordering all weights by the
    sparsity at which they drop out is one global order, so the counts are nested by construction.
    For a total T they are round(x_l(s')) at the s' where exactly T survive (bisection on s);
    layers that drop a weight at the same s' (ties) give it back in model order. Each count is
    within one weight of the quota at s', a sparsity within a few weights of (N − T)/N.

    `kept_at(s)` returns x(s) (floats per layer); it must be valid on [0, max_sparsity].
    """
    def rounded(s: float) -> np.ndarray:
        return np.floor(np.asarray(kept_at(s), dtype=np.float64) + 0.5).astype(np.int64)

    lo, hi = 0.0, max_sparsity
    r_lo, r_hi = rounded(lo), rounded(hi)
    if r_lo.sum() <= total_kept:
        return [int(x) for x in r_lo]
    if r_hi.sum() > total_kept:
        raise ValueError(f"nested_kept_counts: {total_kept} survivors are below this quota's minimum {r_hi.sum()}")
    while r_hi.sum() != total_kept:
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:  # float resolution: several layers drop a weight at the same s
            out = r_hi.copy()
            extra = total_kept - int(r_hi.sum())
            for i in range(len(out)):
                give = min(extra, int(r_lo[i] - r_hi[i]))
                out[i] += give
                extra -= give
            return [int(x) for x in out]
        r_mid = rounded(mid)
        if r_mid.sum() > total_kept:
            lo, r_lo = mid, r_mid
        else:
            hi, r_hi = mid, r_mid
    return [int(x) for x in r_hi]


def is_vgg_style(model: nn.Module) -> bool:
    """Whether smart_ratio's VGG rule applies: the registry name (models.build records it)."""
    name = getattr(model, "model_name", "") or type(model).__name__
    return name.lower().startswith("vgg")


def layer_shapes(model: nn.Module) -> list[Shape]:
    return [tuple(w.shape) for w in masks_lib.weights(model).values()]


def quotas(scheme: str, model: nn.Module, sparsity: float, *, vgg_style: bool | None = None) -> list[float]:
    """Layer sparsities s_l (in `prunable_layers` order) of `scheme` on `model` at `sparsity`.

    The model only supplies its layer shapes (and, for `vgg_style`, which defaults to the model's
    registry name, its family). The snip / synflow quotas run a real pruner:
    `pruning.pruners.quota.mask_quotas`.
    """
    check_scheme(scheme)
    _refuse_mask_quota(scheme)
    s = masks_lib.check_sparsity(sparsity)
    vgg = is_vgg_style(model) if vgg_style is None else vgg_style
    shapes = layer_shapes(model)
    check_applicable(scheme, shapes)
    return [1.0 - d for d in densities(scheme, shapes, s, vgg_style=vgg)]
