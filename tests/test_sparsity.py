"""Effective sparsity (docs/algorithms.md §2) against an independent unit-graph BFS oracle.

The oracle (tests/oracle_graph.py) never runs a network: each test architecture is spelled a second
time op by op, and the effective masks must match exactly, weight by weight.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from oracle_graph import UnitGraph, mlp_effective
from pruning import masks as masks_lib
from pruning import models
from pruning.sparsity import (
    EffectiveMaskEvaluator,
    SparsityReport,
    effective_masks,
    effective_masks_from,
    report_from_masks,
    sparsity_report,
)

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tests run hundreds of tiny passes; with two OpenMP threads on a loaded 2-core machine
    each tiny op waits for a busy core (measured: 90 s instead of 18 s for this file)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SPARSITIES = [0.0, 0.3, 0.6, 0.8, 0.9, 0.95, 0.98, 0.995, 1.0]
SEEDS = range(4)


def random_masks(model: nn.Module, sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    """Bernoulli masks at `sparsity`; with seed % 4 == 3 one random layer is cut entirely."""
    g = torch.Generator().manual_seed(seed)
    out = {n: torch.rand(m.weight.shape, generator=g) >= sparsity
           for n, m in masks_lib.prunable_layers(model)}
    if seed % 4 == 3:
        names = list(out)
        out[names[int(torch.randint(len(names), (1,), generator=g))]].zero_()
    return out


def positive_biases(model: nn.Module) -> nn.Module:
    """Large positive biases: they would make every unit 'reachable' if they were not removed."""
    with torch.no_grad():
        for _, m in masks_lib.prunable_layers(model):
            if m.bias is not None:
                m.bias.fill_(5.0)
    return model


def as_numpy(masks: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {n: m.cpu().numpy().astype(bool) for n, m in masks.items()}


def assert_same(fast: dict[str, torch.Tensor], oracle: dict[str, np.ndarray]) -> None:
    assert list(fast) == list(oracle)
    for name in oracle:
        assert fast[name].dtype == torch.bool
        np.testing.assert_array_equal(fast[name].cpu().numpy(), oracle[name], err_msg=name)


# --- test architectures and their oracle spellings ---------------------------------------------

def mlp() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8), nn.Dropout(0.5),
                        nn.Tanh(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    net.input_shape = (3, 2, 2)
    return positive_biases(net)


def mlp_oracle(m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    g = UnitGraph()
    x = g.input((3, 2, 2))
    for name in m:
        x = g.linear(x, m[name], name)
    return g.effective(x)


def cnn() -> nn.Module:
    """Stride, padding, max-pool with padding, a 1×1 stride-2 conv (dead positions), and a 5×5
    conv with padding 2 on a 2×2 map (its outer taps only ever touch padding)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),      # 9x9 -> 5x5
        nn.MaxPool2d(3, stride=2, padding=1),                                        # -> 3x3
        nn.Conv2d(4, 5, 1, stride=2), nn.ReLU(),                                     # -> 2x2
        nn.Conv2d(5, 6, 5, padding=2), nn.ReLU(),                                    # -> 2x2
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(6, 3),
    )
    net.input_shape = (2, 9, 9)
    return positive_biases(net)


def cnn_oracle(m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    g = UnitGraph()
    x = g.input((2, 9, 9))
    x = g.conv2d(x, m["0"], "0", stride=2, padding=1)
    x = g.pool2d(x, 3, stride=2, padding=1)
    x = g.conv2d(x, m["4"], "4", stride=2)
    x = g.conv2d(x, m["6"], "6", padding=2)
    x = g.pool2d(x, 2)
    return g.effective(g.linear(x, m["10"], "10"))


class TinyResNet(nn.Module):
    """torchvision-style: one shared `relu`, BN, in-place `+=`, `torch.flatten`; an identity block,
    a block with a 1×1 projection shortcut (+BN) and a block with an option-A shortcut."""

    def __init__(self) -> None:
        super().__init__()
        conv = lambda i, o, s=1: nn.Conv2d(i, o, 3, stride=s, padding=1, bias=False)  # noqa: E731
        self.stem, self.bn = conv(2, 4), nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.a1, self.a2 = conv(4, 4), conv(4, 4)
        self.b1, self.b2 = conv(4, 6, 2), conv(6, 6)
        self.proj = nn.Sequential(nn.Conv2d(4, 6, 1, stride=2, bias=False), nn.BatchNorm2d(6))
        self.c1, self.c2 = conv(6, 8, 2), conv(8, 8)
        self.pad = models.PadShortcut(6, 8, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)
        self.input_shape = (2, 6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.stem(x)))
        out = self.a2(self.relu(self.a1(x)))
        out += x
        x = self.relu(out)
        out = self.b2(self.relu(self.b1(x)))
        out += self.proj(x)
        x = self.relu(out)
        out = self.c2(self.relu(self.c1(x)))
        out += self.pad(x)
        x = self.relu(out)
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return positive_biases(TinyResNet())


def resnet_oracle(m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    g = UnitGraph()
    x = g.input((2, 6, 6))
    x = g.conv2d(x, m["stem"], "stem", padding=1)
    out = g.conv2d(g.conv2d(x, m["a1"], "a1", padding=1), m["a2"], "a2", padding=1)
    x = g.add(out, x)
    out = g.conv2d(g.conv2d(x, m["b1"], "b1", stride=2, padding=1), m["b2"], "b2", padding=1)
    x = g.add(out, g.conv2d(x, m["proj.0"], "proj.0", stride=2))
    out = g.conv2d(g.conv2d(x, m["c1"], "c1", stride=2, padding=1), m["c2"], "c2", padding=1)
    x = g.add(out, g.shortcut_a(x, 8))
    return g.effective(g.linear(g.global_pool(x), m["fc"], "fc"))


NETS = {"mlp": (mlp, mlp_oracle), "cnn": (cnn, cnn_oracle), "resnet": (resnet, resnet_oracle)}


# --- exact agreement with the oracle -----------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("net", sorted(NETS))
def test_matches_unit_graph_oracle(net: str, dtype: torch.dtype) -> None:
    build, oracle = NETS[net]
    model = build()
    evaluator = EffectiveMaskEvaluator(model, dtype=dtype)
    differs = 0
    for sparsity in SPARSITIES:
        for seed in SEEDS:
            m = random_masks(model, sparsity, seed)
            fast = evaluator(m)
            assert_same(fast, oracle(as_numpy(m)))
            for name in m:  # a pruned weight is never effective
                assert not bool((fast[name] & ~m[name]).any())
            differs += any(not torch.equal(fast[n], m[n]) for n in m)
    assert differs > len(SPARSITIES)  # the cases exercise disconnection, not just mask == effective


def test_oracles_agree_on_mlp() -> None:
    """Self-check of the oracle: the unit graph equals boolean matrix products on MLPs."""
    rng = np.random.default_rng(0)
    for sparsity in SPARSITIES:
        m = {str(i): rng.random(shape) >= sparsity
             for i, shape in enumerate([(10, 12), (8, 10), (6, 8), (4, 6)])}
        for got, want in zip(mlp_oracle(m).values(), mlp_effective(list(m.values()))):
            np.testing.assert_array_equal(got, want)


def test_deep_mlp_matches_matrix_oracle() -> None:
    """60 layers of width 64 at 50% density: ~32^60 paths per unit, far past float32 range."""
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(64, 64) for _ in range(60)])
    m = random_masks(net, 0.5, seed=1)
    want = mlp_effective([v.numpy() for v in m.values()])
    fast = effective_masks_from(net, m, input_shape=(64,))
    for (name, got), w in zip(fast.items(), want):
        np.testing.assert_array_equal(got.numpy(), w, err_msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_overflow_guard_keeps_deep_all_ones_net_exact(dtype: torch.dtype) -> None:
    """All-ones 60 × 64: the unguarded pass overflows (64^60 ≈ 1e108), the guarded one is exact."""
    x = torch.ones(64)
    for _ in range(60):
        x = torch.ones(64, 64) @ x
    assert torch.isinf(x).all()  # what the guard prevents
    net = nn.Sequential(*[nn.Linear(64, 64, bias=False) for _ in range(60)])
    evaluator = EffectiveMaskEvaluator(net, input_shape=(64,), dtype=dtype)
    m = masks_lib.get_masks(net)
    assert all(bool(e.all()) for e in evaluator(m).values())
    m["59"][:, 3] = False  # unit 3 of layer 58's output now feeds nothing
    eff = evaluator(m)
    assert int((~eff["58"]).sum()) == 64 and not bool(eff["58"][3].any())
    assert evaluator.effective_sparsity(m) == 128 / (60 * 64 * 64)


# --- closed-form cases -------------------------------------------------------------------------

def test_report_hand_example() -> None:
    """2 → 3 → 1: hidden 0 is on a path; hidden 1 feeds nothing; hidden 2 has no input."""
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    m = {"0": torch.tensor([[1, 1], [1, 0], [0, 0]], dtype=torch.bool),
         "1": torch.tensor([[1, 0, 1]], dtype=torch.bool)}
    eff = effective_masks_from(net, m, input_shape=(2,))
    assert eff["0"].tolist() == [[True, True], [False, False], [False, False]]
    assert eff["1"].tolist() == [[True, False, False]]
    report = report_from_masks(m, eff)
    assert isinstance(report, SparsityReport)
    assert report.n_prunable == 9
    assert report.direct_sparsity == 4 / 9          # count-weighted, not (3/6 + 1/3) / 2
    assert report.effective_sparsity == 6 / 9
    assert report.direct_compression == pytest.approx(9 / 5)
    assert report.effective_compression == pytest.approx(3.0)
    assert [(r.layer_index, r.layer, r.n_weights) for r in report.layers] == [(0, "0", 6), (1, "1", 3)]
    assert [r.direct_sparsity for r in report.layers] == [3 / 6, 1 / 3]
    assert [r.effective_sparsity for r in report.layers] == [4 / 6, 2 / 3]
    assert report.trial_columns()["effective_compression"] == report.effective_compression
    assert report.layer_rows()[1] == {"layer_index": 1, "layer": "1", "n_weights": 3,
                                      "direct_sparsity": 1 / 3, "effective_sparsity": 2 / 3}


def test_report_columns_match_schema() -> None:
    from sweeps.schema import LAYERS, TRIALS

    report = sparsity_report(mlp())
    assert set(report.trial_columns()) <= set(TRIALS.names)
    assert set(report.layer_rows()[0]) <= set(LAYERS.names)


def test_disconnected_network_has_infinite_compression() -> None:
    model = cnn()
    m = masks_lib.get_masks(model)
    m["4"].zero_()  # the middle conv is gone: nothing reaches the output
    report = report_from_masks(m, effective_masks_from(model, m))
    assert report.effective_sparsity == 1.0
    assert math.isinf(report.effective_compression)
    assert all(r.effective_sparsity == 1.0 for r in report.layers)
    assert report.direct_sparsity == 20 / report.n_prunable


def test_padding_only_taps_are_ineffective_in_a_dense_net() -> None:
    """A dense 5×5 conv with padding 2 on a 2×2 map: output row p reads input rows p − 2 + ky, so
    only ky ∈ {1, 2, 3} ever touch the image; rows/columns 0 and 4 of the kernel see only padding."""
    net = nn.Sequential(nn.Conv2d(1, 1, 5, padding=2), nn.Flatten(), nn.Linear(4, 1))
    eff = effective_masks(net, input_shape=(1, 2, 2))
    want = torch.zeros(5, 5, dtype=torch.bool)
    want[1:4, 1:4] = True
    assert torch.equal(eff["0"][0, 0], want)
    assert bool(eff["2"].all())


def test_max_pool_does_not_fake_sparsity() -> None:
    """Kept as max-pool, the tie on an all-ones input routes the gradient to one element and a dense
    net looks sparse (the authors' VGG-19 bug); as average pool every weight is effective."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(2, 2))
    report = sparsity_report(net, input_shape=(1, 2, 2))
    assert report.effective_sparsity == 0.0
    x = torch.ones(1, 1, 2, 2)
    w = torch.ones(2, 1, 3, 3, requires_grad=True)
    nn.functional.max_pool2d(nn.functional.conv2d(x, w, padding=1), 2).sum().backward()
    assert int((w.grad == 0).sum()) > 0  # the naive max-pool pass would have lost taps


# --- registered models: dense means effectively dense ------------------------------------------

DENSE_CASES = {
    "lenet300100": ((1, 28, 28), 10), "lenet5": ((3, 32, 32), 10), "fc5": ((3, 32, 32), 10),
    "fc12": ((3, 32, 32), 10), "alexnet": ((3, 32, 32), 10), "resnet20": ((3, 32, 32), 10),
    "resnet18": ((3, 32, 32), 10), "vgg16": ((3, 32, 32), 10), "vgg19": ((3, 32, 32), 100),
    "resnet50": ((3, 32, 32), 100), "alexnet224": ((3, 32, 32), 10),
}
SLOW = {"resnet18", "vgg16", "vgg19", "resnet50", "alexnet224"}


def test_dense_cases_cover_the_registry() -> None:
    assert set(DENSE_CASES) == set(models.MODELS)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(DENSE_CASES)])
def test_dense_registered_model_is_effectively_dense(name: str) -> None:
    shape, classes = DENSE_CASES[name]
    model = models.build(name, input_shape=shape, num_classes=classes)
    report = sparsity_report(model)  # input shape from model.input_shape
    assert report.n_prunable == masks_lib.count_prunable(model)
    assert report.direct_sparsity == 0.0
    assert report.effective_sparsity == 0.0
    assert report.effective_compression == 1.0


def resnet20_oracle(m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """pruning.models.resnet20 spelled unit by unit: Sequential index 0 = stem, 3..11 = blocks."""
    g = UnitGraph()
    x = g.conv2d(g.input((3, 8, 8)), m["0"], "0", padding=1)
    plan = [(16, 1)] * 3 + [(32, 2), (32, 1), (32, 1), (64, 2), (64, 1), (64, 1)]
    for index, (planes, stride) in enumerate(plan, start=3):
        c1, c2 = f"{index}.conv1", f"{index}.conv2"
        out = g.conv2d(g.conv2d(x, m[c1], c1, stride=stride, padding=1), m[c2], c2, padding=1)
        x = g.add(out, g.shortcut_a(x, planes, stride) if x.shape[0] != planes else x)
    return g.effective(g.linear(g.global_pool(x), m["14"], "14"))


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.97, 0.99])
def test_registered_resnet20_matches_oracle_after_masking(sparsity: float) -> None:
    """The real ResNet-20 (option-A shortcuts) through torch's pruning reparametrization: masks are
    read from the model and the result matches the unit graph."""
    model = models.build("resnet20", input_shape=(3, 8, 8), num_classes=10)
    m = random_masks(model, sparsity, seed=0)
    masks_lib.apply_masks(model, m)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eff = effective_masks(model)
    assert_same(eff, resnet20_oracle(as_numpy(m)))
    assert report_from_masks(m, eff) == sparsity_report(model)
    for k, v in model.state_dict().items():  # the model is left untouched
        assert torch.equal(v, before[k]), k
    report = sparsity_report(model)
    assert abs(report.direct_sparsity - sparsity) < 0.02
    assert report.direct_sparsity <= report.effective_sparsity


def test_masked_model_after_a_training_forward() -> None:
    """After a forward with autograd on, a masked layer's `weight` is a non-leaf tensor (which
    `copy.deepcopy` refuses); the report must still work and read the masks."""
    model = models.build("lenet5", input_shape=(3, 32, 32), num_classes=10)
    m = random_masks(model, 0.95, seed=0)
    masks_lib.apply_masks(model, m)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.get_submodule("0").weight.grad_fn is not None
    assert report_from_masks(m, effective_masks_from(model, m)) == sparsity_report(model)


# --- the evaluator -----------------------------------------------------------------------------

def test_evaluator_is_reusable_and_does_not_touch_the_model() -> None:
    model = resnet()
    x = torch.rand(2, *model.input_shape)
    model.eval()
    y = model(x)
    evaluator = EffectiveMaskEvaluator(model)
    cases = [random_masks(model, s, seed) for s, seed in [(0.9, 0), (0.5, 1), (0.98, 2)]]
    first = [evaluator(m) for m in cases]
    again = [evaluator(m) for m in reversed(cases)][::-1]
    for a, b, m in zip(first, again, cases):
        assert_same(a, as_numpy(b))
        assert_same(a, as_numpy(effective_masks_from(model, m)))
    assert torch.equal(model(x), y)
    assert masks_lib.get_masks(model)["a1"].all()  # nothing was applied


def test_float_masks_are_accepted() -> None:
    model = cnn()
    m = random_masks(model, 0.7, seed=0)
    assert_same(effective_masks_from(model, {n: v.double() for n, v in m.items()}),
                as_numpy(effective_masks_from(model, m)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    model = resnet()
    m = random_masks(model, 0.9, seed=0)
    gpu = effective_masks_from(model.cuda(), {n: v.cuda() for n, v in m.items()})
    assert all(v.is_cuda for v in gpu.values())
    assert_same(gpu, resnet_oracle(as_numpy(m)))


# --- bad input ---------------------------------------------------------------------------------

def test_bad_input_raises_value_error() -> None:
    model = cnn()
    evaluator = EffectiveMaskEvaluator(model)
    m = masks_lib.get_masks(model)
    with pytest.raises(ValueError, match="missing"):
        evaluator({k: v for k, v in m.items() if k != "0"})
    with pytest.raises(ValueError, match="unknown"):
        evaluator({**m, "nope": m["0"]})
    with pytest.raises(ValueError, match=r"masks\['0'\]: shape"):
        evaluator({**m, "0": m["0"][:1]})
    with pytest.raises(ValueError, match="input_shape"):
        effective_masks(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="dilation"):
        effective_masks(nn.Sequential(nn.Conv2d(1, 1, 1), nn.MaxPool2d(2, dilation=2)),
                        input_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="has parameters"):
        effective_masks(nn.Sequential(nn.Embedding(3, 2), nn.Linear(2, 2)), input_shape=(1,))
    with pytest.raises(ValueError, match="dtype"):
        EffectiveMaskEvaluator(model, dtype=torch.float16)
    with pytest.raises(ValueError, match="no prunable"):
        EffectiveMaskEvaluator(nn.Sequential(nn.ReLU()), input_shape=(2,))
    eff = effective_masks(model)
    with pytest.raises(ValueError, match="subset"):
        report_from_masks({**m, "0": torch.zeros_like(m["0"])}, eff)
    with pytest.raises(ValueError, match="keys"):
        report_from_masks(m, dict(reversed(list(eff.items()))))
