"""Pruning-limit theory against closed forms and direct computation."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from pruning.slq import SLQResult
from pruning.limit import (
    SparseDistance, actual_limit, batch_loss_std, curve_rows, g_of_r, kinematic_halfwidth, limit_columns,
    predict_limit,
)
from sweeps.schema import CURVES, TRIALS


def spectrum(values, masses, zero_mass=0.0, dim=1000) -> SLQResult:
    """An exact 'SLQ result': one probe whose nodes are the eigenvalues and weights their masses."""
    k = len(values)
    return SLQResult(nodes=np.array([values], float), weights=np.array([masses], float),
                     steps=np.array([k]), probe_ids=np.array([0]), dim=dim, full_dim=dim,
                     zero_mass=zero_mass, seed=0, iterations=k)


def test_r_of_s_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(7, 9, generator=g), "b": torch.randn(37, generator=g)}
    flat = torch.cat([v.reshape(-1) for v in w.values()]).double().numpy()
    dist = SparseDistance(w)
    for s in (0.0, 0.01, 0.25, 0.5, 0.77, 0.999, 1.0):
        k = math.ceil(s * len(flat))
        assert dist(s) == pytest.approx(math.sqrt(np.sort(flat**2)[:k].sum()), rel=1e-12)
    assert SparseDistance(torch.arange(1.0, 11.0)).n_removed(0.3) == 3  # ⌈0.3·10⌉ is 3, not 4
    assert SparseDistance([torch.ones(4)])(np.array([0.5, 1.0])).tolist() == [math.sqrt(2), 2.0]
    with pytest.raises(ValueError, match="removed_frac"):
        dist(1.5)
    with pytest.raises(ValueError, match="weights"):
        SparseDistance([])


def closed_form(c: float, p: float, k: float, a: float) -> float:
    """Root of s = c + p·a/(a + s·K): K s² + (a − cK) s − a(c + p) = 0."""
    b = a - c * k
    return (-b + math.sqrt(b * b + 4 * k * a * (c + p))) / (2 * k)


@pytest.mark.parametrize(
    "policy,values,masses,zero,cp",
    [
        ("abs", [2.0], [1.0], 0.0, (0.0, 1.0)),
        ("abs", [2.0], [1.0], 0.3, (0.3, 0.7)),          # zero mass q
        ("abs", [2.0, -2.0], [0.5, 0.5], 0.0, (0.0, 1.0)),
        ("drop", [2.0, -2.0], [0.5, 0.5], 0.0, (0.0, 0.5)),
        ("flat", [2.0, -2.0], [0.5, 0.5], 0.0, (0.5, 0.5)),
    ],
)
def test_limit_bisection_on_diagonal_quadratic(policy, values, masses, zero, cp):
    """Equal |w| = c and one curvature level λ: G(R(s)) = c0 + p·2ε/(2ε + s N c² λ) in closed form."""
    n, c, eps = 100_000, 0.02, 0.01
    w = torch.full((n,), c, dtype=torch.float64) * torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    spec = spectrum(values, masses, zero_mass=zero)
    pred = predict_limit(w, spec, eps, policy=policy)
    expected = closed_form(*cp, n * c * c * 2.0, 2 * eps)
    assert abs(pred.removed_frac - expected) <= 2.0 / n
    assert pred.kept_frac == 1.0 - pred.removed_frac and pred.policy == policy
    # bracketed to machine precision: h(s*) ≥ 0 > h(s* − ulp)
    dist = SparseDistance(w)
    h = lambda s: s - g_of_r(spec, eps, dist(s), policy)  # noqa: E731
    assert h(pred.removed_frac) >= 0 > h(np.nextafter(pred.removed_frac, 0))
    # one curvature level: Jensen is tight for "abs" (the bound equals the prediction)
    if policy == "abs" and len(values) == 1 and zero == 0:
        assert pred.trace_bound_removed_frac == pytest.approx(pred.removed_frac, abs=1e-12)
    assert pred.trace_bound_removed_frac <= pred.removed_frac + 1e-12


def test_trace_bound_band_and_columns():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5000, generator=g, dtype=torch.float64) * 0.05
    spec = spectrum([-0.5, 1e-3, 0.2, 5.0], [0.1, 0.4, 0.3, 0.2], zero_mass=0.1, dim=4000)
    for policy in ("abs", "drop", "flat"):
        pred = predict_limit(w, spec, 0.02, policy=policy, epsilon_source="batch_loss_std")
        assert 0 < pred.trace_bound_removed_frac < pred.removed_frac < 1
        half = math.sqrt(8 * math.log(4 / 0.05)) / math.sqrt(4000)
        assert kinematic_halfwidth(4000) == pytest.approx(half)
        assert pred.band_kept_frac_low == pytest.approx(pred.kept_frac - half)
        assert pred.band_kept_frac_high == pytest.approx(min(1.0, pred.kept_frac + half))
        cols = limit_columns(pred, actual_limit([0.0, 0.5], [0.9, 0.91], 0.9))
        assert set(cols) <= set(TRIALS.names)
        assert cols["eigen_policy"] == policy and cols["epsilon_source"] == "batch_loss_std"
        assert cols["zero_mass"] == 0.1
    # drop ≤ abs ≤ flat: the policies order G, hence the removable fraction
    s = {p: predict_limit(w, spec, 0.02, policy=p).removed_frac for p in ("abs", "drop", "flat")}
    assert s["drop"] <= s["abs"] <= s["flat"]


def test_actual_limit_rules_on_hand_made_curves():
    s = [0.0, 0.2, 0.4, 0.6, 0.8, 0.9]
    acc = [0.950, 0.952, 0.951, 0.9495, 0.930, 0.951]
    lim = actual_limit(s, acc, 0.950, tolerance_pp=0.1)
    assert (lim.removed_frac_strict, lim.kept_frac_strict) == (0.9, pytest.approx(0.1))  # largest, not first
    assert lim.removed_frac_tol == 0.9
    lim = actual_limit(s[:5], acc[:5], 0.950, tolerance_pp=0.1)
    assert lim.removed_frac_strict == 0.4 and lim.removed_frac_tol == 0.6
    assert lim.kept_frac_tol == pytest.approx(0.4)
    lim = actual_limit(s[:5], acc[:5], 0.950, tolerance_pp=0.0)
    assert lim.removed_frac_tol == 0.4
    none = actual_limit([0.0, 0.5], [0.95, 0.90], 0.95)
    assert none.removed_frac_strict == 0.0 and none.kept_frac_strict == 1.0 and none.removed_frac_tol == 0.0
    assert set(none.columns()) <= set(TRIALS.names)
    with pytest.raises(ValueError, match="curve"):
        actual_limit([0.1], [0.5, 0.6], 0.5)


def test_curve_rows_match_schema():
    w = torch.linspace(-1, 1, 100)
    spec = spectrum([1.0], [1.0])
    rows = curve_rows([0.0, 0.5], [0.9, 0.8], [0.3, 0.4], [0.2, 0.3], w, spec, 0.05)
    assert set(rows[0]) <= set(CURVES.names)
    assert rows[0]["g_of_r"] == 1.0 and rows[1]["kept_frac"] == 0.5
    assert rows[1]["r"] == pytest.approx(SparseDistance(w)(0.5))
    assert rows[1]["g_of_r"] == pytest.approx(0.1 / (0.1 + rows[1]["r"] ** 2))


def test_epsilon_from_batch_losses():
    from pruning.data import load

    train, _ = load("synthetic", input_shape=(1, 4, 4), num_classes=3, n_train=100, n_test=10)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    losses = [nn.functional.cross_entropy(model(x), y).item() for x, y in train.batches(32)][:3]
    assert batch_loss_std(model, train, batch_size=32) == pytest.approx(np.std(losses, ddof=1), rel=1e-6)


def test_bad_input():
    spec = spectrum([1.0], [1.0])
    w = torch.ones(10)
    for eps in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="epsilon"):
            predict_limit(w, spec, eps)
    with pytest.raises(ValueError, match="eigen_policy"):
        predict_limit(w, spec, 0.1, policy="nope")
    with pytest.raises(ValueError, match="epsilon_source"):
        predict_limit(w, spec, 0.1, epsilon_source="guess")
