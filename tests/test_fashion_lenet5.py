"""sweeps/configs/fashion_lenet5.yaml (docs/results.md §7): Connectivity Matters on the authors'
LeNet-5 with the full Fashion-MNIST — the grid, the pruners and targets, the compressed recipe, and
the conv paths the study relies on (effective sparsity against the BFS oracle on the real 28×28
shapes, uniform+ on this net's layer sizes)."""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from oracle_graph import UnitGraph

from pruning import masks as masks_lib
from pruning import models, quotas
from pruning.pruners import prune
from pruning.sparsity import effective_masks_from
from sweeps.cells import expand
from sweeps.cli import main
from sweeps.spec import load_spec

CONFIG = Path(__file__).resolve().parents[1] / "sweeps" / "configs" / "fashion_lenet5.yaml"
PAPER_PRUNERS = {  # the paper's 15 (uniform+ included: LeNet-5 is a conv net)
    "random/uniform", "random/uniform_plus", "random/erk", "random/igq", "random/snip", "random/synflow",
    "magnitude/global", "magnitude/uniform", "magnitude/uniform_plus", "magnitude/erk", "magnitude/igq",
    "lamp", "snip", "snip/iterative", "synflow"}
EFFECTIVE = {"random/uniform", "random/uniform_plus", "random/erk", "snip", "magnitude/global"}
LAYERS = [150, 2400, 30720, 10080, 840]  # conv 1→6 5×5, conv 6→16 5×5, Dense 256→120→84→10


@pytest.fixture(scope="module")
def cells():
    return expand(load_spec(CONFIG, storage="/tmp"))


def test_validates(capsys):
    assert main(["validate", str(CONFIG), "--storage", "/tmp/fashion_lenet5_validate"]) == 0
    assert "OK — sweep 'fashion_lenet5', 444 cells" in capsys.readouterr().out


def test_grid_pruners_targets_and_compressions(cells):
    # dense once per seed; 16 pruners × 7 compressions × 3 seeds direct; 5 × 7 × 3 effective
    assert len(cells) == 3 + 16 * 7 * 3 + 5 * 7 * 3 == 444
    assert len({c.cell_id for c in cells}) == len(cells)
    assert {(c.model, c.dataset, c.model_variant) for c in cells} == {("lenet5", "fashion_mnist", "authors")}
    assert {c.pruner for c in cells} == PAPER_PRUNERS | {"dense", "grasp"}
    assert {c.pruner for c in cells if c.target == "effective"} == EFFECTIVE
    per = Counter((c.pruner, c.target) for c in cells)
    assert all(n == 21 for (p, _), n in per.items() if p != "dense") and per[("dense", "direct")] == 3
    assert {c.seed for c in cells} == {0, 1, 2}
    compressions = sorted({round(math.log10(1 / (1 - c.sparsity)), 6) for c in cells if c.pruner != "dense"})
    assert compressions == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]


def test_the_authors_recipe_compressed(cells):
    """Their LeNet-5: lr 0.1, batch 128, momentum 0.9, ×0.1 at 30k/60k/90k of 120k iterations,
    Keras l2(5e-4) on kernels (= PyTorch 1e-3, kernels only); here 1,000 iterations, decay at the
    same fractions; SNIP on batches of 128 over min(300 × 128, 60,000) samples."""
    for c in cells:
        t = c.train
        assert (t.iterations, t.batch_size, t.lr, t.momentum, t.nesterov) == (1000, 128, 0.1, 0.9, False)
        assert (t.schedule, t.step_unit, t.milestones, t.gamma) == ("multistep", "iteration", (250, 500, 750), 0.1)
        assert [m / t.iterations for m in t.milestones] == [m / 120_000 for m in (30_000, 60_000, 90_000)]
        assert (t.weight_decay, t.decay, t.l1) == (1e-3, "kernels", 0.0)
        assert c.data["augment"] is False and c.hessian is None  # no augmentation, no SLQ
    snip = next(c for c in cells if c.pruner == "snip")
    assert (snip.prune.options["batch_size"], snip.prune.options["batches"]) == (128, 300)
    assert next(c for c in cells if c.pruner == "snip/iterative").prune.options["batch_size"] == 128
    protocols = {c.pruner: c.protocol for c in cells}
    assert protocols["synflow"] == protocols["random/uniform"] == "train"        # pruned at init
    assert protocols["magnitude/global"] == protocols["lamp"] == "rewind"        # after training


def test_layer_counts_on_fashion_mnist():
    net = models.build("lenet5", input_shape=(1, 28, 28), num_classes=10, variant="authors")
    assert masks_lib.layer_counts(net) == LAYERS and sum(LAYERS) == 44_190


def test_uniform_plus_on_this_lenet5():
    """Dense first conv (150) plus the last layer at ≥ 20% density (168) is 318 weights: uniform+
    is a valid quota up to 44,190 / 318 ≈ 139× and empties the middle layers beyond (disconnected,
    by its definition); below that it follows the closed form."""
    net = models.build("lenet5", input_shape=(1, 28, 28), num_classes=10, variant="authors")
    s = quotas.quotas("uniform_plus", net, 0.99)
    middle = (0.01 * 44_190 - 150 - 0.2 * 840) / (2400 + 30720 + 10080)
    assert s[0] == 0.0 and s[4] == pytest.approx(0.8) and s[1:4] == pytest.approx([1 - middle] * 3)
    s = quotas.quotas("uniform_plus", net, 1 - 10 ** -2.5)
    assert s[1:] == pytest.approx([1.0] * 4) and 0 < s[0] < 1
    assert math.isclose(sum(n * (1 - x) for n, x in zip(LAYERS, s)), 44_190 * 10 ** -2.5, rel_tol=1e-9)


def _oracle(m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    g = UnitGraph()
    x = g.pool2d(g.conv2d(g.input((1, 28, 28)), m["0"], "0"), 2)          # 28 → 24 → 12
    x = g.pool2d(g.conv2d(x, m["4"], "4"), 2).reshape(-1)                  # 12 → 8 → 4, flatten
    x = g.linear(g.linear(x, m["9"], "9"), m["12"], "12")
    return g.effective(g.linear(x, m["15"], "15"))


@pytest.mark.parametrize("pruner,compression", [
    ("random/uniform", 100), ("random/uniform_plus", 100), ("random/erk", 316), ("random/igq", 1000),
    ("synflow", 1000), ("magnitude/global", 316), ("magnitude/uniform_plus", 100), ("lamp", 1000)])
def test_effective_masks_match_the_oracle_on_real_shapes(pruner, compression):
    """The masks the sweep produces at its compressions, on the 28×28 input (unpadded convs,
    average pools that divide exactly), against the unit-graph BFS."""
    torch.manual_seed(0)
    net = models.build("lenet5", input_shape=(1, 28, 28), num_classes=10, variant="authors")
    with warnings.catch_warnings():  # a disconnected mask warns; that is a valid case here
        warnings.simplefilter("ignore", RuntimeWarning)
        prune(net, pruner, 1 - 1 / compression, seed=0)
    m = masks_lib.get_masks(net)
    fast = effective_masks_from(net, m)
    want = _oracle({k: v.numpy().astype(bool) for k, v in m.items()})
    assert list(fast) == list(want)
    for name in want:
        np.testing.assert_array_equal(fast[name].numpy().astype(bool), want[name], err_msg=name)
    if pruner == "synflow":  # no gap: every kept weight is on a path
        assert all(torch.equal(fast[k].bool(), m[k].bool()) for k in m)


def test_cell_ids_are_those_of_the_real_run(cells):
    """docs/results.md §7 was written from a run whose cell ids are fixed in
    tests/fixtures/packaged_cell_ids.json (test_cell_ids checks them for every packaged config);
    here: in the expansion order, ids of the dense, direct and effective cells are distinct per target."""
    ids = json.loads((Path(__file__).resolve().parent / "fixtures" / "packaged_cell_ids.json").read_text())
    assert [c.cell_id for c in cells] == ids["fashion_lenet5"]
    direct = {(c.pruner, c.sparsity, c.seed): c.cell_id for c in cells if c.target == "direct"}
    effective = {(c.pruner, c.sparsity, c.seed): c.cell_id for c in cells if c.target == "effective"}
    assert len(effective) == 105 and not set(direct.values()) & set(effective.values())


def test_uniform_quotas_disconnect_this_lenet5_by_arithmetic():
    """§7's ∞ for uniform and uniform+ from 316× on is arithmetic, not a counting error: at 10^2.5
    the net keeps 140 weights; uniform gives the first conv 150/316 < 0.5 of a weight (0 kept), and
    uniform+ beyond N / (150 + 0.2·840) ≈ 139× spends the whole budget on its dense-first-layer rule
    (middle layers empty). At 100× both keep every layer non-empty."""
    net = models.build("lenet5", input_shape=(1, 28, 28), num_classes=10, variant="authors")
    for s, want_empty in ((0.99, False), (1 - 10 ** -2.5, True)):
        uni, plus = (quotas.kept_counts([1 - x for x in quotas.quotas(q, net, s)], LAYERS, s)
                     for q in ("uniform", "uniform_plus"))
        assert sum(uni) == sum(plus) == quotas.n_kept(44_190, s)
        assert (uni[0] == 0) is want_empty and (plus[1:] == [0, 0, 0, 0]) is want_empty
        assert all(k > 0 for k in uni[1:]) and plus[0] > 0
