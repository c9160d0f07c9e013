"""pruning.limit_analyses against hand-checkable cases and independent computations."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from pruning.hvp import LocalHVPBackend, dense_hessian
from pruning.limit import SparseDistance, predict_limit, removed_frac_at_scale, zero_curvature_tol
from pruning.limit_analyses import (
    ALL_LAYERS, N_BINS, MagnitudeOrder, hessian_row_rows, hessian_rows, next_round_masks, prunable_coordinates,
    quantile_positions, scaling_rows, weight_histogram_rows,
)
from pruning.lomp import global_magnitude_masks
from pruning.slq import SLQResult


def spectrum(values, masses, zero_mass=0.0, dim=1000) -> SLQResult:
    k = len(values)
    return SLQResult(nodes=np.array([values], float), weights=np.array([masses], float), steps=np.array([k]),
                     probe_ids=np.array([0]), dim=dim, full_dim=dim, zero_mass=zero_mass, seed=0, iterations=k)


def weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(6, 5, generator=g) * 0.1, "b": torch.randn(40, generator=g) * 0.01}


# ----------------------------------------------------------------------------- scaling


def test_scaling_factor_one_is_the_prediction_and_factor_c_is_the_prediction_for_c_times_w():
    w, spec = weights(), spectrum([0.0, 0.5, 3.0, -0.2], [0.3, 0.3, 0.3, 0.1], zero_mass=0.1)
    rows = scaling_rows(w, spec, 0.01, "abs")
    assert [r["factor"] for r in rows] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert rows[0]["predicted_removed_frac"] == predict_limit(w, spec, 0.01).removed_frac  # exactly
    for r in rows:  # oracle: predict_limit on the scaled weights, same spectrum
        scaled = {k: v * r["factor"] for k, v in w.items()}
        assert r["predicted_removed_frac"] == pytest.approx(predict_limit(scaled, spec, 0.01).removed_frac, abs=1e-12)
        assert r["predicted_kept_frac"] == 1 - r["predicted_removed_frac"]
    fracs = [r["predicted_removed_frac"] for r in rows]
    assert fracs == sorted(fracs, reverse=True) and fracs[0] > fracs[-1]  # larger weights: less removable
    with pytest.raises(ValueError, match="scale 0"):
        removed_frac_at_scale(SparseDistance(w), spec, 0.01, tol=zero_curvature_tol(spec), scale=0)


# ----------------------------------------------------------------------------- histograms


def test_weight_histogram_bins_by_hand():
    w = {"l1": torch.tensor([0.0, 1e-13, 2e-3, -1.5e-3]), "l2": torch.tensor([[0.5, 150.0], [-2e-3, 0.5]])}
    rows = weight_histogram_rows(w)
    got = {(r["layer"], r["bin"]): r["count"] for r in rows}
    # log10 2e-3 = -2.699 → (−2.699 + 12)/0.05 = 186.02; log10 1.5e-3 = -2.824 → 183.5; log10 0.5 → 233.98
    assert got == {("l1", -1): 2, ("l1", 186): 1, ("l1", 183): 1,
                   ("l2", 233): 2, ("l2", N_BINS): 1, ("l2", 186): 1,
                   (ALL_LAYERS, -1): 2, (ALL_LAYERS, 183): 1, (ALL_LAYERS, 186): 2, (ALL_LAYERS, 233): 2,
                   (ALL_LAYERS, N_BINS): 1}
    by = {(r["layer"], r["bin"]): r for r in rows}
    assert by[("l1", -1)]["log10_low"] == -math.inf and by[("l1", -1)]["log10_high"] == -12.0
    assert by[("l2", N_BINS)]["log10_high"] == math.inf and by[("l2", N_BINS)]["log10_low"] == pytest.approx(2.0)
    assert by[("l1", 186)]["log10_low"] == pytest.approx(-2.7) and by[("l1", 186)]["log10_high"] == pytest.approx(-2.65)
    assert [r["layer_index"] for r in rows if r["layer"] == ALL_LAYERS] == [-1] * 5


# ----------------------------------------------------------------------------- Hessian rows


def test_quantile_positions():
    assert quantile_positions(10, 3).tolist() == [0, 4, 9]        # rint(4.5) = 4
    assert quantile_positions(4, 100).tolist() == [0, 1, 2, 3]     # a small net: every weight
    assert quantile_positions(1000, 1).tolist() == [999]
    with pytest.raises(ValueError, match="quantiles 0"):
        quantile_positions(10, 0)


def small_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=g)
    return net, x, y


@pytest.mark.parametrize("mode", ["fwd_rev", "rev_rev", "auto"])
def test_hessian_rows_equal_the_exact_hessian(mode):
    net, x, y = small_net()
    H = dense_hessian(net, x, y)                                  # torch.func.hessian, (D, D)
    backend = LocalHVPBackend(net, nn.functional.cross_entropy, [(x, y)], mode=mode)
    coords = [0, 7, 19, 20, 24, 25, 30, 42]                       # weights, biases, the last bias
    l1, diag = hessian_rows(backend, coords, batch=3)
    np.testing.assert_allclose(l1, H[coords].abs().sum(dim=1).numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(diag, H[coords, coords].numpy(), rtol=1e-10, atol=1e-14)


def test_hessian_row_rows_pick_quantiles_of_the_prunable_weights():
    net, x, y = small_net()
    H = dense_hessian(net, x, y)
    # parameter order 0.weight (20), 0.bias (5), 2.weight (15), 2.bias (3): prunable i ↦ coordinate
    coord = lambda i: i if i < 20 else 25 + (i - 20)  # noqa: E731
    assert prunable_coordinates(net).tolist() == [coord(i) for i in range(35)]
    backend = LocalHVPBackend(net, nn.functional.cross_entropy, [(x, y)])
    rows = hessian_row_rows(net, backend, 5)
    flat = torch.cat([net[0].weight.reshape(-1), net[2].weight.reshape(-1)]).detach().abs()
    ranked = torch.argsort(flat, stable=True)
    assert [r["weight_index"] for r in rows] == [int(ranked[p]) for p in (0, 8, 17, 26, 34)]  # rint(8.5) = 8
    assert [r["quantile"] for r in rows] == pytest.approx([0, 8 / 34, 0.5, 26 / 34, 1])
    for r in rows:
        i = r["weight_index"]
        assert r["layer"] == ("0" if i < 20 else "2") and r["abs_weight"] == pytest.approx(float(flat[i]))
        assert r["row_l1"] == pytest.approx(float(H[coord(i)].abs().sum()), rel=1e-10)
        assert r["hessian_diag"] == pytest.approx(float(H[coord(i), coord(i)]), rel=1e-10, abs=1e-14)
    all_rows = hessian_row_rows(net, backend, 100)               # fewer weights than quantiles: all
    assert sorted(r["weight_index"] for r in all_rows) == list(range(35))


# ----------------------------------------------------------------------------- masks


def test_magnitude_order_equals_global_magnitude_masks_with_ties():
    w = {"a": torch.tensor([[0.3, -0.1], [0.1, 0.0]]), "b": torch.tensor([0.0, -0.3, 0.2, 0.1])}
    order = MagnitudeOrder(w)
    for s in (0.0, 0.1, 0.25, 0.5, 0.625, 0.9, 1.0):
        expect, got = global_magnitude_masks(w, s), order.masks(s)
        assert all(torch.equal(expect[k], got[k]) for k in w), s


def test_next_round_masks_remove_among_survivors_only():
    w = {"a": torch.tensor([0.5, -0.05, 0.2, 0.0]), "b": torch.tensor([[0.01, -0.3], [0.4, 0.02]])}
    kept = {"a": torch.tensor([True, True, True, False]), "b": torch.tensor([[False, True], [True, True]])}
    out = next_round_masks(w, kept, 0.5)                          # ⌈0.5·8⌉ = 4: the 2 pruned + 0.02, -0.05
    assert out["a"].tolist() == [True, False, True, False]
    assert out["b"].tolist() == [[False, True], [True, False]]
    for k in w:
        assert not (out[k] & ~kept[k]).any()                      # only survivors survive
    # asking for less than is already pruned removes nothing more (and never regrows)
    same = next_round_masks(w, kept, 0.1)
    assert all(torch.equal(same[k], kept[k]) for k in w)
    # the pruned weights go first even where a survivor has |w| = 0 (a tie at 0)
    tie = next_round_masks({"a": torch.tensor([0.0, 0.0, 1.0])}, {"a": torch.tensor([True, False, True])}, 1 / 3)
    assert tie["a"].tolist() == [True, False, True]
    with pytest.raises(ValueError, match="kept: layers"):
        next_round_masks(w, {"a": kept["a"]}, 0.5)
