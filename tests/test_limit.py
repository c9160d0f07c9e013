"""Pruning-limit theory against closed forms and direct computation."""

import math
import statistics

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from pruning.limit import (
    EPSILON_RECIPES, ZERO_CURVATURE_ULPS, SparseDistance, actual_limit, authors_estimate, batch_loss_std,
    curve_rows, epsilon_recipe, g_of_r, kinematic_halfwidth, limit_columns, limit_equation, predict_limit,
    spread_window, truncated, zero_curvature_tol,
)
from pruning.slq import SLQResult, gauss_rule
from sweeps.schema import CURVES, TRIALS

EPS64 = np.finfo(np.float64).eps


def spectrum(values, masses, zero_mass=0.0, dim=1000, info=None) -> SLQResult:
    """An exact 'SLQ result': one probe whose nodes are the eigenvalues and weights their masses."""
    k = len(values)
    return SLQResult(nodes=np.array([values], float), weights=np.array([masses], float),
                     steps=np.array([k]), probe_ids=np.array([0]), dim=dim, full_dim=dim,
                     zero_mass=zero_mass, seed=0, iterations=k, info=dict(info or {}))


def jacobi(A: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All D Lanczos coefficients (alphas, betas) of symmetric A from start vector v, by an
    independent route: reflect v onto e1 (Householder), then Householder tridiagonalization
    (scipy.linalg.hessenberg keeps e1), which is Lanczos from v in exact arithmetic."""
    u = v / np.linalg.norm(v)
    h = u.copy()
    h[0] -= 1.0
    P = np.eye(len(u)) - 2.0 * np.outer(h, h) / (h @ h) if h @ h > 0 else np.eye(len(u))
    T = scipy.linalg.hessenberg(P @ A @ P)
    return np.diag(T).copy(), np.append(np.abs(np.diag(T, -1)), 0.0)


def lanczos_result(A: np.ndarray, probes: int, m: int, seed: int = 0) -> SLQResult:
    """An SLQResult of `m` exact Lanczos steps per Rademacher probe on the dense operator A."""
    rng = np.random.default_rng(seed)
    D = len(A)
    alphas, betas = np.zeros((probes, m)), np.zeros((probes, m))
    nodes, weights = np.zeros((probes, m)), np.zeros((probes, m))
    for p in range(probes):
        a, b = jacobi(A, rng.choice([-1.0, 1.0], D))
        alphas[p], betas[p] = a[:m], b[:m]
        theta, U = np.linalg.eigh(np.diag(a[:m]) + np.diag(b[: m - 1], 1) + np.diag(b[: m - 1], -1))
        nodes[p], weights[p] = theta, U[0] ** 2
    return SLQResult(nodes=nodes, weights=weights, steps=np.full(probes, m), probe_ids=np.arange(probes),
                     dim=D, full_dim=D, zero_mass=0.0, seed=seed, iterations=m, alphas=alphas, betas=betas)


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
    if policy == "drop":  # half the curvature is negative: drop is ill posed here and refused,
        assert pred.removed_frac is None and pred.negative_share > 0.01  # but its equation is exact:
        s_drop = limit_equation(w, spec, eps, policy="drop").solve(spec)
        assert abs(s_drop - expected) <= 2.0 / n
        return
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
    # the loss rule: training loss ≤ dense training loss + ε, the largest such fraction (not the first)
    loss = [0.30, 0.31, 0.36, 0.33, 0.50, 0.338]
    lim = actual_limit(s, acc, 0.950, train_loss=loss, dense_train_loss=0.30, epsilon=0.04)
    assert (lim.removed_frac_loss, lim.kept_frac_loss) == (0.9, pytest.approx(0.1))
    assert actual_limit(s, acc, 0.950, train_loss=loss, dense_train_loss=0.30, epsilon=0.035).removed_frac_loss == 0.6
    assert lim.columns()["actual_removed_frac_loss"] == 0.9 and none.removed_frac_loss is None
    with pytest.raises(ValueError, match="loss rule needs"):
        actual_limit(s, acc, 0.95, train_loss=loss)
    with pytest.raises(ValueError, match="epsilon"):
        actual_limit(s, acc, 0.95, train_loss=loss, dense_train_loss=0.3, epsilon=0.0)


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
    # the named recipe "batch_loss_std" is exactly these defaults (what stored rows with that label mean)
    assert batch_loss_std(model, train, batch_size=32, **epsilon_recipe("batch_loss_std")) == \
        batch_loss_std(model, train, batch_size=32)


def test_epsilon_authors_recipe_matches_manual_augmented_pass():
    """The authors' ε: shuffled augmented loader, eval mode, L1 term per batch, np.std (ddof=0),
    the last partial batch included; against a hand loop over the same loader and seed."""
    from pruning.data import load

    train, _ = load("synthetic", input_shape=(3, 8, 8), num_classes=4, n_train=300, n_test=10)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 4))
    with torch.no_grad():  # non-trivial BN running statistics: eval mode must use them
        model[1].running_mean.uniform_(-0.5, 0.5), model[1].running_var.uniform_(0.5, 2.0)
    model.train()
    lam, seed = 1e-3, 5
    eps = batch_loss_std(model, train, l1=lam, l1_scope="all", seed=seed,
                         **{**epsilon_recipe("batch_loss_std_authors"), "augment": True})
    assert model.training  # restored

    ref = nn.Sequential(*[m for m in model]).eval()  # same modules, eval mode
    penalty = sum(float(p.detach().abs().sum()) for p in model.parameters())  # every weight and bias, BN's too
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        losses = [float(nn.functional.cross_entropy(ref(x), y)) + lam * penalty
                  for x, y in train.batches(128, shuffle=True, generator=g, augment=True)]
    model.train()
    assert len(losses) == 3  # 128 + 128 + 44: the partial batch counts
    assert eps == pytest.approx(statistics.pstdev(losses), rel=1e-9)
    # augmentation and order matter; the L1 term (a constant in eval mode) does not
    plain = batch_loss_std(model, train, **epsilon_recipe("batch_loss_std"))
    assert abs(eps - plain) > 1e-3 * plain
    no_l1 = batch_loss_std(model, train, seed=seed, **{**EPSILON_RECIPES["batch_loss_std_authors"], "augment": True})
    assert eps == pytest.approx(no_l1, rel=1e-6)
    # augment=None takes the split's default: synthetic data is not augmentable
    assert batch_loss_std(model, train, seed=seed, **EPSILON_RECIPES["batch_loss_std_authors"]) == \
        batch_loss_std(model, train, seed=seed, **{**EPSILON_RECIPES["batch_loss_std_authors"], "augment": False})
    with pytest.raises(ValueError, match="l1_scope"):
        batch_loss_std(model, train, l1=1e-3, l1_scope="some")
    with pytest.raises(ValueError, match="epsilon_recipe"):
        epsilon_recipe("authors")


@pytest.mark.parametrize("policy", ["abs", "drop", "flat"])
def test_near_zero_nodes_are_zero_curvature_under_every_policy(policy):
    """|θ| ≤ 64·eps·ρ is term 1 whatever its sign: G(R) = 0.5·2ε/(2ε + 2R²) + 0.5 by hand."""
    eps, r = 0.01, 3.0
    tiny = 10 * EPS64 * 2.0  # ρ = 2, well inside the tolerance
    expected = 0.5 * 0.02 / (0.02 + 2.0 * r * r) + 0.5
    values = [g_of_r(spectrum([2.0, a, b], [0.5, 0.25, 0.25]), eps, r, policy)
              for a, b in ((tiny, -tiny), (-tiny, -tiny), (tiny, tiny), (0.0, 0.0))]
    assert values == pytest.approx([expected] * 4, rel=1e-14)
    assert len(set(values)) == 1  # identical, not merely close
    # zero_tol=0 is the old rule: only exact zeros are flat, so under "drop" the sign decides
    old = [g_of_r(spectrum([2.0, a, a], [0.5, 0.25, 0.25]), eps, r, policy, zero_tol=0.0) for a in (tiny, -tiny)]
    if policy == "drop":
        assert old[0] == pytest.approx(expected, rel=1e-12) and old[1] == pytest.approx(expected - 0.5)
    else:
        assert old == pytest.approx([expected] * 2, rel=1e-12)


def test_zero_curvature_tol_rule():
    """tol = ZERO_CURVATURE_ULPS · eps(dtype) · max|θ|, the dtype from the run's info."""
    spec = spectrum([-4.0, 1.0, 1e-20], [0.2, 0.5, 0.3])
    assert zero_curvature_tol(spec) == ZERO_CURVATURE_ULPS * EPS64 * 4.0
    f32 = spectrum([-4.0, 1.0], [0.5, 0.5], info={"basis_dtype": "float32"})
    assert zero_curvature_tol(f32) == pytest.approx(ZERO_CURVATURE_ULPS * float(np.finfo(np.float32).eps) * 4.0)
    mixed = spectrum([2.0], [1.0], info={"basis_dtype": "float64", "operator_dtype": "bfloat16"})
    assert zero_curvature_tol(mixed) == pytest.approx(ZERO_CURVATURE_ULPS * 2.0 ** -7 * 2.0)  # the coarser
    assert zero_curvature_tol(spec, zero_tol=1e-3) == pytest.approx(4e-3)
    with pytest.raises(ValueError, match="zero_tol"):
        zero_curvature_tol(spec, zero_tol=-1.0)


def test_drop_limit_does_not_move_when_rounding_level_signs_flip():
    """An explicit spectrum with 40% of its eigenvalues at rounding level (≤ 50·eps·ρ): flipping
    their signs leaves the exact s* unchanged under every policy; with zero_tol=0 (the old rule)
    it moved under `drop`."""
    rng = np.random.default_rng(0)
    D = 500
    rho = 5.0
    bulk = np.geomspace(1e-3, rho, 300)
    noise = rng.uniform(0, 50, 200) * EPS64 * rho
    w = torch.from_numpy(rng.normal(0, 0.05, 4000))
    flips = [np.where(rng.random(200) < 0.5, -1.0, 1.0) for _ in range(3)] + [np.ones(200), -np.ones(200)]
    for policy in ("abs", "drop", "flat"):
        s = {predict_limit(w, spectrum(np.concatenate([bulk, f * noise]), np.full(D, 1 / D), dim=D),
                           0.01, policy=policy).removed_frac for f in flips}
        assert len(s) == 1
    spectra = [spectrum(np.concatenate([bulk, f * noise]), np.full(D, 1 / D), dim=D) for f in (np.ones(200), -np.ones(200))]
    old = [limit_equation(w, sp, 0.01, policy="drop", zero_tol=0.0).solve(sp) for sp in spectra]
    assert old[0] - old[1] > 0.1  # the sign of rounding noise decided 40% of the width before
    # (which is why drop is now refused where negative curvature carries weight: here, 40% of it)
    assert predict_limit(w, spectra[1], 0.01, policy="drop", zero_tol=0.0).removed_frac is None


def test_spread_window_is_the_last_quarter():
    assert spread_window(4) == [3, 4] and spread_window(16) == list(range(12, 17))
    assert spread_window(64) == list(range(48, 65))                       # ≤ 17 depths: every step
    w128, w512 = spread_window(128), spread_window(512)
    assert w128 == list(range(96, 129, 2)) and w512 == list(range(384, 513, 8))
    for m in (100, 129, 143, 144, 200, 333, 512):
        w = spread_window(m)
        assert w[0] == math.ceil(3 * m / 4) and w[-1] == m and len(w) <= 19 and w == sorted(set(w))
    # successive checks of iterations: auto (every 16 steps) share most depths (a power-of-two stride)
    assert len(set(spread_window(496)) & set(spread_window(512))) >= 14


def test_gauss_rule_weights_equal_eigh():
    """Weights from eigenvalues alone (residues) equal the squared first eigenvector components,
    on random Jacobi matrices and on Lanczos of a spectrum with a near-zero cluster."""
    rng = np.random.default_rng(0)
    for k in (1, 2, 3, 17, 64):
        a, b = rng.normal(size=k), rng.uniform(0.05, 1.0, k - 1)
        theta, tau = gauss_rule(a, b)
        if k == 1:
            assert theta.tolist() == a.tolist() and tau.tolist() == [1.0]
            continue
        ref, U = scipy.linalg.eigh_tridiagonal(a, b)
        assert theta == pytest.approx(ref, abs=1e-12) and tau == pytest.approx(U[0] ** 2, rel=1e-8, abs=1e-13)
    D = 400
    A = np.diag(np.concatenate([1e-9 * rng.normal(size=100), np.geomspace(1e-6, 5.0, D - 100)]))
    spec = lanczos_result(A, 2, 96)
    fast, slow = truncated(spec, 96), spec  # truncated re-diagonalizes with gauss_rule
    assert fast.nodes == pytest.approx(slow.nodes, abs=1e-10)
    assert fast.weights == pytest.approx(slow.weights, rel=1e-7, abs=1e-13)
    assert fast.weights.sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-12)


def test_resolution_signal_is_the_spread_over_the_last_quarter():
    """The spread is max − min of s*(k) over spread_window(m), each s*(k) the prediction of an
    independent k-step Lanczos run (Householder tridiagonalization); the jackknife SE over probes
    is its definition; the flag compares both with the tolerance."""
    rng = np.random.default_rng(1)
    D, P, m = 120, 6, 12
    Q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    A = (Q * np.geomspace(1e-5, 5.0, D)) @ Q.T
    spec = lanczos_result(A, P, m, seed=2)
    w = torch.from_numpy(rng.normal(0, 0.05, 3000))
    pred = predict_limit(w, spec, 0.01)
    tol = zero_curvature_tol(spec)
    by_depth = [predict_limit(w, lanczos_result(A, P, k, seed=2), 0.01, zero_tol=tol / np.abs(spec.nodes).max()
                              ).removed_frac for k in spread_window(m)]
    assert pred.removed_frac_spread == pytest.approx(max(by_depth) - min(by_depth), abs=1e-9)
    loo = []
    for p in range(P):
        keep = np.arange(P) != p
        sub = SLQResult(nodes=spec.nodes[keep], weights=spec.weights[keep], steps=spec.steps[keep],
                        probe_ids=spec.probe_ids[keep], dim=D, full_dim=D, zero_mass=0.0, seed=0,
                        iterations=m)
        loo.append(predict_limit(w, sub, 0.01, zero_tol=0.0).removed_frac)
    se = math.sqrt((P - 1) / P * sum((x - np.mean(loo)) ** 2 for x in loo))
    assert pred.removed_frac_se == pytest.approx(se, rel=1e-9, abs=1e-15) and se > 0
    assert pred.unresolved is (max(pred.removed_frac_spread, 2 * se) > 0.01) and pred.resolution_tol == 0.01
    cols = pred.columns()
    assert set(cols) <= set(TRIALS.names) and cols["predicted_removed_frac_spread"] == pred.removed_frac_spread
    assert "predicted_removed_frac_half_iters" not in cols  # s*(m/2) vs s*(m) is not a convergence test


def test_resolution_passes_a_converged_run():
    """Iterations = dimension on a small diagonal operator (Rademacher probes see it exactly): s*
    is the exact one, the last quarter does not move it, the SE over probes is 0."""
    d = np.linspace(0.2, 3.0, 16)
    spec = lanczos_result(np.diag(d), probes=4, m=16)
    w = torch.from_numpy(np.random.default_rng(3).normal(0, 0.05, 2000))
    exact = predict_limit(w, spectrum(d, np.full(16, 1 / 16), dim=16), 0.01).removed_frac
    pred = predict_limit(w, spec, 0.01)
    assert pred.removed_frac == pytest.approx(exact, abs=1e-12)
    assert pred.removed_frac_spread < 1e-3 and pred.removed_frac_se == pytest.approx(0.0, abs=1e-12)
    assert pred.unresolved is False
    # without coefficients and with one probe neither signal exists: the flag is unknown
    one = predict_limit(w, spectrum(d, np.full(16, 1 / 16), dim=16), 0.01)
    assert one.unresolved is None and one.removed_frac_spread is None and one.removed_frac_se is None
    with pytest.raises(ValueError, match="resolution_tol"):
        predict_limit(w, spec, 0.01, resolution_tol=0.0)
    with pytest.raises(ValueError, match="truncated"):
        truncated(spectrum(d, np.full(16, 1 / 16), dim=16), 4)


def test_authors_estimator_on_a_hand_checkable_spectrum():
    """Two nodes on grid points of the binned density (so each keeps its weight), 1,000 weights of
    |w| = 0.1 (R(i/1000) = 0.1·√i, rounded: 0 below i = 25, 1 up to 224, 2 up to 624, 3 above):
    G(R) at integer R and the argmin over the 1,000-point grid, by hand."""
    w = torch.full((1000,), 0.1, dtype=torch.float64)
    dist = SparseDistance(w)
    spec = spectrum([1.0, 3.0], [0.5, 0.5], dim=1000)
    eps = 0.1  # 2ε = 0.2: G(1) = 0.5·0.2/1.2 + 0.5·0.2/3.2 = 0.114583…, nearest grid point 0.115
    assert authors_estimate(dist, spec, eps, bins=203) == 0.115  # spacing 0.01: 1.0 and 3.0 are bins
    # the zero mass q = 0.2 enters as a bin at 1e-30 (term 1): G(2) = 0.2 + 0.8·(0.2/8.4 + 0.2/24.4)
    # = 0.22561 falls in R = 2's block (s from 0.225), nearest 0.226; G(1) = 0.29 lies beyond R = 1's block
    assert authors_estimate(dist, spectrum([1.0, 3.0], [0.5, 0.5], zero_mass=0.2, dim=1000), eps, bins=203) == 0.226
    # the binning mis-weights: a node half-way between two bins (a Gaussian far narrower than a bin)
    # is lost, so only the node at 1.0 counts: G(1) = 0.2/1.2 = 0.1667 → 0.167 (the node at 3.0, of
    # weight 0, keeps the grid where it was)
    lost = spectrum([1.0, 2.005, 3.0], [0.5, 0.5, 0.0], dim=1000)
    assert authors_estimate(dist, lost, eps, bins=203) == 0.167
    # ours on the same spectrum: R not rounded, no bins; the fixed point differs
    ours = predict_limit(w, spec, eps).removed_frac
    r = dist(ours)
    assert ours == pytest.approx(0.5 * 0.2 / (0.2 + r * r) + 0.5 * 0.2 / (0.2 + 3 * r * r), abs=1e-3)
    assert abs(ours - 0.115) > 0.005
    # predict_limit stores the estimator with its default 100,000 bins
    assert predict_limit(w, spec, eps).authors_removed_frac == authors_estimate(dist, spec, eps)


def test_drop_is_refused_where_negative_curvature_matters():
    """Drop's s* is refused (no fractions, one line why, unresolved) when negative nodes beyond the
    zero-curvature tolerance carry more than the tolerance of G at R(s*); a spectrum without them
    gives drop's s* as usual."""
    w = torch.from_numpy(np.random.default_rng(4).normal(0, 0.05, 4000))
    indefinite = spectrum([-1e-3, -1e-4, 0.5, 2.0], [0.2, 0.2, 0.3, 0.3], dim=4000)
    pred = predict_limit(w, indefinite, 0.01, policy="drop")
    assert pred.negative_share > 0.01 and pred.unresolved is True
    assert pred.removed_frac is None and pred.kept_frac is None and pred.trace_bound_removed_frac is None
    assert pred.note.startswith("drop refused: negative curvature carries") and "\n" not in pred.note
    cols = pred.columns()
    assert cols["predicted_removed_frac"] is None and cols["predicted_note"] == pred.note
    assert cols["predicted_removed_frac_authors"] is not None  # the authors' estimator reads |θ|: kept
    absolute = predict_limit(w, indefinite, 0.01, policy="abs")
    assert absolute.note is None and absolute.negative_share > 0.01  # abs reads |θ|: well posed
    # the share is (1 − q)·Σ τ·2ε/(2ε + R²|θ|) over the negative nodes, at R(s*)
    r2 = SparseDistance(w)(absolute.removed_frac) ** 2
    share = sum(t * 0.02 / (0.02 + r2 * abs(v)) for v, t in ((-1e-3, 0.2), (-1e-4, 0.2)))
    assert absolute.negative_share == pytest.approx(share, rel=1e-9)
    psd = spectrum([1e-4, 0.5, 2.0], [0.4, 0.3, 0.3], dim=4000)
    kept = predict_limit(w, psd, 0.01, policy="drop")
    assert kept.negative_share == 0.0 and kept.note is None and kept.unresolved is None
    assert kept.removed_frac == predict_limit(w, psd, 0.01, policy="abs").removed_frac  # no negative node
    # negligible negative mass (below the tolerance's share): reported, within the share of abs
    slight = spectrum([-1e-9, 1e-4, 0.5, 2.0], [0.002, 0.398, 0.3, 0.3], dim=4000)
    small = predict_limit(w, slight, 0.01, policy="drop", zero_tol=0.0)
    assert small.note is None and 0 < small.negative_share <= 0.01
    assert abs(small.removed_frac - predict_limit(w, slight, 0.01, zero_tol=0.0).removed_frac) <= 0.01


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
