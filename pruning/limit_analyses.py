"""What a limit cell measures beyond the prediction: the analyses of *How Sparse Can We Prune*
(its figures and appendix) and one of ours, as pure functions of the trained model.

- weight-magnitude scaling: s* for the trained weights multiplied by 1…5, the spectrum held fixed;
- weight distributions: fixed-bin histograms of log10|w| per layer and overall, comparable between
  models and seeds (the total-variation distance is taken in `analysis`);
- Hessian row L1 norms: exact rows H e_i of the mean-loss Hessian at weights chosen at evenly
  spaced quantiles of |w| (the appendix's evidence that small weights sit in flat directions);
- iterative pruning: the survivors of the next round, a subset of this round's by construction;
- effective terms (ours): the masks of the one-shot global-magnitude curve from one sort, so that
  each can be checked for disconnected weights (`pruning.sparsity`).

Every row dict here is a row of a `sweeps/schema.py` table without cell_id, sweep, schema_version.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pruning import masks as masks_lib
from pruning.hvp import HVPBackend, hessian_param_names, mean_hvp
from pruning.limit import SparseDistance, check_epsilon, check_policy, removed_frac_at_scale, zero_curvature_tol
from pruning.slq import SLQResult

# --- weight-magnitude scaling --------------------------------------------------------------------

SCALE_FACTORS: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)  # the paper's factors


def scaling_rows(weights: Mapping[str, Tensor], spectrum: SLQResult, epsilon: float, policy: str = "abs", *,
                 zero_tol: float | None = None, factors: Sequence[float] = SCALE_FACTORS) -> list[dict]:
    """Rows of SCALING: s* for the weights × each factor, the Hessian spectrum held fixed.

    Factor 1 is `predict_limit`'s s* exactly (the same fixed point, `removed_frac_at_scale`).
    """
    eps, tol = check_epsilon(epsilon), zero_curvature_tol(spectrum, zero_tol)
    check_policy(policy)
    dist = SparseDistance(weights)
    rows = []
    for c in factors:
        s = removed_frac_at_scale(dist, spectrum, eps, policy, tol=tol, scale=float(c))
        rows.append({"factor": float(c), "predicted_removed_frac": s, "predicted_kept_frac": 1.0 - s})
    return rows


# --- weight distributions ------------------------------------------------------------------------

LOG10_LOW, BIN_WIDTH, N_BINS = -12.0, 0.05, 280  # log10|w| in [-12, 2) in steps of 0.05
ALL_LAYERS = "(all)"                              # the `layer` of the histogram over every layer


def bin_edges() -> np.ndarray:
    """The N_BINS + 1 edges of the log10|w| bins (float64); bin b is [edges[b], edges[b+1])."""
    return LOG10_LOW + BIN_WIDTH * np.arange(N_BINS + 1, dtype=np.float64)


def _bin_bounds(b: int) -> tuple[float, float]:
    """Bin -1 holds |w| < 10^LOG10_LOW (exact zeros too), bin N_BINS holds |w| ≥ 10^(upper edge)."""
    edges = bin_edges()
    low = -math.inf if b < 0 else float(edges[b])
    high = math.inf if b >= N_BINS else float(edges[b + 1])
    return low, high


def weight_bins(w: Tensor) -> Tensor:
    """The bin of each |w| (-1 … N_BINS), by comparison with `bin_edges` in float64."""
    logs = torch.log10(w.detach().reshape(-1).double().abs().cpu())  # log10 0 = -inf: the underflow bin
    return torch.bucketize(logs, torch.from_numpy(bin_edges()), right=True) - 1


def weight_histogram_rows(weights: Mapping[str, Tensor]) -> list[dict]:
    """Rows of WEIGHTS: the non-empty bins of log10|w| per prunable layer, then over all of them.

    Why fixed bins instead of per-model ones: histograms of different seeds and models must share
    their bins for the total-variation distance and for overlaid plots.
    """
    if not weights:
        raise ValueError("weights: no prunable weights given")
    rows: list[dict] = []
    total = torch.zeros(N_BINS + 2, dtype=torch.int64)
    for i, (name, w) in enumerate(weights.items()):
        counts = torch.bincount(weight_bins(w) + 1, minlength=N_BINS + 2)  # index 0 = bin -1
        total += counts
        rows += _histogram(i, name, counts)
    return rows + _histogram(-1, ALL_LAYERS, total)


def _histogram(index: int, layer: str, counts: Tensor) -> list[dict]:
    out = []
    for k in torch.nonzero(counts).reshape(-1).tolist():
        low, high = _bin_bounds(k - 1)
        out.append({"layer_index": index, "layer": layer, "bin": k - 1, "log10_low": low, "log10_high": high,
                    "count": int(counts[k])})
    return out


# --- Hessian rows --------------------------------------------------------------------------------

def quantile_positions(n: int, k: int) -> np.ndarray:
    """Ranks (0 … n−1, ascending |w|) at k evenly spaced quantiles 0, 1/(k−1), …, 1; all n when n ≤ k."""
    if k < 1 or n < 1:
        raise ValueError(f"quantiles {k}, weights {n}: both must be ≥ 1")
    if n <= k:
        return np.arange(n)
    if k == 1:
        return np.array([n - 1])
    return np.unique(np.rint(np.linspace(0, n - 1, k)).astype(np.int64))


def prunable_coordinates(model: nn.Module, params: Sequence[str] | str | None = None) -> np.ndarray:
    """Index in the Hessian's flat coordinates (`hessian_param_names(model, params)` order) of each
    prunable weight, in the order of `masks.weights(model)` flattened (model order, row-major)."""
    names = hessian_param_names(model, params)
    named = dict(model.named_parameters())
    offsets, start = {}, 0
    for n in names:
        offsets[n] = start
        start += named[n].numel()
    parts = []
    for layer, module in masks_lib.prunable_layers(model):
        leaf = "weight_orig" if masks_lib.is_masked(module) else "weight"
        key = f"{layer}.{leaf}" if layer else leaf
        if key not in offsets:
            raise ValueError(f"params: the Hessian excludes prunable weight {key!r}; include it for row norms")
        parts.append(offsets[key] + np.arange(named[key].numel()))
    return np.concatenate(parts)


@torch.no_grad()
def hessian_rows(backend: HVPBackend, coords: Sequence[int], *, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(‖H_i,:‖₁, H_ii) of the mean-loss Hessian for each coordinate i in `coords`, exactly.

    H e_i is column i, which is row i (H is symmetric): one Hessian-vector product per coordinate,
    `batch` of them per data pass, in the backend's dtype.
    """
    if batch < 1:
        raise ValueError(f"batch {batch}: must be ≥ 1")
    coords = np.asarray(coords, dtype=np.int64)
    if coords.size and (coords.min() < 0 or coords.max() >= backend.dim):
        raise ValueError(f"coords: must lie in [0, {backend.dim}), the Hessian's dimension")
    dtype = getattr(backend, "dtype", torch.float64)
    l1, diag = np.zeros(len(coords)), np.zeros(len(coords))
    for start in range(0, len(coords), batch):
        chunk = torch.from_numpy(coords[start:start + batch])
        cols = torch.arange(len(chunk))
        V = torch.zeros(backend.dim, len(chunk), dtype=dtype)  # (D, b): unit vectors e_i
        V[chunk, cols] = 1
        H = mean_hvp(backend, V)                                # (D, b): rows i of H
        l1[start:start + len(chunk)] = H.abs().sum(dim=0, dtype=torch.float64).cpu().numpy()
        diag[start:start + len(chunk)] = H[chunk.to(H.device), cols.to(H.device)].double().cpu().numpy()
    return l1, diag


def hessian_row_rows(model: nn.Module, backend: HVPBackend, quantiles: int, *, batch: int = 8) -> list[dict]:
    """Rows of HESSIAN_ROWS: the prunable weights at `quantiles` evenly spaced quantiles of |w|
    (all of them on nets with fewer), each with its layer, |w|, and its exact Hessian row's L1 norm
    and diagonal entry. `backend` must be the operator of `model`'s default Hessian parameters."""
    weights = masks_lib.weights(model)
    flat = torch.cat([w.reshape(-1) for w in weights.values()]).abs().double().cpu()
    order = torch.sort(flat, stable=True).indices.numpy()
    ranks = quantile_positions(len(flat), quantiles)
    chosen = order[ranks]
    coords = prunable_coordinates(model)
    if len(coords) != len(flat) or backend.dim < len(flat):
        raise ValueError(f"backend: dimension {backend.dim} does not hold the {len(flat)} prunable weights")
    l1, diag = hessian_rows(backend, coords[chosen], batch=batch)
    bounds = np.cumsum([0, *(w.numel() for w in weights.values())])
    names = list(weights)
    rows = []
    for j, (rank, i) in enumerate(zip(ranks, chosen)):
        layer = int(np.searchsorted(bounds, i, side="right") - 1)
        rows.append({"quantile": float(rank / max(len(flat) - 1, 1)), "weight_index": int(i),
                     "layer": names[layer], "abs_weight": float(flat[i]), "row_l1": float(l1[j]),
                     "hessian_diag": float(diag[j])})
    return rows


# --- masks of the one-shot curve and of the next round -------------------------------------------

def _n_removed(removed_frac: float, n: int) -> int:
    """⌈sN⌉ with s·N rounded to 1e-9 first: the count rule of `limit.SparseDistance`."""
    if not 0.0 <= removed_frac <= 1.0:
        raise ValueError(f"removed_frac {removed_frac}: must be in [0, 1]")
    return int(math.ceil(round(removed_frac * n, 9)))


def _unflatten(keep: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out, start = {}, 0
    for name, w in like.items():
        out[name] = keep[start:start + w.numel()].view_as(w)
        start += w.numel()
    return out


class MagnitudeOrder:
    """`lomp.global_magnitude_masks(weights, s)` for many s from one stable sort of |w|.

    The same order (stable sort, ties in model order) and count rule, so each mask is the one the
    accuracy curve was measured with; sorting once matters for a 200-point grid on a big net.
    """

    def __init__(self, weights: Mapping[str, Tensor]):
        self.like = {k: v.detach() for k, v in weights.items()}
        flat = torch.cat([w.reshape(-1) for w in self.like.values()]).abs()
        self.order = torch.sort(flat, stable=True).indices
        self.n = flat.numel()

    def masks(self, removed_frac: float) -> dict[str, Tensor]:
        keep = torch.ones(self.n, dtype=torch.bool, device=self.order.device)
        keep[self.order[: _n_removed(removed_frac, self.n)]] = False
        return _unflatten(keep, self.like)


def next_round_masks(weights: Mapping[str, Tensor], kept: Mapping[str, Tensor],
                     removed_frac: float) -> dict[str, Tensor]:
    """The survivors of the next round of iterative pruning: remove ⌈sN⌉ of all N prunable weights
    by global magnitude, the already pruned ones (`kept` False) first, so the result ⊆ `kept`.

    When s asks for fewer than are already pruned, nothing more is removed (never a regrowth).
    """
    if list(weights) != list(kept):
        raise ValueError(f"kept: layers {list(kept)} must equal the weights' layers {list(weights)}")
    flat = torch.cat([w.detach().reshape(-1).abs().double() for w in weights.values()])
    alive = torch.cat([m.reshape(-1).to(flat.device) != 0 for m in kept.values()])
    if alive.numel() != flat.numel():
        raise ValueError("kept: masks must have the shapes of the weights")
    score = torch.where(alive, flat, torch.full_like(flat, -1.0))  # pruned weights rank first
    k = max(_n_removed(removed_frac, flat.numel()), int((~alive).sum()))
    keep = torch.ones_like(alive)
    keep[torch.sort(score, stable=True).indices[:k]] = False
    return _unflatten(keep, weights)
