"""The 21 pruners (docs/algorithms.md §5) and pruning to a target effective sparsity (§3).

Oracles are independent of the code under test: scores from `torch.func` / full Hessians /
hand-written linear products on tiny nets, effective sparsity of MLPs by boolean matrix products,
and brute-force scans over every k.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from pruning import masks, models, quotas
from pruning.pruners import PRUNERS, plan_for, prune
from pruning.pruners import grasp as grasp_mod
from pruning.pruners.common import iterative_order, kept_after_round, scoring_copy
from pruning.pruners.grasp import grasp_scores
from pruning.pruners.imp import imp_schedule
from pruning.pruners.lamp import lamp_scores
from pruning.pruners.plan import Layout
from pruning.pruners.snip import snip_scores
from pruning.pruners.synflow import linearized, synflow_scores
from pruning.pruners.target import largest_removal

NAMES = [
    "dense",
    *[f"random/{q}" for q in ("uniform", "uniform_plus", "erk", "igq", "smart_ratio", "snip", "synflow")],
    *[f"magnitude/{q}" for q in ("global", "uniform", "uniform_plus", "erk", "igq")],
    "lamp", "snip", "snip/iterative", "grasp", "synflow", "imp", "lomp", "rare_gems",
]
FAST = {"synflow": {"rounds": 4}, "random/synflow": {"rounds": 4}, "snip/iterative": {"rounds": 4},
        "snip": {"batches": 2}, "grasp": {"batches": 2, "samples_per_class": 1}, "random/snip": {"batches": 2}}


def mlp(seed: int = 0, widths=(6, 4, 4, 3), bias: bool = True) -> nn.Module:
    """A tiny MLP whose effective sparsity jumps (hidden widths of 4)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
    net = nn.Sequential(*layers[:-1])
    net.input_shape = (1, 2, widths[0] // 2)
    return net


def batches(n: int = 3, seed: int = 1, shape=(1, 2, 3), classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, *shape, generator=g), torch.randint(0, classes, (8,), generator=g)) for _ in range(n)]


def flat(mask_dict) -> torch.Tensor:
    return torch.cat([m.reshape(-1) for m in mask_dict.values()])


def mlp_effective_sparsity(mask_dict) -> float:
    """Oracle: a weight is effective iff its input unit is reachable from the inputs and its output
    unit reaches the outputs (boolean matrix products)."""
    ms = [m.to(torch.float64) for m in mask_dict.values()]  # (out, in) each
    fwd = [torch.ones(ms[0].shape[1], dtype=torch.float64)]
    for m in ms:
        fwd.append((m @ fwd[-1] > 0).to(torch.float64))
    bwd = [torch.ones(ms[-1].shape[0], dtype=torch.float64)]
    for m in reversed(ms):
        bwd.insert(0, (m.T @ bwd[0] > 0).to(torch.float64))
    kept = sum(int((m * bwd[i + 1][:, None] * fwd[i][None, :]).sum()) for i, m in enumerate(ms))
    return 1 - kept / sum(m.numel() for m in ms)


# --- registry -----------------------------------------------------------------------------------


def test_registry_has_exactly_the_spec_names_and_metadata():
    assert list(PRUNERS) == NAMES
    for name, info in PRUNERS.items():
        assert info.name == name and info.doc and "\n" not in info.doc
        assert info.needs_data == (name in ("snip", "snip/iterative", "grasp", "random/snip", "rare_gems"))
        assert info.needs_l1_training == (name == "lomp")
        after = name.startswith("magnitude/") or name in ("lamp", "imp", "lomp")
        assert info.when == ("after" if after else "init")
        assert info.protocol == ("train" if not after else "none" if name == "lomp" else "rewind")
    assert PRUNERS["synflow"].option_defaults == {"rounds": 100}  # input_shape is a Python argument only
    assert PRUNERS["imp"].option_defaults == {"rounds": None, "rate": 0.2}  # train_fn, rewind_state: the trial's
    assert PRUNERS["random/snip"].options is PRUNERS["snip"].options  # its quota is a SNIP mask


# --- scores against direct computations -----------------------------------------------------------


def test_magnitude_global_and_uniform_on_known_weights():
    model = mlp(bias=False)
    values = torch.randperm(52, generator=torch.Generator().manual_seed(3)).to(torch.float32) + 1
    signs = torch.where(torch.arange(52) % 3 == 0, -1.0, 1.0)
    w = (values * signs).split([24, 16, 12])
    with torch.no_grad():
        for (_, layer), v in zip(masks.prunable_layers(model), w):
            layer.weight.copy_(v.reshape(layer.weight.shape))
    result = prune(model, "magnitude/global", 0.5)
    assert result.removed_count == 26 and result.direct_sparsity == 0.5
    assert torch.equal(flat(masks.get_masks(model)), values > 26)  # the 26 largest |w| survive
    model2 = mlp(bias=False)
    with torch.no_grad():
        for (_, layer), v in zip(masks.prunable_layers(model2), w):
            layer.weight.copy_(v.reshape(layer.weight.shape))
    prune(model2, "magnitude/uniform", 0.5)
    for m, v in zip(masks.get_masks(model2).values(), w):
        keep = v.abs() >= v.abs().sort().values[len(v) // 2]  # the upper half of each layer
        assert torch.equal(m.reshape(-1), keep)


def test_lamp_scores_by_hand_and_differs_from_magnitude():
    model = nn.Sequential(nn.Linear(3, 1, bias=False), nn.Linear(1, 2, bias=False))
    model.input_shape = (3,)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.1, 1.2]]))
        model[1].weight.copy_(torch.tensor([[1.05], [4.0]]))
    assert lamp_scores(model[0].weight).reshape(-1).tolist() == pytest.approx([1 / 3.65, 1.21 / 2.65, 1.0])
    assert lamp_scores(model[1].weight).reshape(-1).tolist() == pytest.approx([1.1025 / 17.1025, 1.0])
    lamp_plan = plan_for(model, "lamp", 0.2)
    mag_plan = plan_for(model, "magnitude/global", 0.2)
    assert lamp_plan.order[:3].tolist() == [3, 0, 1]  # B0, then A0, A1 (flat index: A0..A2, B0, B1)
    assert mag_plan.order[:2].tolist() == [0, 3]  # plain |w|: A0 (1.0) before B0 (1.05)


def test_snip_scores_match_torch_func_mean_gradient():
    model, data = mlp(), batches(3)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    grads = [grad(loss)(params, x, y) for x, y in data]
    names = [f"{n}.weight" for n, _ in masks.prunable_layers(model)]
    want = torch.cat([(sum(g[n] for g in grads) / 3 * params[n]).abs().reshape(-1) for n in names])
    got = snip_scores(scoring_copy(model), data)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-8)
    prune(model, "snip", 0.75, data=data, batches=3)
    kept = flat(masks.get_masks(model))
    assert torch.equal(kept, want >= want.sort().values[52 - 13])  # the 13 highest survive


def test_grasp_scores_match_the_full_hessian():
    model, data = mlp(), batches(2)
    layers = [layer for _, layer in masks.prunable_layers(model)]
    theta = torch.cat([layer.weight.detach().reshape(-1) for layer in layers])
    base = {k: v.detach() for k, v in model.named_parameters()}

    def loss(vec):
        p = dict(base)
        for (name, layer), part in zip(masks.prunable_layers(model), vec.split([24, 16, 12])):
            p[f"{name}.weight"] = part.reshape(layer.weight.shape)
        return sum(F.cross_entropy(functional_call(model, p, (x,)), y) for x, y in data) / len(data)

    g = torch.autograd.functional.jacobian(loss, theta)
    h = torch.autograd.functional.hessian(loss, theta)
    want = -theta * (h @ g)
    got = grasp_scores(scoring_copy(model), data)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)
    plan = plan_for(model, "grasp", 0.5, data=data, batches=2, temperature=1.0, balanced=False)
    assert plan.order[:10].tolist() == torch.argsort(want, descending=True)[:10].tolist()  # highest first


def _grasp_oracle(model: nn.Module, data, temperature: float) -> torch.Tensor:
    """−θ ⊙ (H g) from the full Hessian of the mean loss of logits / T (torch.autograd.functional)."""
    layers = masks.prunable_layers(model)
    theta = torch.cat([layer.weight.detach().reshape(-1) for _, layer in layers])
    base = {k: v.detach() for k, v in model.named_parameters()}

    def loss(vec):
        p = dict(base)
        for (name, layer), part in zip(layers, vec.split([layer.weight.numel() for _, layer in layers])):
            p[f"{name}.weight"] = part.reshape(layer.weight.shape)
        return sum(F.cross_entropy(functional_call(model, p, (x,)) / temperature, y) for x, y in data) / len(data)

    g = torch.autograd.functional.jacobian(loss, theta)
    return -theta * (torch.autograd.functional.hessian(loss, theta) @ g)


def test_grasp_temperature_divides_the_logits():
    """S at T = 200 against the full-Hessian oracle of CE(logits / 200); in float64, since S shrinks
    roughly as 1/T². T changes the ranking, not just the scale of S."""
    model = mlp().double()
    data = [(x.double(), y) for x, y in batches(2)]
    s1 = grasp_scores(scoring_copy(model), data, temperature=1.0)
    for t in (200.0, 7.0):
        want = _grasp_oracle(model, data, t)
        got = grasp_scores(scoring_copy(model), data, temperature=t)
        assert torch.allclose(got, want, rtol=1e-8, atol=1e-12 * float(want.abs().max()))
    s200 = grasp_scores(scoring_copy(model), data, temperature=200.0)
    assert torch.corrcoef(torch.stack([s1, s200]))[0, 1] < 0.999  # not a rescaling of S at T = 1
    assert torch.argsort(s1, descending=True).tolist() != torch.argsort(s200, descending=True).tolist()


def _old_grasp_scores(clone, data):
    """The pruner's scores before temperature and balanced batches, as it was written."""
    from pruning.pruners.common import mean_over_batches
    from pruning.pruners.snip import mean_gradient

    g = mean_gradient(clone, data)

    def product(params, x, y):
        grads = torch.autograd.grad(F.cross_entropy(clone(x), y), params, create_graph=True)
        return torch.autograd.grad(sum((gi * fixed).sum() for gi, fixed in zip(grads, g)), params)

    hg = mean_over_batches(clone, data, product)
    return torch.cat([(-p * h).reshape(-1) for p, h in zip(grasp_mod.prunable_params(clone), hg)])


def test_grasp_old_behaviour_is_temperature_1_unbalanced_bit_for_bit():
    from pruning import data as data_lib
    from pruning.pruners.common import current_keep, order_from_scores, scores_on_batches

    train, _ = data_lib.load("synthetic", input_shape=(1, 2, 3), num_classes=3, n_train=600, n_test=16)
    model = mlp()
    old = scores_on_batches(model, train, _old_grasp_scores, seed=4, batches=3, batch_size=128)
    new = scores_on_batches(model, train, lambda c, b: grasp_scores(c, b, temperature=1.0), seed=4, batches=3,
                            batch_size=128)
    assert torch.equal(old, new)
    want = order_from_scores(Layout.of(model), -old, current_keep(model), 4).order
    got = plan_for(model, "grasp", 0.5, data=train, seed=4, batches=3, temperature=1.0, balanced=False).order
    assert torch.equal(got, want)
    default = plan_for(model, "grasp", 0.5, data=train, seed=4, batches=3).order  # T = 200, balanced
    assert not torch.equal(default, want)


def test_grasp_reinit_scores_a_xavier_copy_and_one_draw():
    """reinit: the scores are those of a copy whose Linear weights are xavier_normal draws from a
    generator seeded with the seed (the model keeps its weights); batches: 1 with 10 per class is the
    reference's single draw."""
    from pruning import data as data_lib
    from pruning.pruners.common import current_keep, order_from_scores

    train, _ = data_lib.load("synthetic", input_shape=(1, 2, 3), num_classes=3, n_train=90, n_test=16)
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = plan_for(model, "grasp", 0.5, data=train, seed=3, batches=1, reinit=True).order
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    # oracle: the same copy re-initialized by hand, scored on the same one balanced draw
    clone = scoring_copy(model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in clone.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(nn.init.xavier_normal_(torch.empty(m.weight.shape), generator=g))
    draw = grasp_mod.class_balanced_batches(train, num_classes=3, per_class=10, count=1, seed=3,
                                            device=torch.device("cpu"))
    want = order_from_scores(Layout.of(model), -grasp_scores(clone, draw, temperature=200.0), current_keep(model), 3)
    assert torch.equal(got, want.order)
    assert not torch.equal(got, plan_for(model, "grasp", 0.5, data=train, seed=3, batches=1).order)
    assert PRUNERS["grasp"].make_options({}).reinit is False  # the default keeps what cells computed


def test_class_balanced_batches_hold_exactly_k_of_each_class():
    from pruning import data as data_lib

    train, _ = data_lib.load("synthetic", input_shape=(1, 2, 3), num_classes=3, n_train=90, n_test=16)
    x_all, y_all = train.tensors()
    got = grasp_mod.class_balanced_batches(train, num_classes=3, per_class=4, count=5, seed=0,
                                           device=torch.device("cpu"))
    assert len(got) == 5
    seen = []
    for x, y in got:
        assert y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        for xi, yi in zip(x, y):  # every sample is a real one of its class, none repeated
            match = torch.nonzero((x_all == xi).flatten(1).all(1)).flatten().tolist()
            assert len(match) == 1 and int(y_all[match[0]]) == int(yi)
            seen.append(match[0])
    assert len(set(seen)) == 60
    again = grasp_mod.class_balanced_batches(train, num_classes=3, per_class=4, count=5, seed=0,
                                             device=torch.device("cpu"))
    other = grasp_mod.class_balanced_batches(train, num_classes=3, per_class=4, count=5, seed=1,
                                             device=torch.device("cpu"))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, again))
    assert not torch.equal(got[0][0], other[0][0])
    listed = grasp_mod.class_balanced_batches(batches(4), num_classes=3, per_class=2, count=2, seed=0,
                                              device=torch.device("cpu"))  # from an iterable of batches
    assert [y.tolist() for _, y in listed] == [[0, 0, 1, 1, 2, 2]] * 2
    with pytest.raises(ValueError, match=r"data: class \d has \d+ samples, class-balanced GraSP needs .* = 40 of each"):
        grasp_mod.class_balanced_batches(train, num_classes=3, per_class=8, count=5, seed=0,
                                         device=torch.device("cpu"))


def test_grasp_default_scores_balanced_batches_at_temperature_200():
    from pruning import data as data_lib
    from pruning.pruners.common import current_keep, order_from_scores

    train, _ = data_lib.load("synthetic", input_shape=(1, 2, 3), num_classes=3, n_train=90, n_test=16)
    model = mlp()
    scoring = grasp_mod.class_balanced_batches(train, num_classes=3, per_class=3, count=2, seed=5,
                                               device=torch.device("cpu"))
    want = _grasp_oracle(model, scoring, 200.0)
    plan = plan_for(model, "grasp", 0.5, data=train, seed=5, batches=2, samples_per_class=3)
    assert plan.order[:10].tolist() == torch.argsort(want, descending=True)[:10].tolist()
    exact = order_from_scores(Layout.of(model), -grasp_scores(scoring_copy(model), scoring, temperature=200.0),
                              current_keep(model), 5).order
    assert torch.equal(plan.order, exact)
    with pytest.raises(ValueError, match=r"^pruner 'grasp': temperature: 0; expected a number > 0$"):
        plan_for(model, "grasp", 0.5, data=train, temperature=0)
    with pytest.raises(ValueError, match=r"^pruner 'grasp': batch_size: 16; balanced batches hold samples_per_class"):
        plan_for(model, "grasp", 0.5, data=train, batch_size=16)
    with pytest.raises(ValueError, match=r"^pruner 'grasp': samples_per_class: 0; expected an integer ≥ 1$"):
        plan_for(model, "grasp", 0.5, data=train, samples_per_class=0)


def _synflow_oracle(ws: list[torch.Tensor]) -> torch.Tensor:
    """R = 1ᵀ |W3| |W2| |W1| 1 by hand, score = ∂R/∂w ⊙ |w|."""
    ws = [w.detach().abs().to(torch.float64).requires_grad_(True) for w in ws]
    v = torch.ones(ws[0].shape[1], dtype=torch.float64)
    for w in ws:
        v = w @ v
    gs = torch.autograd.grad(v.sum(), ws)
    return torch.cat([(g * w).reshape(-1) for g, w in zip(gs, ws)]).detach()


def test_synflow_scores_match_hand_products_mlp_and_conv():
    model = mlp()
    want = _synflow_oracle([m.weight for _, m in masks.prunable_layers(model)])
    got = synflow_scores(linearized(model), (1, 2, 3))
    assert torch.allclose(got / got.sum(), want / want.sum(), rtol=1e-12)
    # conv with BN, ReLU, bias and max-pool: linearized = |conv| -> avg-pool -> |linear|
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8, 3))
    w1 = conv[0].weight.detach().abs().double().requires_grad_(True)
    w2 = conv[5].weight.detach().abs().double().requires_grad_(True)
    out = F.avg_pool2d(F.conv2d(torch.ones(1, 1, 4, 4, dtype=torch.float64), w1, padding=1), 2)
    r = (out.flatten(1) @ w2.T).sum()
    g1, g2 = torch.autograd.grad(r, [w1, w2])
    want = torch.cat([(g1 * w1).reshape(-1), (g2 * w2).reshape(-1)]).detach()
    got = synflow_scores(linearized(conv), (1, 4, 4))
    assert torch.allclose(got / got.sum(), want / want.sum(), rtol=1e-12)


def test_synflow_survives_a_float32_overflow_and_conserves_flow_per_layer():
    torch.manual_seed(0)
    deep = nn.Sequential(nn.Flatten(), *[nn.Linear(64, 64) for _ in range(30)])  # R ≈ 32^30 ≈ 1e45
    with torch.no_grad():
        for layer in deep[1:]:
            layer.weight.uniform_(0, 1)
    scores = synflow_scores(linearized(deep), (1, 8, 8))
    assert bool(torch.isfinite(scores).all()) and bool((scores > 0).all())
    # a chain is homogeneous of degree 1 in each layer: Σ_w w ∂R/∂w = R for every layer (R = 1 after rescaling)
    assert scores.reshape(30, -1).sum(1).tolist() == pytest.approx([1.0] * 30, rel=1e-9)


def test_pruners_never_revive_weights_pruned_before():
    for name in ("magnitude/global", "lamp", "magnitude/igq", "random/uniform", "synflow"):
        model = mlp(seed=7)
        prune(model, "random/uniform", 0.5, seed=11)
        before = flat(masks.get_masks(model))
        prune(model, name, 0.7, **FAST.get(name, {}))
        after = flat(masks.get_masks(model))
        assert not bool((after & ~before).any()), name
        assert int(after.sum()) == round(0.3 * 52)


# --- iterative schedules -------------------------------------------------------------------------


def test_exponential_and_imp_schedules_by_hand():
    assert [kept_after_round(t, 2, 1000, 0.9) for t in (0, 1, 2)] == [1000, 316, 100]
    assert imp_schedule(1000, 0.5, 0.2, None) == [800, 640, 512, 500]  # 20% of the remaining per round
    assert imp_schedule(1000, 0.2, 0.2, None) == [800]
    assert imp_schedule(1000, 0.9, 0.2, 3) == [464, 215, 100]
    assert imp_schedule(1000, 0.0, 0.2, None) == []


def test_lowest_selects_the_smallest_with_random_ties():
    from pruning.pruners.common import lowest

    scores = torch.tensor([3.0, 1.0, 2.0, 1.0, 1.0, 5.0])
    picks = {tuple(lowest(scores, 2, seed).tolist()) for seed in range(20)}
    assert all(set(p) <= {1, 3, 4} and len(set(p)) == 2 for p in picks) and len(picks) > 1
    four = lowest(scores, 4, 0)
    assert sorted(four[:3].tolist()) == [1, 3, 4] and four[3] == 2
    big = torch.randint(0, 50, (5000,), generator=torch.Generator().manual_seed(0)).double()
    got = lowest(big, 1234, 7)
    assert torch.equal(big[got], big.sort().values[:1234]) and got.unique().numel() == 1234


def test_iterative_order_prunes_the_planned_counts_and_ranks_rounds_first():
    layout = Layout.of(mlp())
    seen = []

    def score(keep):  # rank by index, reversed: a deterministic score
        seen.append(int(keep.sum()))
        return -torch.arange(52, dtype=torch.float64)

    sched = [kept_after_round(t, 3, 52, 0.8) for t in (1, 2, 3)]
    plan = iterative_order(layout, torch.ones(52, dtype=torch.bool), sched, score, seed=0)
    assert sched == [30, 18, 10] and seen == [52, 30, 18]  # 52·0.2^(t/3)
    assert plan.order.tolist() == list(range(51, -1, -1))  # round 1 took 51..30, round 2 29..18, ...
    assert sorted(plan.order.tolist()) == list(range(52))


def _iterative_oracle(model, rounds, s, score_of):
    """Plain re-implementation: score the masked weights, drop the lowest survivors per round."""
    keep = torch.ones(52, dtype=torch.bool)
    for t in range(1, rounds + 1):
        scores = score_of(keep, t)
        target = kept_after_round(t, rounds, 52, s)
        alive = torch.nonzero(keep).flatten()
        drop = alive[torch.argsort(scores[alive])[: len(alive) - target]]
        keep[drop] = False
    return keep


def test_synflow_iterative_matches_a_plain_loop():
    model = mlp(seed=4)
    ws = [m.weight.detach() for _, m in masks.prunable_layers(model)]

    def score_of(keep, t):
        parts = keep.split([24, 16, 12])
        return _synflow_oracle([w * k.reshape(w.shape) for w, k in zip(ws, parts)])

    want = _iterative_oracle(model, 5, 0.85, score_of)
    prune(model, "synflow", 0.85, rounds=5)
    assert torch.equal(flat(masks.get_masks(model)), want)


def test_snip_iterative_uses_a_fresh_batch_per_round_and_masked_gradients():
    model, data = mlp(seed=5), batches(3)
    ws = {f"{n}.weight": m.weight.detach() for n, m in masks.prunable_layers(model)}
    base = {k: v.detach() for k, v in model.named_parameters()}

    def score_of(keep, t):
        p = dict(base)
        for (name, w), k in zip(ws.items(), keep.split([24, 16, 12])):
            p[name] = w * k.reshape(w.shape)
        x, y = data[(t - 1) % 3]
        g = grad(lambda q: F.cross_entropy(functional_call(model, q, (x,)), y))(p)
        return torch.cat([(g[n] * p[n]).abs().reshape(-1) for n in ws]).double()

    want = _iterative_oracle(model, 3, 0.8, score_of)
    prune(model, "snip/iterative", 0.8, data=data, rounds=3)
    assert torch.equal(flat(masks.get_masks(model)), want)
    one_round = plan_for(mlp(seed=5), "snip/iterative", 0.8, data=data, rounds=1)
    one_shot = plan_for(mlp(seed=5), "snip", 0.8, data=data, batches=1)
    assert torch.equal(one_round.order, one_shot.order)


def test_imp_prunes_rewinds_and_retrains_on_schedule():
    model = mlp(seed=6)
    rewind = copy.deepcopy(model.state_dict())
    trained = {f"{n}.weight": m.weight.detach().clone() for n, m in masks.prunable_layers(model)}
    calls = []

    def train_fn(net):  # "training" adds 1 to every weight; records the mask it trains under
        calls.append(int(flat(masks.get_masks(net)).sum()))
        with torch.no_grad():
            for _, layer in masks.prunable_layers(net):
                layer.weight_orig.add_(1.0)

    result = prune(model, "imp", 0.5, train_fn=train_fn, rewind_state=rewind)
    assert calls == [42, 33, 27]  # imp_schedule(52, 0.5): 42, 33, 27, 26
    assert result.removed_count == 26
    # oracle: round 1 on the trained weights, later rounds on rewind + 1
    rewound = torch.cat([(rewind[n] + 1).reshape(-1) for n in trained])
    current = torch.cat([w.reshape(-1) for w in trained.values()])
    keep = torch.ones(52, dtype=torch.bool)
    for target in imp_schedule(52, 0.5, 0.2, None):
        alive = torch.nonzero(keep).flatten()
        keep[alive[torch.argsort(current[alive].abs())[: len(alive) - target]]] = False
        current = rewound
    assert torch.equal(flat(masks.get_masks(model)), keep)
    assert torch.allclose(flat(masks.weights(model)), rewound * keep)  # survivors: retrained values


# --- nested masks and the effective target ---------------------------------------------------------


@pytest.mark.parametrize("pruner", ["random/igq", "random/erk", "random/smart_ratio", "magnitude/uniform_plus",
                                    "random/snip", "random/synflow", "random/uniform"])
def test_quota_plans_are_nested_and_follow_the_quota(pruner):
    model = models.build("lenet5", input_shape=(3, 32, 32), num_classes=10)
    data = batches(2, shape=(3, 32, 32), classes=10)
    plan = plan_for(model, pruner, 0.95, data=data, **FAST.get(pruner, {}))
    n = plan.n
    ks = sorted({0, 1, 2, n // 3, n // 2, int(0.9 * n), int(0.95 * n), plan.limit - 1, plan.limit}
                | set(torch.randint(0, plan.limit, (20,), generator=torch.Generator().manual_seed(0)).tolist()))
    prev = None
    for k in ks:
        kept = flat(plan.masks_at(k))
        assert int(kept.sum()) == n - k
        if prev is not None:
            assert not bool((kept & ~prev).any()), f"{pruner}: k={k} revives a weight"
        prev = kept
    scheme = pruner.split("/")[1]
    if scheme not in ("snip", "synflow"):
        s = 0.9
        want = quotas.kept_counts(quotas.densities(scheme, quotas.layer_shapes(model), s), masks.layer_counts(model), s)
        k = n - round((1 - s) * n)
        assert [int(m.sum()) for m in plan.direct_masks(k).values()] == want  # exact quota rounding
        nested = [int(m.sum()) for m in plan.masks_at(k).values()]  # nested family: within one weight
        assert sum(nested) == sum(want) and max(abs(a - b) for a, b in zip(nested, want)) <= 1


def test_random_masks_depend_on_the_seed_only():
    a = flat(plan_for(mlp(), "random/uniform", 0.5, seed=1).masks_at(26))
    b = flat(plan_for(mlp(seed=9), "random/uniform", 0.5, seed=1).masks_at(26))
    c = flat(plan_for(mlp(), "random/uniform", 0.5, seed=2).masks_at(26))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_largest_removal_bisection_on_a_step_function():
    steps = [0.0] * 10 + [0.5] * 5 + [0.9] * 86  # E(k) for k = 0..100
    for target in (0.0, 0.3, 0.5, 0.7, 0.95):
        found = largest_removal(lambda k: max(steps[k], k / 100), 100, target)
        want = max(k for k in range(101) if max(steps[k], k / 100) <= target)
        assert found.removed == want and found.met
        assert found.evaluations <= math.ceil(math.log2(100)) + 2
    assert not largest_removal(lambda k: 0.2 + k, 100, 0.1).met  # the dense net exceeds the target


@pytest.mark.parametrize("pruner", ["random/uniform", "random/igq", "magnitude/global", "lamp", "synflow",
                                    "snip", "magnitude/erk", "random/smart_ratio", "grasp"])
def test_effective_target_is_the_largest_k_by_brute_force(pruner):
    data = batches(2)
    for target in (0.3, 0.55, 0.7, 0.8, 0.9):
        base = mlp(seed=2)
        plan = plan_for(base, pruner, target, data=data, **FAST.get(pruner, {}))
        scan = [mlp_effective_sparsity(plan.masks_at(k)) for k in range(plan.limit + 1)]
        assert scan == sorted(scan)  # nested masks: E never decreases
        ok = [k for k, e in enumerate(scan) if e <= target]
        result = prune(base, pruner, target, target="effective", data=data, **FAST.get(pruner, {}))
        k = result.removed_count
        assert k == max(ok), (pruner, target)
        assert result.effective_sparsity == pytest.approx(scan[k]) and result.effective_sparsity <= target
        assert k == plan.limit or scan[k + 1] > target
        assert result.direct_sparsity == k / 52 and result.requested_sparsity == target
        assert result.target == "effective" and result.evaluations <= 8
        assert int(flat(masks.get_masks(base)).sum()) == 52 - k


def test_effective_target_on_a_small_conv_net_by_brute_force():
    from pruning.sparsity import EffectiveMaskEvaluator

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, padding=1),
                        nn.Flatten(), nn.Linear(8, 3))  # 18 + 36 + 24 = 78 weights on a 4×4 input
    net.input_shape = (1, 4, 4)
    evaluate = EffectiveMaskEvaluator(net)
    target = 0.6
    for pruner in ("random/igq", "synflow"):
        plan = plan_for(net, pruner, target, **FAST.get(pruner, {}))
        # E(k) ≥ k/N, so nothing beyond k = ⌊0.6·78⌋ + 1 = 47 can qualify
        scan = [evaluate.effective_sparsity(plan.masks_at(k)) for k in range(48)]
        assert scan == sorted(scan) and scan[47] > target
        model = copy.deepcopy(net)
        result = prune(model, pruner, target, target="effective", **FAST.get(pruner, {}))
        assert result.removed_count == max(k for k, e in enumerate(scan) if e <= target)
        assert result.effective_sparsity == pytest.approx(scan[result.removed_count])


def test_direct_target_on_a_real_model_records_both_sparsities():
    model = models.build("resnet20", input_shape=(3, 4, 4), num_classes=10)
    n = masks.count_prunable(model)
    result = prune(model, "random/erk", 0.9, seed=3)
    assert result.removed_count == n - round(0.1 * n) and result.direct_sparsity == result.removed_count / n
    assert result.effective_sparsity >= result.direct_sparsity
    assert result.report.direct_sparsity == result.direct_sparsity and result.evaluations == 0
    result = prune(models.build("resnet20", input_shape=(3, 4, 4), num_classes=10), "random/erk", 0.9,
                   target="effective", seed=3)
    assert result.effective_sparsity <= 0.9 and result.direct_sparsity <= 0.9
    assert result.evaluations <= math.ceil(math.log2(n)) + 2


def test_uniform_plus_is_refused_on_an_mlp():
    """docs/algorithms.md §4: uniform_plus is defined for conv nets only; on LeNet-300-100 its dense first
    layer (88% of the weights) would empty the other layers, so both pruners refuse it."""
    for pruner in ("random/uniform_plus", "magnitude/uniform_plus"):
        with pytest.raises(ValueError, match=r"^quota 'uniform_plus' is defined for convolutional networks only"):
            prune(models.build("lenet300100", input_shape=(1, 8, 8), num_classes=10), pruner, 0.5)
    with pytest.raises(ValueError, match="convolutional networks only"):
        quotas.quotas("uniform_plus", mlp(), 0.5)


def test_uniform_plus_on_a_conv_net_meets_the_total():
    model = models.build("lenet5", input_shape=(3, 32, 32), num_classes=10)
    n = masks.count_prunable(model)
    for s in (0.5, 0.9, 0.98):
        m = copy.deepcopy(model)
        result = prune(m, "random/uniform_plus", s)
        kept = [int(k.sum()) for k in masks.get_masks(m).values()]
        assert abs(sum(kept) - (1 - s) * n) <= 1 and result.removed_count == n - sum(kept)
        assert kept[0] == masks.layer_counts(m)[0]  # the first layer stays dense


def test_a_mask_without_input_output_paths_is_warned_about():
    """Global magnitude on an MLP whose middle layer holds the 16 smallest weights: removing 16 of
    52 empties it, so no input→output path is left although 36 weights are kept."""
    import warnings

    def net() -> nn.Module:
        model = mlp(bias=False)
        with torch.no_grad():
            for i, (_, layer) in enumerate(masks.prunable_layers(model)):
                layer.weight.copy_(torch.full_like(layer.weight, 1e-3 if i == 1 else 1.0))
        return model

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prune(net(), "magnitude/global", 15 / 52)
    model = net()
    with pytest.warns(RuntimeWarning, match=r"'magnitude/global' at sparsity 0.307692 leaves no input→output "
                                            r"path .*fully pruned layer\(s\): 3$"):
        result = prune(model, "magnitude/global", 16 / 52)
    kept = {name: int(m.sum()) for name, m in masks.get_masks(model).items()}
    assert kept == {"1": 24, "3": 0, "5": 12} and result.effective_sparsity == 1.0


def test_dense_keeps_everything():
    model = mlp()
    result = prune(model, "dense", 0.0)
    assert result.removed_count == 0 and result.effective_sparsity == 0.0
    assert bool(flat(masks.get_masks(model)).all())


# --- bad input ---------------------------------------------------------------------------------


def test_bad_input_messages():
    with pytest.raises(ValueError, match=r"pruner 'magnitude': choose from dense, random/uniform, .*lomp"):
        prune(mlp(), "magnitude", 0.5)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=rf"sparsity {bad}: must be in \[0, 1\)"):
            prune(mlp(), "random/uniform", bad)
    with pytest.raises(ValueError, match="target 'exact': choose from direct, effective"):
        prune(mlp(), "lamp", 0.5, target="exact")
    for name in ("snip", "snip/iterative", "grasp", "random/snip"):
        with pytest.raises(ValueError, match=f"data: pruner '{name}' needs data"):
            prune(mlp(), name, 0.5)
    with pytest.raises(ValueError, match=r"pruner 'synflow': unknown key 'iterations'; allowed: rounds"):
        prune(mlp(), "synflow", 0.5, iterations=3)
    with pytest.raises(ValueError, match="pruner 'random/igq': unknown key 'rounds'; allowed: none"):
        prune(mlp(), "random/igq", 0.5, rounds=3)
    with pytest.raises(ValueError, match="imp: needs train_fn"):
        prune(mlp(), "imp", 0.5)
    with pytest.raises(ValueError, match="only takes sparsity 0"):
        prune(mlp(), "dense", 0.5)
    with pytest.raises(ValueError, match=r"sparsity 0.95: pruner 'random/smart_ratio' reaches at most 0.923"):
        prune(mlp(), "random/smart_ratio", 0.95)  # the classifier keeps 30% of its 12 weights
    with pytest.raises(ValueError, match="data: no batches"):
        prune(mlp(), "snip", 0.5, data=[])
    with pytest.raises(ValueError, match="pruner 'synflow': rounds: 0; expected an integer ≥ 1"):
        prune(mlp(), "synflow", 0.5, rounds=0)
    with pytest.raises(ValueError, match="pruner 'grasp': batches: 0; expected an integer ≥ 1"):
        prune(mlp(), "grasp", 0.5, data=batches(1), batches=0)


def test_data_driven_pruners_take_a_split():
    from pruning import data as data_lib

    train, _ = data_lib.load("synthetic", input_shape=(1, 2, 3), num_classes=3, n_train=64, n_test=16)
    sizes = {"grasp": {"samples_per_class": 2}, "snip/iterative": {"batch_size": 16, "rounds": 2}}
    for name in ("snip", "grasp", "snip/iterative", "random/snip"):
        model = mlp()
        result = prune(model, name, 0.6, data=train, **sizes.get(name, {"batch_size": 16}))
        assert result.removed_count == 52 - round(0.4 * 52)
        assert result.direct_compression == pytest.approx(52 / 21)
