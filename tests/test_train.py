"""Training: accuracy on digits, schedules as pure functions, divergence, seeding, L1."""

import math

import pytest
import torch

from pruning import data, models
from pruning import train as T


def test_lenet300100_reaches_95_percent_on_digits():
    tr, te = data.load("digits", seed=0)
    T.seed_everything(0)
    model = models.build("lenet300100", input_shape=tr.input_shape, num_classes=tr.num_classes)
    cfg = T.TrainConfig(epochs=12, batch_size=64, lr=0.05, weight_decay=1e-4, eval_every=0)
    result = T.train(model, tr, te, cfg, seed=0)
    assert result.status == "ok"
    assert result.test_acc >= 0.95
    assert result.test_acc == pytest.approx(T.evaluate(model, te)[1])
    assert len(result.epochs) == 12 and len(result.batch_losses) == math.ceil(1437 / 64)


def test_training_is_reproducible_from_the_seed():
    tr, te = data.load("synthetic", n_train=96, n_test=32)
    runs = []
    for _ in range(2):
        T.seed_everything(3)
        model = models.build("lenet300100", input_shape=tr.input_shape, num_classes=10)
        T.train(model, tr, te, T.TrainConfig(epochs=2, batch_size=16, lr=0.05), seed=3)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("cfg,steps,expected", [
    (dict(schedule="constant", lr=0.1), [0, 5, 9], [0.1, 0.1, 0.1]),
    (dict(schedule="multistep", lr=0.1, milestones=(3, 6), gamma=0.1), [2, 3, 6], [0.1, 0.01, 0.001]),
    (dict(schedule="cosine", lr=0.2), [0, 5, 10], [0.2, 0.1, 0.0]),
    (dict(schedule="cosine", lr=0.2, warmup=2), [0, 1, 2], [0.1, 0.2, 0.2]),
    (dict(schedule="constant", lr=0.3, warmup=3), [0, 2, 3], [0.1, 0.3, 0.3]),
])
def test_lr_schedules(cfg, steps, expected):
    c = T.TrainConfig(**cfg)
    assert [T.lr_at(s, 10, c) for s in steps] == pytest.approx(expected, abs=1e-12)


def test_step_unit_iteration_changes_lr_every_step():
    tr, te = data.load("synthetic", n_train=64, n_test=16)
    model = models.build("lenet300100", input_shape=tr.input_shape, num_classes=10)
    cfg = T.TrainConfig(iterations=8, batch_size=16, lr=0.1, schedule="multistep", milestones=(4,),
                        step_unit="iteration")
    result = T.train(model, tr, te, cfg)
    assert result.iterations == 8 and len(result.epochs) == 2
    assert result.epochs[0]["lr"] == pytest.approx(0.1) and result.epochs[1]["lr"] == pytest.approx(0.01)


def test_nan_loss_reports_diverged_instead_of_raising():
    tr, te = data.load("synthetic", n_train=64, n_test=16)
    model = models.build("lenet300100", input_shape=tr.input_shape, num_classes=10)
    result = T.train(model, tr, te, T.TrainConfig(epochs=3, batch_size=16, lr=1e12, momentum=0.0))
    assert result.status == "diverged"
    assert len(result.epochs) < 3 or result.epochs[-1].get("diverged")


def test_l1_term_shrinks_weights():
    tr, te = data.load("synthetic", n_train=64, n_test=16)
    norms = []
    for l1 in (0.0, 1e-2):
        T.seed_everything(0)
        model = models.build("lenet300100", input_shape=tr.input_shape, num_classes=10)
        T.train(model, tr, te, T.TrainConfig(epochs=3, batch_size=16, lr=0.05, weight_decay=0, l1=l1), seed=0)
        norms.append(float(T.l1_penalty(model).detach()))
    assert norms[1] < 0.8 * norms[0]


def test_on_epoch_receives_metrics():
    tr, te = data.load("synthetic", n_train=32, n_test=16)
    model = models.build("lenet300100", input_shape=tr.input_shape, num_classes=10)
    seen = []
    T.train(model, tr, te, T.TrainConfig(epochs=2, batch_size=16), on_epoch=seen.append)
    assert [r["epoch"] for r in seen] == [0, 1]
    assert {"lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"} <= set(seen[0])


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match=r"train.schedule 'step': choose from constant, multistep, cosine"):
        T.TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="train.step_unit"):
        T.TrainConfig(step_unit="batch")
    with pytest.raises(ValueError, match="train.lr"):
        T.TrainConfig(lr=-1)


def _bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.build("lenet5", input_shape=(3, 16, 16), num_classes=10, variant="authors")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("weight") or p.dim() == 1:  # biases and BatchNorm: non-zero values
                p.copy_(torch.rand_like(p) + 0.5)
    return model


@pytest.mark.parametrize("decay", ["all", "kernels"])
def test_weight_decay_kernels_only_leaves_biases_and_batchnorm_alone(decay):
    """One SGD step with a zero gradient: w ← w − lr·λ·w for decayed tensors, unchanged otherwise."""
    from pruning import masks

    model = _bn_net()
    masks.apply_masks(model, {"0": torch.rand(6, 3, 5, 5) < 0.5})  # a masked kernel is `weight_orig`
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr, wd = 0.1, 0.01
    opt = torch.optim.SGD(T.param_groups(model, wd, decay), lr=lr, momentum=0.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    kernels = {f"{n}.weight" for n, _ in masks.prunable_layers(model)} | {"0.weight_orig"}
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == models.count_parameters(model)
    for name, p in model.named_parameters():
        decayed = decay == "all" or name in kernels
        want = before[name] * (1 - lr * wd) if decayed else before[name]
        assert torch.allclose(p.detach(), want, rtol=1e-6, atol=0), name
        assert decayed or torch.equal(p.detach(), before[name])


def test_train_uses_the_decay_field():
    """Same init, same batches, one step: "all" and "kernels" differ by exactly lr·λ·p on the
    non-kernel parameters and agree on the kernels."""
    tr, _ = data.load("synthetic", input_shape=(3, 16, 16), n_train=32, n_test=8)
    runs = {}
    for decay in ("all", "kernels"):
        model = _bn_net()
        init = {n: p.detach().clone() for n, p in model.named_parameters()}
        cfg = T.TrainConfig(iterations=1, batch_size=32, lr=0.1, momentum=0.0, weight_decay=0.01, decay=decay,
                            schedule="constant")
        T.train(model, tr, None, cfg, seed=0)
        runs[decay] = {n: p.detach() for n, p in model.named_parameters()}
    for name, p in runs["kernels"].items():
        diff = p - runs["all"][name]
        if name.endswith("weight") and p.dim() > 1:
            assert torch.equal(diff, torch.zeros_like(diff)), name
        else:
            assert torch.allclose(diff, 0.1 * 0.01 * init[name], rtol=1e-4, atol=1e-7), name
    assert T.TrainConfig().decay == "all"
    with pytest.raises(ValueError, match=r"train.decay 'bias': choose from all, kernels"):
        T.TrainConfig(decay="bias")
