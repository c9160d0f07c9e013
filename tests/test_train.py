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
