"""IMP with late rewinding: `train(..., snapshot_at=k)` against an independent k-step run, and IMP's
survivors rewound to exactly those weights."""

import pytest
import torch

from pruning import data, masks, models
from pruning import train as T
from pruning.pruners import prune
from pruning.pruners.imp import rewind_iteration_for


def splits():
    return data.load("synthetic", input_shape=(1, 4, 4), n_train=80, n_test=16)  # 80/16: 5 steps per epoch


def fresh(tr) -> torch.nn.Module:
    T.seed_everything(0)
    return models.build("lenet300100", input_shape=tr.input_shape, num_classes=10)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cfg,k", [
    ({"schedule": "constant"}, 7),  # across an epoch boundary (5 steps per epoch)
    ({"schedule": "constant"}, 10),  # exactly at an epoch's end
    ({"schedule": "cosine"}, 3),  # epoch 0's lr is the peak whatever the horizon
    ({"schedule": "cosine", "step_unit": "iteration", "warmup": 4}, 4),  # warm-up does not see the horizon
])
def test_snapshot_equals_an_independent_run_of_exactly_k_steps(cfg, k):
    tr, te = splits()
    long_model = fresh(tr)
    result = T.train(long_model, tr, te, T.TrainConfig(epochs=3, batch_size=16, lr=0.05, **cfg), seed=5,
                     snapshot_at=k)
    short_model = fresh(tr)
    short = T.train(short_model, tr, None, T.TrainConfig(iterations=k, batch_size=16, lr=0.05, **cfg), seed=5)
    assert short.iterations == k and result.iterations == 15
    assert state_equal(result.snapshot, short_model.state_dict())
    assert not state_equal(result.snapshot, long_model.state_dict())  # the run went on after step k


def test_snapshot_at_zero_none_and_out_of_range():
    tr, te = splits()
    model = fresh(tr)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = T.TrainConfig(epochs=1, batch_size=16, lr=0.05)
    assert state_equal(T.train(model, tr, te, cfg, snapshot_at=0).snapshot, init)
    assert T.train(fresh(tr), tr, te, cfg).snapshot is None
    for bad in (6, -1, 2.0, True):
        with pytest.raises(ValueError, match=rf"snapshot_at {bad!r}: must be an integer in \[0, 5\]"):
            T.train(fresh(tr), tr, te, cfg, snapshot_at=bad)


def test_a_diverged_run_has_no_snapshot():
    tr, te = splits()
    result = T.train(fresh(tr), tr, te, T.TrainConfig(epochs=2, batch_size=16, lr=1e12, momentum=0.0),
                     snapshot_at=8)
    assert result.status == "diverged" and result.snapshot is None


def test_imp_rewinds_survivors_to_the_dense_run_at_step_k():
    tr, te = splits()
    cfg = T.TrainConfig(epochs=3, batch_size=16, lr=0.05, schedule="constant")
    k = 6
    dense = fresh(tr)
    rewind = T.train(dense, tr, te, cfg, seed=1, snapshot_at=k).snapshot
    at_k = fresh(tr)  # the oracle: an independent run of exactly k steps
    T.train(at_k, tr, None, T.TrainConfig(iterations=k, batch_size=16, lr=0.05, schedule="constant"), seed=1)
    seen = []

    def train_fn(net):  # what IMP hands to retraining: the rewound survivors under the new mask
        seen.append((masks.get_masks(net), masks.weights(net),
                     {n: p.detach().clone() for n, p in net.named_parameters() if n.endswith("bias")}))
        T.train(net, tr, None, T.TrainConfig(epochs=1, batch_size=16, lr=0.05), seed=1)

    prune(dense, "imp", 0.5, train_fn=train_fn, rewind_state=rewind)
    assert len(seen) == 3  # 20% of the remaining per round: 80%, 64%, 51.2%, then 50%
    oracle = {n: m.weight.detach() for n, m in masks.prunable_layers(at_k)}
    biases = {n: p.detach() for n, p in at_k.named_parameters() if n.endswith("bias")}
    for mask, weights, bias in seen:
        for name, w in weights.items():
            assert torch.equal(w, oracle[name] * mask[name])
        assert state_equal(bias, biases)
    kept = [int(sum(m.sum() for m in mask.values())) for mask, _, _ in seen]
    n = masks.count_prunable(dense)
    assert kept == [round(n * 0.8), round(n * 0.64), round(n * 0.512)]


def test_default_rewind_iterations():
    assert rewind_iteration_for("vgg16") == 2000
    assert rewind_iteration_for("resnet20") == rewind_iteration_for("lenet5") == 1000
