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


def _bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 10))


def test_l1_scope_all_is_every_weight_and_bias():
    """scope "all": Σ|θ| over every parameter (conv/linear weights and biases, BN's γ and β), a
    masked weight by its masked values; "prunable": the conv/linear weights only."""
    from pruning import masks

    model = _bn_net()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5), model[1].bias.uniform_(-1, 1)
    hand = sum(float(p.detach().abs().sum()) for p in model.parameters())
    assert float(T.l1_penalty(model, "all").detach()) == pytest.approx(hand, rel=1e-6)
    assert float(T.l1_penalty(model).detach()) == pytest.approx(
        float((model[0].weight.abs().sum() + model[4].weight.abs().sum()).detach()), rel=1e-6)
    keep = torch.rand(model[4].weight.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    masks.apply_masks(model, {"4": keep})
    pruned = float(model[4].weight_orig.detach()[~keep].abs().sum())
    assert float(T.l1_penalty(model, "all").detach()) == pytest.approx(hand - pruned, rel=1e-6)
    with pytest.raises(ValueError, match="l1_scope"):
        T.l1_penalty(model, "bn")
    with pytest.raises(ValueError, match=r"train.l1_scope: 'bn'; expected one of 'prunable', 'all'"):
        T.TrainConfig(l1_scope="bn")


def test_l1_scope_all_reaches_batchnorm_in_training():
    """One plain SGD step: with scope "all" BN's γ (initially 1) moves by an extra −lr·λ and every
    linear/conv bias by −lr·λ·sign(b); with "prunable" they get no L1 gradient."""
    tr, _ = data.load("synthetic", n_train=16, n_test=8)
    lr, lam = 0.1, 0.5
    after = {}
    for scope in ("prunable", "all"):
        model = _bn_net()
        cfg = T.TrainConfig(iterations=1, batch_size=16, lr=lr, momentum=0.0, weight_decay=0.0, l1=lam,
                            l1_scope=scope, schedule="constant")
        T.train(model, tr, None, cfg, seed=0)
        after[scope] = {n: p.detach().clone() for n, p in model.named_parameters()}
    init = dict(_bn_net().named_parameters())
    diff = {n: after["all"][n] - after["prunable"][n] for n in init}
    torch.testing.assert_close(diff["1.weight"], torch.full((3,), -lr * lam), rtol=0, atol=1e-6)
    for n in ("0.bias", "4.bias"):
        torch.testing.assert_close(diff[n], -lr * lam * torch.sign(init[n].detach()), rtol=0, atol=1e-6)
    for n in ("0.weight", "4.weight"):  # same L1 gradient under both scopes
        torch.testing.assert_close(diff[n], torch.zeros_like(diff[n]), rtol=0, atol=1e-6)


def test_on_epoch_receives_metrics():
    tr, te = data.load("synthetic", n_train=32, n_test=16)
    model = models.build("lenet300100", input_shape=tr.input_shape, num_classes=10)
    seen = []
    T.train(model, tr, te, T.TrainConfig(epochs=2, batch_size=16), on_epoch=seen.append)
    assert [r["epoch"] for r in seen] == [0, 1]
    assert {"lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"} <= set(seen[0])


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match=r"train.schedule: 'step'; expected one of 'constant', 'multistep', 'cosine'"):
        T.TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="train.step_unit"):
        T.TrainConfig(step_unit="batch")
    with pytest.raises(ValueError, match="train.lr"):
        T.TrainConfig(lr=-1)


def _authors_lenet5() -> torch.nn.Module:
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

    model = _authors_lenet5()
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
        model = _authors_lenet5()
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
    with pytest.raises(ValueError, match=r"train.decay: 'bias'; expected one of 'all', 'kernels'"):
        T.TrainConfig(decay="bias")
