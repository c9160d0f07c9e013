"""LOMP end to end on a small net: curve values vs independent pruning, restore, consistency."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from pruning import masks as masks_lib
from pruning import models
from pruning.data import load
from pruning.limit import actual_limit, batch_loss_std, epsilon_recipe, predict_limit
from pruning.lomp import LOMP_L1, default_l1, global_magnitude_masks, run_lomp
from pruning.train import TrainConfig, evaluate
from sweeps.schema import CURVES, TRIALS


@pytest.fixture(scope="module")
def lomp_run():
    train, test = load("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.05, schedule="constant", weight_decay=5e-4, momentum=0.0)
    res = run_lomp(model, train, test, cfg, l1=1e-4, sparsities=[0.5, 0.2, 0.8, 0.95], probes=4,
                   iterations=16, seed=0, slq_options={"hvp_mode": "rev_rev"})
    return model, train, test, res


def test_lomp_curve_and_limits(lomp_run):
    model, train, test, res = lomp_run
    assert [r["removed_frac"] for r in res.curve] == [0.0, 0.2, 0.5, 0.8, 0.95]
    for row in res.curve:
        assert set(row) <= set(CURVES.names) and row["kept_frac"] == pytest.approx(1 - row["removed_frac"])
    assert res.curve[0]["g_of_r"] == pytest.approx(1.0, abs=1e-12) and res.curve[0]["r"] == 0.0
    assert all(a["r"] <= b["r"] for a, b in zip(res.curve, res.curve[1:]))
    # the trained model is untouched by the curve (dense, same accuracy)
    assert not any(masks_lib.is_masked(m) for _, m in masks_lib.prunable_layers(model))
    assert evaluate(model, test)[1] == res.dense_test_acc == res.curve[0]["test_acc"]
    # an independent one-shot pruning at 50%: zero the smallest half of |w| by a quantile
    pruned = copy.deepcopy(model)
    flat = torch.cat([m.weight.detach().abs().reshape(-1) for _, m in masks_lib.prunable_layers(pruned)])
    cut = torch.sort(flat).values[flat.numel() // 2 - 1]
    with torch.no_grad():
        for _, m in masks_lib.prunable_layers(pruned):
            m.weight[m.weight.abs() <= cut] = 0.0
    loss, acc = evaluate(pruned, test)
    assert acc == res.curve[2]["test_acc"] and loss == pytest.approx(res.curve[2]["test_loss"], rel=1e-6)
    # prediction and actual limit are the library functions on the same inputs
    again = predict_limit(masks_lib.weights(model), res.spectrum, res.prediction.epsilon)
    assert again.removed_frac == res.prediction.removed_frac
    # ε by the authors' recipe (default): shuffled pass with seed 0, all batches, ddof 0, L1 term added
    assert res.prediction.epsilon_source == "batch_loss_std_authors"
    assert res.prediction.epsilon == batch_loss_std(model, train, batch_size=64, l1=1e-4, l1_scope="prunable",
                                                    seed=0, **epsilon_recipe("batch_loss_std_authors"))
    assert res.prediction.removed_frac_se is not None and res.prediction.removed_frac_spread is not None
    acc_curve = [r["test_acc"] for r in res.curve]
    train_losses = [r["train_loss"] for r in res.curve]
    assert res.actual == actual_limit([r["removed_frac"] for r in res.curve], acc_curve, acc_curve[0],
                                      train_loss=train_losses, dense_train_loss=train_losses[0],
                                      epsilon=res.prediction.epsilon)
    # the loss rule (the theory's own criterion): the largest fraction whose training loss ≤ dense + ε
    ok = [r["removed_frac"] for r in res.curve if r["train_loss"] <= train_losses[0] + res.prediction.epsilon]
    assert res.actual.removed_frac_loss == max(ok) and res.actual.kept_frac_loss == 1 - max(ok)
    cols = res.columns()
    assert set(cols) <= set(TRIALS.names) and cols["lomp_l1"] == 1e-4
    assert cols["predicted_removed_frac"] + cols["predicted_kept_frac"] == pytest.approx(1.0)
    assert cols["slq_dim"] == sum(p.numel() for p in model.parameters())
    assert res.train_result.status == "ok" and set(res.seconds) == {"train", "epsilon", "hessian", "limit", "total"}
    # exclusive phases (pruning.clock): they add up to at most the whole
    assert sum(v for k, v in res.seconds.items() if k != "total") <= res.seconds["total"]


def test_lomp_defaults_and_bad_input():
    published = {"fc5": 5e-5, "fc12": 5e-5, "alexnet": 3e-5, "alexnet224": 3e-5, "vgg16": 1e-4,
                 "resnet18": 5e-5, "resnet50": 2e-5}  # docs/algorithms.md §7, both AlexNet names
    assert LOMP_L1 == published and {m: default_l1(m) for m in published} == published
    assert set(LOMP_L1) <= set(models.MODELS)
    for other in ("lenet5", "resnet20", None):
        with pytest.raises(ValueError, match="l1") as err:
            default_l1(other)
        assert "\n" not in str(err.value)
    train, test = load("digits")
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    cfg = TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="sparsities"):
        run_lomp(model, train, test, cfg, l1=1e-4, sparsities=[1.0])
    with pytest.raises(ValueError, match="epsilon"):
        run_lomp(model, train, test, cfg, l1=1e-4, sparsities=[0.5], epsilon=0.0)
    with pytest.raises(ValueError, match="eigen_policy"):
        run_lomp(model, train, test, cfg, l1=1e-4, sparsities=[0.5], policy="x")
    with pytest.raises(ValueError, match="epsilon_recipe"):
        run_lomp(model, train, test, cfg, l1=1e-4, sparsities=[0.5], epsilon_recipe="x")


def test_global_magnitude_masks_counts():
    w = {"a": torch.tensor([[0.1, -3.0], [0.2, 0.0]]), "b": torch.tensor([5.0, -0.05, 1.0])}
    m = global_magnitude_masks(w, 3 / 7)
    assert m["a"].tolist() == [[False, True], [True, False]] and m["b"].tolist() == [True, False, True]
    assert sum(int((~v).sum()) for v in global_magnitude_masks(w, 0.3).values()) == int(np.ceil(0.3 * 7))
