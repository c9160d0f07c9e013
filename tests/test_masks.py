"""Masks through torch.nn.utils.prune: exact zeros through training, state_dict round trips, counts."""

import math

import pytest
import torch

from pruning import data, masks, models
from pruning import train as T


def _random_masks(model, keep: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(m.weight.shape, generator=g) < keep for n, m in masks.prunable_layers(model)}


def test_pruned_weights_stay_exactly_zero_through_training():
    tr, te = data.load("synthetic", n_train=128, n_test=64)
    model = models.build("lenet300100", input_shape=tr.input_shape, num_classes=tr.num_classes)
    mk = _random_masks(model, keep=0.2)
    masks.apply_masks(model, mk)
    cfg = T.TrainConfig(epochs=2, batch_size=32, lr=0.1, weight_decay=5e-4, l1=1e-4, schedule="constant")
    result = T.train(model, tr, te, cfg, seed=0)
    assert result.status == "ok"
    for name, w in masks.weights(model).items():
        assert torch.all(w[~mk[name]] == 0)
        assert torch.equal(masks.get_masks(model)[name], mk[name])
    # and the forward really uses the masked weight
    layer = dict(masks.prunable_layers(model))["1"]
    assert torch.all(layer.weight[~mk["1"]] == 0)


def test_state_dict_round_trip_keeps_masks_and_outputs(tmp_path):
    model = models.build("resnet20", input_shape=(3, 8, 8), num_classes=10).eval()
    mk = _random_masks(model, keep=0.5, seed=3)
    masks.apply_masks(model, mk)
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    fresh = models.build("resnet20", input_shape=(3, 8, 8), num_classes=10).eval()
    masks.load_state_dict(fresh, torch.load(path, weights_only=True))
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(fresh(x), model(x))
    for name, m in masks.get_masks(fresh).items():
        assert torch.equal(m, mk[name])


def test_reapplying_overwrites_and_copy_weights_rewinds():
    model = models.build("lenet300100", input_shape=(1, 8, 8), num_classes=10)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    masks.apply_masks(model, _random_masks(model, 0.5, seed=1))
    second = _random_masks(model, 0.3, seed=2)
    masks.apply_masks(model, second)
    assert all(torch.equal(masks.get_masks(model)[n], second[n]) for n in second)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    masks.copy_weights(model, init)
    for name, w in masks.weights(model).items():
        assert torch.equal(w, init[f"{name}.weight"] * second[name])


def test_direct_sparsity_is_count_weighted_and_compression_inf():
    mk = {"a": torch.zeros(10, dtype=torch.bool), "b": torch.ones(90, dtype=torch.bool)}
    assert masks.direct_sparsity(mk) == pytest.approx(0.1)  # not the layer mean 0.5
    assert masks.compression(0.9) == pytest.approx(10.0)
    assert masks.compression(1.0) == math.inf


def test_mask_shape_and_layer_errors():
    model = models.build("lenet300100", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match=r"1: mask \(3,\) != weight \(300, 64\)"):
        masks.apply_masks(model, {"1": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="unknown layers"):
        masks.apply_masks(model, {"nope": torch.ones(3, dtype=torch.bool)})


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_sparsity_outside_unit_interval_refused(bad):
    with pytest.raises(ValueError, match=r"sparsity .*: must be in \[0, 1\)"):
        masks.check_sparsity(bad)
