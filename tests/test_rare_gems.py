"""Rare Gems (Gem-Miner): signed-constant weights, score SGD against a hand-written oracle, exact
target counts, the effective target by brute force, and a fine-tune that keeps the mask."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning import data as data_lib
from pruning import masks
from pruning.pruners import PRUNERS, plan_for, prune
from pruning.pruners.rare_gems import mine, round_epochs, signed_constant
from pruning.quotas import n_kept
from pruning.train import TrainConfig, train

FAST = {"epochs": 5, "iter_period": 2}  # two pruning rounds (after epochs 2 and 4)


def mlp(seed: int = 0) -> nn.Module:
    """6 → 4 → 4 → 3 with biases: 52 prunable weights, hidden widths that disconnect easily."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    net.input_shape = (1, 2, 3)
    return net


def batches(n: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 2, 3, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def flat(mask_dict) -> torch.Tensor:
    return torch.cat([m.reshape(-1) for m in mask_dict.values()])


def test_registry_entry():
    info = PRUNERS["rare_gems"]
    assert (info.when, info.protocol, info.needs_data, info.needs_l1_training) == ("init", "train", True, False)
    assert list(info.option_defaults) == ["epochs", "iter_period", "lr", "momentum", "score_l2", "batch_size", "bias"]


def test_signed_constant_is_the_he_std_with_the_init_sign():
    w = torch.tensor([[0.3, -0.1, 2.0], [-5.0, 0.2, -0.7]])  # Linear(3, 2): fan_in 3
    want = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]]) * math.sqrt(2 / 3)
    assert torch.equal(signed_constant(w), want)
    conv = nn.Conv2d(4, 6, 3, groups=2)  # fan_in = 4/2 · 3 · 3 = 18
    got = signed_constant(conv.weight.detach())
    assert torch.equal(got.abs(), torch.full_like(got, math.sqrt(2 / 18)))
    assert torch.equal(got.sign(), conv.weight.detach().sign())


def test_round_epochs_as_theirs():
    # prune after epochs T, 2T, … (0-based, never after epoch 0): R = ⌊(E − 1)/T⌋ rounds
    assert round_epochs(150, 5) == [6] + [5] * 28 + [4]  # their ResNet-20 config: 29 rounds
    assert round_epochs(5, 2) == [3, 2]
    assert round_epochs(6, 2) == [3, 2, 1]
    assert round_epochs(2, 1) == [2]
    with pytest.raises(ValueError, match=r"epochs 5: rare_gems needs epochs ≥ iter_period \+ 1 = 6"):
        round_epochs(5, 5)


def _oracle_scores(model: nn.Module, x, y, *, seed: int, lr: float, l2: float, momentum: float = 0.9):
    """Two SGD steps on the scores, written out by hand (epochs = 2, one batch per epoch).

    Forward: relu chain with weights W_l ⊙ 1[s_l > 0.5]; straight-through gradient
    ∂L/∂s = ∂L/∂W_eff ⊙ W + 2λ s; momentum SGD; projection onto [0, 1]; cosine lr per epoch
    (epoch 1 of 2: lr/2).
    """
    layers = [m for m in model if isinstance(m, nn.Linear)]
    W = [torch.sign(m.weight.detach()) * math.sqrt(2 / m.in_features) for m in layers]
    b = [m.bias.detach() for m in layers]
    counts = [w.numel() for w in W]
    s = torch.rand(sum(counts), generator=torch.Generator().manual_seed(seed))
    v = torch.zeros_like(s)
    for step_lr in (lr, lr * 0.5 * (1 + math.cos(math.pi / 2))):
        eff = [(w * (part.reshape(w.shape) > 0.5)).requires_grad_(True) for w, part in zip(W, s.split(counts))]
        h = x.flatten(1)
        for i, (w, bias) in enumerate(zip(eff, b)):
            h = h @ w.T + bias
            if i < len(eff) - 1:
                h = h.relu()
        grads = torch.autograd.grad(F.cross_entropy(h, y), eff)
        g = torch.cat([(gw * w).reshape(-1) for gw, w in zip(grads, W)]) + 2 * l2 * s
        v = momentum * v + g
        s = (s - step_lr * v).clamp(0.0, 1.0)
    return s, torch.cat([w.reshape(-1) for w in W])


def test_scores_follow_hand_sgd_and_the_weights_stay_frozen():
    model = mlp(seed=3)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    data = batches(1)
    lr, l2 = 0.5, 0.05
    want, constants = _oracle_scores(model, *data[0], seed=7, lr=lr, l2=l2)
    found = mine(model, 0.5, data=data, seed=7, epochs=2, iter_period=1, lr=lr, score_l2=l2)
    assert found.steps == 2
    assert torch.allclose(found.scores, want, atol=1e-6)
    assert (found.scores - found.initial_scores).abs().max() > 0.05  # the scores moved …
    assert bool(((found.scores >= 0) & (found.scores <= 1)).all())
    assert torch.equal(flat(found.weights), constants)  # … on frozen signed-constant weights
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # `mine` works on a copy
    # the one round (after epoch 1) keeps the 26 highest final scores
    keep = flat(found.plan.masks_at(26))
    assert int(keep.sum()) == 26 and found.scores[keep].min() >= found.scores[~keep].max()


def test_prune_leaves_signed_constants_and_untouched_biases():
    model = mlp(seed=4)
    biases = [m.bias.detach().clone() for m in model if isinstance(m, nn.Linear)]
    constants = [signed_constant(m.weight.detach()) for m in model if isinstance(m, nn.Linear)]
    prune(model, "rare_gems", 0.6, data=batches(), **FAST)
    mask = masks.get_masks(model)
    for layer, c, bias, m in zip([m for m in model if isinstance(m, nn.Linear)], constants, biases, mask.values()):
        assert torch.equal(layer.weight.detach(), c * m)
        assert torch.equal(layer.bias.detach(), bias)


@pytest.mark.filterwarnings("ignore:pruner 'rare_gems' at sparsity 0.9")  # 52 weights: no path left
@pytest.mark.parametrize("sparsity", [0.3, 0.6, 0.9, 0.97])
def test_direct_target_keeps_exactly_the_target_count(sparsity):
    model = mlp(seed=5)
    result = prune(model, "rare_gems", sparsity, data=batches(), **FAST)
    assert int(flat(masks.get_masks(model)).sum()) == n_kept(52, sparsity) == 52 - result.removed_count


def test_later_rounds_never_revive_weights_and_respect_an_existing_mask():
    model = mlp(seed=6)
    prune(model, "random/uniform", 0.5, seed=11)
    before = flat(masks.get_masks(model))
    prune(model, "rare_gems", 0.8, data=batches(), **FAST)
    after = flat(masks.get_masks(model))
    assert not bool((after & ~before).any()) and int(after.sum()) == n_kept(52, 0.8)


def mlp_effective_sparsity(mask_dict) -> float:
    """Oracle: effective iff the input unit is reachable from the inputs and the output unit reaches
    the outputs (boolean matrix products)."""
    ms = [m.to(torch.float64) for m in mask_dict.values()]
    fwd = [torch.ones(ms[0].shape[1], dtype=torch.float64)]
    for m in ms:
        fwd.append((m @ fwd[-1] > 0).to(torch.float64))
    bwd = [torch.ones(ms[-1].shape[0], dtype=torch.float64)]
    for m in reversed(ms):
        bwd.insert(0, (m.T @ bwd[0] > 0).to(torch.float64))
    kept = sum(int((m * bwd[i + 1][:, None] * fwd[i][None, :]).sum()) for i, m in enumerate(ms))
    return 1 - kept / sum(m.numel() for m in ms)


def test_effective_target_is_the_largest_k_by_brute_force():
    data = batches()
    for target in (0.5, 0.7, 0.85):
        base = mlp(seed=2)
        plan = plan_for(base, "rare_gems", target, data=data, **FAST)
        scan = [mlp_effective_sparsity(plan.masks_at(k)) for k in range(plan.limit + 1)]
        assert scan == sorted(scan)  # nested masks
        k_best = max(k for k, e in enumerate(scan) if e <= target)
        # `base` now holds the signed constants; their signs and scales are those of the init, so
        # the same seed mines the same order again
        result = prune(base, "rare_gems", target, target="effective", data=data, **FAST)
        assert result.removed_count == k_best and result.effective_sparsity == pytest.approx(scan[k_best])
        assert torch.equal(flat(masks.get_masks(base)), flat(plan.masks_at(k_best)))


def test_finetune_under_the_mask_keeps_pruned_weights_at_zero():
    train_split, test_split = data_lib.load("synthetic", input_shape=(1, 2, 3), num_classes=3,
                                            n_train=64, n_test=16)
    model = mlp(seed=8)
    prune(model, "rare_gems", 0.7, data=train_split, batch_size=16, **FAST)
    mask = flat(masks.get_masks(model))
    start = flat(masks.weights(model))
    result = train(model, train_split, test_split, TrainConfig(epochs=3, batch_size=16, lr=0.05))
    assert result.status == "ok"
    assert torch.equal(flat(masks.get_masks(model)), mask)
    end = flat(masks.weights(model))
    assert bool((end[~mask] == 0).all())  # pruned weights stay exactly 0
    assert bool((end[mask] != start[mask]).all())  # the survivors train (from the signed constants)


def test_bias_free_as_the_authors_models():
    """bias=False: the mining copy runs without biases (scores differ from the biased run), the model
    leaves with zero, frozen biases, and fine-tuning keeps them at zero while the weights train."""
    train_split, test_split = data_lib.load("synthetic", input_shape=(1, 2, 3), num_classes=3,
                                            n_train=64, n_test=16)
    with_bias = mine(mlp(seed=9), 0.6, data=batches(), seed=0, **FAST)
    free = mine(mlp(seed=9), 0.6, data=batches(), seed=0, bias=False, **FAST)
    assert not torch.equal(with_bias.scores, free.scores)
    clone = mlp(seed=9)
    for m in clone:
        if isinstance(m, nn.Linear):
            m.bias.data.zero_()
    by_hand = mine(clone, 0.6, data=batches(), seed=0, **FAST)  # the same net with zero biases
    assert torch.equal(by_hand.scores, free.scores)
    model = mlp(seed=9)
    prune(model, "rare_gems", 0.6, data=train_split, batch_size=16, bias=False, **FAST)
    layers = [m for m in model if isinstance(m, nn.Linear)]
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) and not m.bias.requires_grad for m in layers)
    start = flat(masks.weights(model))
    train(model, train_split, test_split, TrainConfig(epochs=2, batch_size=16, lr=0.05))
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in layers)
    assert not torch.equal(flat(masks.weights(model)), start)


def test_a_rare_gems_row_names_its_finetune_recipe(tmp_path):
    """The trials row of a rare_gems cell says which recipe fine-tuned the mask (the cell's train
    section, not Rare Gems' own paper recipe), and that biases were dropped when they were."""
    from sweeps.cells import expand
    from sweeps.spec import build_spec
    from sweeps.trial import Where, run_cell

    raw = {"name": "rg", "model": "lenet300100", "dataset": "synthetic", "storage": str(tmp_path),
           "pruner": "rare_gems", "sparsity": 0.5,
           "data": {"options": {"input_shape": [1, 4, 4], "num_classes": 3, "n_train": 64, "n_test": 32}},
           "train": {"epochs": 1, "batch_size": 32, "lr": 0.05, "schedule": "constant"},
           "prune": {"options": {"rare_gems": {"epochs": 3, "iter_period": 1, "batch_size": 32, "bias": False}}}}
    [cell] = expand(build_spec(raw))
    assert cell.prune.options["bias"] is False
    row = run_cell(cell, Where(str(tmp_path)))
    assert row["status"] == "ok", row["error"]
    assert row["finetune_recipe"] == ("train: SGD lr 0.05 constant, momentum 0.9, weight decay 0.0005, batch 32, "
                                      "1 epochs (the cell's train section); bias-free (biases zeroed and frozen)")
    [default] = expand(build_spec({**raw, "prune": {"options": {"rare_gems": {"epochs": 3, "iter_period": 1}}}}))
    from sweeps.cells import hashed_config

    # bias: true is the original default (sweeps/defaults.py): not hashed, old rare_gems ids stand
    assert default.prune.options["bias"] is True
    assert "bias" not in hashed_config(default)["prune"].get("options", {})
    assert hashed_config(cell)["prune"]["options"]["bias"] is False and default.cell_id != cell.cell_id


def test_bad_input_messages():
    with pytest.raises(ValueError, match="data: pruner 'rare_gems' needs data"):
        prune(mlp(), "rare_gems", 0.5)
    with pytest.raises(ValueError, match=r"epochs: 3; expected at least iter_period \+ 1 = 4"):
        prune(mlp(), "rare_gems", 0.5, data=batches(), epochs=3, iter_period=3)
    with pytest.raises(ValueError, match="score_l2: -1.0; expected a number ≥ 0"):
        prune(mlp(), "rare_gems", 0.5, data=batches(), score_l2=-1.0, **FAST)
    with pytest.raises(ValueError, match="iter_period: 0; expected an integer ≥ 1"):
        prune(mlp(), "rare_gems", 0.5, data=batches(), iter_period=0)
    with pytest.raises(ValueError, match="data: no batches"):
        prune(mlp(), "rare_gems", 0.5, data=[], **FAST)
    with pytest.raises(ValueError, match=r"pruner 'rare_gems': unknown key 'rounds'"):
        prune(mlp(), "rare_gems", 0.5, data=batches(), rounds=3)
