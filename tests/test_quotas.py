"""Layerwise quotas (docs/algorithms.md §4): validity and exact totals on every model, closed forms."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from pruning import masks, models, quotas
from pruning.quotas import densities, kept_counts

PURE = ("uniform", "uniform_plus", "erk", "igq", "smart_ratio")


@pytest.fixture(scope="module")
def model_shapes():
    """Weight shapes of every registered model (CIFAR-sized input); only shapes are kept."""
    out = {}
    for name in models.MODELS:
        m = models.build(name, input_shape=(3, 32, 32), num_classes=10)
        out[name] = ([tuple(w.shape) for w in masks.weights(m).values()], quotas.is_vgg_style(m))
        del m
    return out


def _targets(n: int) -> list[float]:
    grid = [0.0, 1e-6, 0.1, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 0.99999]
    rand = np.random.default_rng(n).uniform(0, 1, 25).tolist()
    return grid + rand + [1 - 1 / math.sqrt(n), (n - 10) / n, (n - 2) / n, (n - 1) / n]


@pytest.mark.parametrize("scheme", PURE)
def test_every_model_every_target_valid_and_within_one_weight(model_shapes, scheme):
    for name, (shapes, vgg) in model_shapes.items():
        counts = [math.prod(s) for s in shapes]
        n = sum(counts)
        for s in _targets(n):
            try:
                d = densities(scheme, shapes, s, vgg_style=vgg)
            except ValueError as err:  # only smart_ratio has unreachable targets, beyond its fixed 30%
                assert scheme == "smart_ratio" and "unreachable" in str(err), (name, s, err)
                assert (1 - s) * n < quotas.SMART_RATIO_LAST_KEEP * counts[-1] + 1e-6
                continue
            assert len(d) == len(shapes)
            assert all(0.0 <= x <= 1.0 for x in d), (name, s, d)
            assert abs(np.dot(counts, d) - (1 - s) * n) <= 1.0, (name, s)
            k = kept_counts(d, counts, s)
            assert sum(k) == round((1 - s) * n)
            assert all(0 <= kl <= nl for kl, nl in zip(k, counts))
            assert all(abs(kl - nl * dl) <= 1.0 + 1e-9 * nl for kl, nl, dl in zip(k, counts, d))


def test_uniform_is_the_global_sparsity():
    assert densities("uniform", [(4, 3), (2, 4)], 0.25) == [0.75, 0.75]


def test_igq_matches_its_closed_form_for_two_layers():
    # n1/(1+F n1) + n2/(1+F n2) = K  <=>  K a b F² + (K(a+b) − 2ab) F + (K − a − b) = 0
    a, b = 300.0, 20_000.0
    for s in (0.1, 0.5, 0.9, 0.999):
        k = (1 - s) * (a + b)
        qa, qb, qc = k * a * b, k * (a + b) - 2 * a * b, k - a - b
        force = (-qb + math.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)
        assert quotas.igq_force([a, b], s) == pytest.approx(force, rel=1e-10)
        expected = [1 / (1 + force * a), 1 / (1 + force * b)]
        assert densities("igq", [int(a), int(b)], s) == pytest.approx(expected, rel=1e-9)


def test_igq_prunes_big_layers_more_and_equalizes_counts_at_extreme_sparsity():
    counts = [500, 5_000, 50_000, 500_000]
    d = densities("igq", counts, 0.5)
    assert d == sorted(d, reverse=True)  # larger layer, lower density
    n = sum(counts)
    s = (n - 40) / n  # keep 40 weights over 4 layers: each keeps about 1/F ≈ 10
    kept = np.array(counts) * densities("igq", counts, s)
    assert kept == pytest.approx([9.8, 10.0, 10.0, 10.0], abs=0.25)
    assert densities("igq", counts, 0.0) == [1.0] * 4


def test_erk_redistributes_a_layer_that_would_exceed_density_one():
    shapes = [(10, 3, 3, 3), (100, 1000), (10, 100)]  # n = 270, 100000, 1000
    raw = [19 / 270, 1100 / 100_000, 110 / 1000]
    kept = 0.5 * 101_270
    naive = kept / (270 * raw[0] + 100_000 * raw[1] + 1000 * raw[2])
    assert naive * raw[0] > 1 and naive * raw[2] > 1  # the plain ERK scale is invalid here
    d = densities("erk", shapes, 0.5)
    assert d == pytest.approx([1.0, (kept - 270 - 1000) / 100_000, 1.0], rel=1e-12)
    # without the cap, densities are proportional to (sum of dims)/(product of dims)
    d = densities("erk", shapes, 0.99)
    assert d[0] / d[1] == pytest.approx(raw[0] / raw[1]) and d[2] / d[1] == pytest.approx(raw[2] / raw[1])


def test_uniform_plus_first_dense_last_capped_then_redistributed():
    counts = [100, 1000, 1000, 50]
    s = lambda target: [1 - x for x in densities("uniform_plus", counts, target)]  # noqa: E731
    c = 0.5 * 2150 / 2050
    assert s(0.5) == pytest.approx([0, c, c, c])
    c = (0.9 * 2150 - 40) / 2000  # last layer sits at its 80% cap
    assert s(0.9) == pytest.approx([0, c, c, 0.8])
    # 99%: middle layers full, last layer full, the first layer takes the rest instead of failing
    assert s(0.99) == pytest.approx([(0.99 * 2150 - 2050) / 100, 1, 1, 1])


def test_smart_ratio_hand_example_cap_vgg_rule_and_limits():
    shapes = [(6, 1, 5, 5), (16, 6, 5, 5), (10, 256)]  # 150, 2400, 2560 weights
    assert list(quotas.smart_ratio_raw(3, False)) == [12, 6, 2]
    assert list(quotas.smart_ratio_raw(3, True)) == [12, 1.5, 2 / 9]
    # s = 0.5: budget 2555 − 768 for the convs; ratio 12:6 would give conv1 density 1.32 -> capped
    d = densities("smart_ratio", shapes, 0.5)
    assert d == pytest.approx([1.0, (2555 - 768 - 150) / 2400, 0.3])
    with pytest.raises(ValueError, match="smart_ratio.*unreachable"):
        densities("smart_ratio", shapes, 0.9)
    d = densities("smart_ratio", shapes, 0.8, vgg_style=True)  # 1022 − 768 = 254 for the convs
    c = 254 / (150 * 12 + 2400 * 1.5)
    assert d == pytest.approx([12 * c, 1.5 * c, 0.3])
    d = densities("smart_ratio", shapes, 0.01)  # convs dense, the classifier takes the surplus
    assert d == pytest.approx([1, 1, (0.99 * 5110 - 2550) / 2560])


def test_kept_counts_largest_remainder():
    assert kept_counts([0.5, 0.5, 0.5], [3, 3, 3], 0.5) == [2, 1, 1]  # round(4.5) = 4
    assert kept_counts([0.25, 0.7, 1.0], [4, 10, 3], 1 - 11 / 17) == [1, 7, 3]
    assert kept_counts([0.0, 0.0], [5, 5], 0.9) == [1, 0]  # round(1.0): densities short by one
    assert kept_counts([1.0, 1.0], [5, 5], 0.0) == [5, 5]


def test_nested_counts_avoid_the_alabama_paradox_of_largest_remainder():
    n = np.array([6.0, 6.0, 2.0])
    exact = lambda total: kept_counts([total / 14] * 3, [6, 6, 2], 1 - total / 14)  # noqa: E731
    assert exact(10) == [4, 4, 2] and exact(11) == [5, 5, 1]  # one more survivor, layer 3 loses one
    nested = [quotas.nested_kept_counts(lambda s: n * (1 - s), t, 13 / 14) for t in range(15)]
    assert nested[10] == [5, 4, 1] and nested[11] == [5, 5, 1] and nested[12] == [5, 5, 2]
    for t, (a, b) in enumerate(zip(nested, nested[1:])):
        assert sum(a) == t and all(x <= y for x, y in zip(a, b))  # exact totals, never shrinking
    # on a real scheme: nested in the total and within one weight of the quota
    shapes = [(16, 3, 3, 3), (32, 16, 3, 3), (10, 512)]
    counts = [math.prod(x) for x in shapes]
    total = sum(counts)
    x_at = lambda s: np.array(counts) * densities("erk", shapes, s)  # noqa: E731
    prev = None
    for t in range(5, total, 97):
        got = quotas.nested_kept_counts(x_at, t, (total - 1) / total)
        assert sum(got) == t and np.all(np.abs(np.array(got) - x_at(1 - t / total)) <= 1.5)
        assert prev is None or all(a >= b for a, b in zip(got, prev))
        prev = got


def test_quotas_on_a_model_returns_layer_sparsities_and_reads_vgg_style():
    vgg = models.build("vgg16", input_shape=(3, 32, 32), num_classes=10)
    assert quotas.is_vgg_style(vgg)
    shapes = quotas.layer_shapes(vgg)
    got = quotas.quotas("smart_ratio", vgg, 0.95)
    assert got == pytest.approx([1 - d for d in densities("smart_ratio", shapes, 0.95, vgg_style=True)])
    assert got != pytest.approx([1 - d for d in densities("smart_ratio", shapes, 0.95, vgg_style=False)])
    res = models.build("resnet20", input_shape=(3, 32, 32), num_classes=10)
    assert not quotas.is_vgg_style(res)
    assert quotas.quotas("uniform", res, 0.3) == pytest.approx([0.3] * 20)  # 19 convs + 1 linear


def _tiny():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    m.input_shape = (1, 3, 4)
    return m


def test_snip_and_synflow_quotas_are_the_real_masks_layer_sparsities():
    from pruning.pruners import prune
    from pruning.pruners.quota import MASK_QUOTA_PRUNERS, mask_quotas

    assert tuple(MASK_QUOTA_PRUNERS) == quotas.MASK_QUOTAS
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 1, 3, 4, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(3)]
    for scheme, opts in (("snip", {"batches": 3}), ("synflow", {"rounds": 4})):
        got = mask_quotas(scheme, _tiny(), 0.7, data=batches, **opts)
        model = _tiny()
        prune(model, scheme, 0.7, data=batches, **opts)
        want = [1.0 - int(m.count_nonzero()) / m.numel() for m in masks.get_masks(model).values()]
        assert got == pytest.approx(want)
        assert sum(n * s for n, s in zip([96, 48, 18], got)) == pytest.approx(round(0.7 * 162))


def test_bad_input_names_the_field_and_the_choices():
    choices = "uniform, uniform_plus, erk, igq, smart_ratio, snip, synflow"
    with pytest.raises(ValueError, match=f"quota scheme 'erdos': choose from {choices}"):
        densities("erdos", [10], 0.5)
    with pytest.raises(ValueError, match=r"sparsity 1.0: must be in \[0, 1\)"):
        densities("uniform", [10], 1.0)
    with pytest.raises(ValueError, match="sparsity -0.1"):
        densities("igq", [10], -0.1)
    with pytest.raises(ValueError, match="erk' needs layer weight shapes"):
        densities("erk", [100, 200], 0.5)
    with pytest.raises(ValueError, match="pruners.quota.mask_quotas\\(scheme, model"):
        densities("snip", [(3, 4)], 0.5)
    with pytest.raises(ValueError, match="pruners.quota.mask_quotas"):
        quotas.quotas("synflow", _tiny(), 0.5)

    from pruning.pruners.quota import mask_quotas

    with pytest.raises(ValueError, match="needs data"):
        mask_quotas("snip", _tiny(), 0.5)
    with pytest.raises(ValueError, match=r"pruner 'synflow': unknown option\(s\) \['iterations'\]; allowed: rounds"):
        mask_quotas("synflow", _tiny(), 0.5, iterations=3)
    with pytest.raises(ValueError, match="mask quota 'igq': choose from snip, synflow"):
        mask_quotas("igq", _tiny(), 0.5)


def _pin_net():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.ReLU(),
                      nn.Flatten(), nn.Linear(6 * 2 * 2, 10), nn.ReLU(), nn.Linear(10, 3))
    m.input_shape = (1, 8, 8)
    return m


# Kept counts per layer and Σ of the kept weights' flat indices (a checksum of the masks themselves),
# recorded with the code before the snip/synflow quotas moved from `pruning.quotas` to
# `pruning.pruners.quota` (at commit 056f0f9): the move must not change a single mask.
PINNED = {
    ("random/snip", 0.5, "direct"): ([27, 117, 90, 27], 23799),
    ("random/snip", 0.5, "effective"): ([27, 117, 90, 27], 23799),
    ("random/snip", 0.8, "direct"): ([15, 47, 28, 14], 9609),
    ("random/snip", 0.8, "effective"): ([15, 50, 29, 15], 9998),
    ("random/snip", 0.95, "direct"): ([4, 12, 6, 4], 1827),
    ("random/snip", 0.95, "effective"): ([9, 21, 13, 7], 3789),
    ("random/synflow", 0.5, "direct"): ([32, 102, 100, 27], 22924),
    ("random/synflow", 0.5, "effective"): ([32, 102, 100, 27], 22924),
    ("random/synflow", 0.8, "direct"): ([23, 35, 31, 15], 8711),
    ("random/synflow", 0.8, "effective"): ([23, 37, 32, 15], 9208),
    ("random/synflow", 0.95, "direct"): ([7, 7, 6, 6], 1273),
    ("random/synflow", 0.95, "effective"): ([11, 12, 14, 11], 3058),
}


@pytest.mark.filterwarnings("ignore:pruner 'random/synflow' at sparsity 0.95 leaves no input")
@pytest.mark.parametrize("pruner,sparsity,target", sorted(PINNED))
def test_mask_quota_pruners_keep_their_masks(pruner, sparsity, target):
    from pruning.pruners import prune

    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(3)]
    model = _pin_net()
    opts = {"batches": 3} if pruner == "random/snip" else {"rounds": 4}
    prune(model, pruner, sparsity, target=target, data=data, seed=2, **opts)
    kept = masks.get_masks(model).values()
    checksum = sum(int(m.reshape(-1).long() @ torch.arange(m.numel())) for m in kept)
    assert ([int(m.sum()) for m in kept], checksum) == PINNED[pruner, sparsity, target]


def test_check_applicable_uniform_plus_needs_a_conv_layer():
    mlp_shapes = [(300, 784), (100, 300), (10, 100)]
    conv_shapes = [(6, 3, 5, 5), (16, 6, 5, 5), (120, 400), (84, 120), (10, 84)]
    with pytest.raises(ValueError, match=r"^quota 'uniform_plus' is defined for convolutional networks only"):
        quotas.check_applicable("uniform_plus", mlp_shapes)
    with pytest.raises(ValueError, match="convolutional networks only"):
        quotas.check_applicable("uniform_plus", [(1000,), (100,)])  # bare counts: no conv known
    quotas.check_applicable("uniform_plus", conv_shapes)  # a conv net: fine
    for scheme in ("uniform", "erk", "igq", "smart_ratio", "snip", "synflow"):
        quotas.check_applicable(scheme, mlp_shapes)  # the other schemes apply to any net
    with pytest.raises(ValueError, match="quota scheme 'gale': choose from"):
        quotas.check_applicable("gale", conv_shapes)
    model = models.build("lenet300100", input_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ValueError, match="convolutional networks only"):
        quotas.quotas("uniform_plus", model, 0.5)
    lenet5 = models.build("lenet5", input_shape=(3, 32, 32), num_classes=10)
    s = quotas.quotas("uniform_plus", lenet5, 0.9)
    counts = masks.layer_counts(lenet5)
    assert s[0] == 0.0 and abs(sum(n * (1 - x) for n, x in zip(counts, s)) - 0.1 * sum(counts)) <= 1
