"""Rare Gems (Sreenivasan et al. 2022, "Rare Gems: Finding Lottery Tickets at Initialization").

A mask is found at initialization by learning one score per prunable weight while the weights stay
frozen; the sparse net is then trained (fine-tuned) with trainable weights. What runs here is the
authors' Gem-Miner (`algo: hc_iter` in ksreenivasan/pruning_is_enough) with the settings of their
paper configs (`prune_type: BottomK`, `hc_quantized`, `regularization: L2`, `init: signed_constant`,
`score_init: unif`, `unflag_before_finetune`), read from their code:

- Weights: w = sign(w_init) · c_l with c_l = sqrt(2 / fan_in), the Kaiming-normal std for ReLU in
  fan-in mode (`signed_constant`). Only the sign comes from the model's own initialization: c_l is
  *not* the empirical std of that init (PyTorch's default init has std 1/sqrt(3·fan_in)). Weights,
  biases and BatchNorm parameters stay frozen while the scores train (BatchNorm at its init γ = 1,
  β = 0 is their non-affine BatchNorm).
- Scores s ∈ [0, 1], uniform at the start. The forward uses w ⊙ flag ⊙ 1[s > 0.5] (strictly
  greater: their `torch.gt(scores, 0.5)`), the gradient passes straight through the rounding to s;
  loss = cross-entropy + λ Σ s² (`score_l2` = λ; 0 is the paper's "no regularizer" comparison);
  SGD with momentum 0.9 and no weight decay, cosine learning rate per epoch; s is projected back
  onto [0, 1] after every step.
- Pruning rounds: after epoch e (0-based) with e % T == 0 and e ≠ 0, T = `iter_period`, the
  lowest-|s| survivors lose their flag for good; R = ⌊(epochs − 1)/T⌋ rounds on the geometric
  schedule (a fixed fraction 1 − (1 − s)^{1/R} of the survivors per round, theirs), so the first
  round comes after T + 1 epochs and the last lands on the target. Deliberate differences: round t
  keeps round(N(1 − s)^{t/R}) weights and the last round exactly round((1 − s)N) (theirs rounds the
  per-round count up and removes every score tied at the threshold, overshooting on ties — scores
  clamped at 0 tie often); ties are broken at random (seeded).
- The mask is the flags alone (`unflag_before_finetune`: a survivor whose score ended ≤ 0.5 is
  kept; the paper's configs all set it), i.e. exactly the target count.

The removal sequence becomes one global order (docs/algorithms.md §3, as the iterative pruners):
weights removed in round t rank before later rounds, survivors last by their final score. A direct
target takes exactly the rounds' removals; an effective target bisects over prefixes of that order.

Which weights the fine-tune starts from: the authors unfreeze the signed-constant weights in place
(`switch_to_wt`), so the model is left at the signed-constant weights (biases and BatchNorm as they
were): the trial's "train" protocol (the default) fine-tunes exactly what they fine-tune; "rewind"
starts from the original initialization instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pruning import masks as masks_lib
from pruning.masks import device_of
from pruning.options import option, rule, validate
from pruning.pruners.common import (
    Batch,
    check_count,
    current_keep,
    iterative_order,
    kept_after_round,
    prunable_params,
    scoring_copy,
)
from pruning.pruners.plan import Layout, OrderPlan, flatten
from pruning.train import TrainConfig, lr_at

THRESHOLD = 0.5  # their `quantize_threshold`: a weight is on in the forward iff its score is > 0.5


def signed_constant(weight: torch.Tensor) -> torch.Tensor:
    """sign(w) · sqrt(2 / fan_in), fan_in = in_channels/groups × kernel size (Linear: in_features)."""
    fan_in = weight[0].numel()
    return torch.sign(weight) * math.sqrt(2.0 / fan_in)


@dataclass(frozen=True)
class Mined:
    """What Gem-Miner found: the removal order, the scores before and after, the frozen weights."""

    plan: OrderPlan
    initial_scores: torch.Tensor  # (N,) uniform on [0, 1]
    scores: torch.Tensor  # (N,) final scores, in [0, 1]
    weights: dict[str, torch.Tensor]  # per layer: the signed-constant weights (masked entries 0)
    steps: int  # SGD steps on the scores


def round_epochs(epochs: int, iter_period: int) -> list[int]:
    """Epochs of score training before each pruning round, then the trailing epochs (if any).

    Theirs prunes after epochs T, 2T, …, RT (0-based, never after epoch 0): the first round follows
    T + 1 epochs, the others T; the epochs after the last round only re-rank the survivors.
    """
    rounds = (epochs - 1) // iter_period
    if rounds < 1:
        raise ValueError(f"epochs {epochs}: rare_gems needs epochs ≥ iter_period + 1 = {iter_period + 1} "
                         "(at least one pruning round)")
    trailing = epochs - 1 - rounds * iter_period
    return [iter_period + 1] + [iter_period] * (rounds - 1) + ([trailing] if trailing else [])


def _epoch_source(data, *, batch_size: int, seed: int, device: torch.device) -> Callable[[], Iterable[Batch]]:
    """A function giving one epoch of (x, y) batches on `device`.

    A `Split` is reshuffled every epoch from one seeded generator and augmented when its data set
    is (as `pruning.train.train`); any other iterable of (x, y) is one epoch, in its order.
    """
    if data is None:
        raise ValueError("data: rare_gems needs data (a Split or an iterable of (x, y) batches)")
    if hasattr(data, "batches"):
        if len(data) == 0:
            raise ValueError("data: no batches")
        g = torch.Generator().manual_seed(seed)
        return lambda: data.batches(batch_size, shuffle=True, generator=g, device=device,
                                    augment=data.augmentable)
    fixed = [(x.to(device), y.to(device)) for x, y in data]
    if not fixed:
        raise ValueError("data: no batches")
    return lambda: fixed


class _ScoreTrainer:
    """SGD on the scores of a frozen copy, forward through `torch.func.functional_call`.

    Why a functional forward: the effective weight w ⊙ flag ⊙ round(s) is a function of the score
    tensor, so the copy's own layers run unchanged with that weight swapped in per call.
    """

    def __init__(self, clone: nn.Module, layout: Layout, weights: torch.Tensor, scores: torch.Tensor,
                 epochs: Callable[[], Iterable[Batch]], *, total_epochs: int, lr: float, momentum: float,
                 score_l2: float) -> None:
        self.clone, self.layout, self.weights, self.scores = clone, layout, weights, scores
        self.names = [f"{n}.weight" if n else "weight" for n, _ in masks_lib.prunable_layers(clone)]
        self.epochs, self.total_epochs, self.score_l2 = epochs, total_epochs, score_l2
        self.cfg = TrainConfig(lr=lr, momentum=momentum, weight_decay=0.0, schedule="cosine")
        self.opt = torch.optim.SGD([scores], lr=lr, momentum=momentum)
        self.epoch = self.steps = 0

    def effective_weights(self, keep: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.scores
        gate = ((s > THRESHOLD).to(s.dtype) + s - s.detach()) * keep  # straight-through rounding
        return dict(zip(self.names, self.layout.split(self.weights * gate).values()))

    def run(self, epochs: int, keep: torch.Tensor) -> torch.Tensor:
        """Train the scores for `epochs` epochs under the flat flags `keep`; return the scores."""
        keep = keep.to(self.scores.device, self.scores.dtype)
        for _ in range(epochs):
            for group in self.opt.param_groups:
                group["lr"] = lr_at(self.epoch, self.total_epochs, self.cfg)
            for x, y in self.epochs():
                out = functional_call(self.clone, self.effective_weights(keep), (x,))
                loss = F.cross_entropy(out, y)
                if self.score_l2:
                    loss = loss + self.score_l2 * self.scores.square().sum()
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                with torch.no_grad():
                    self.scores.clamp_(0.0, 1.0)
                self.steps += 1
            self.epoch += 1
        return self.scores.detach()


@dataclass(frozen=True)
class GemMinerOptions:
    """The options' defaults, stated once for `mine` and `prune_rare_gems` (the authors' ResNet-20
    / CIFAR-10 config; see `prune_rare_gems`)."""

    epochs: int = option(150, "epochs of score training in all: ⌊(epochs − 1)/iter_period⌋ ≥ 1 rounds", ge=2)
    iter_period: int = option(5, "epochs between pruning rounds", ge=1)
    lr: float = option(0.1, "SGD learning rate of the scores (cosine schedule over epochs)", gt=0)
    momentum: float = option(0.9, "SGD momentum of the scores", ge=0, lt=1)
    score_l2: float = option(1e-4, "λ of λ Σ s² on the scores; 0 turns the regularizer off", ge=0)
    batch_size: int = option(128, "images per batch of a Split", ge=1)
    bias: bool = option(True, "keep the model's biases; false: zero them and keep them at zero through mining "
                        "and fine-tuning, as the authors' models have none (their layers are built bias-free)")

    def __post_init__(self) -> None:
        validate(self, rule(self.epochs >= self.iter_period + 1, "epochs",
                            f"{self.epochs}; expected at least iter_period + 1 = {self.iter_period + 1} "
                            "(one pruning round)"))


DEFAULTS = GemMinerOptions()


def mine(
    model: nn.Module,
    sparsity: float,
    *,
    data,
    seed: int = 0,
    epochs: int = DEFAULTS.epochs,
    iter_period: int = DEFAULTS.iter_period,
    lr: float = DEFAULTS.lr,
    momentum: float = DEFAULTS.momentum,
    score_l2: float = DEFAULTS.score_l2,
    batch_size: int = DEFAULTS.batch_size,
    bias: bool = DEFAULTS.bias,
) -> Mined:
    """Run Gem-Miner on a copy of `model` (the model itself is not changed); see `prune_rare_gems`."""
    check_count("epochs", epochs)
    check_count("iter_period", iter_period)
    check_count("batch_size", batch_size)
    if not lr > 0:
        raise ValueError(f"lr {lr}: must be > 0")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum {momentum}: must be in [0, 1)")
    if not score_l2 >= 0:
        raise ValueError(f"score_l2 {score_l2}: must be ≥ 0 (0 turns the regularizer off)")
    per_round = round_epochs(epochs, iter_period)
    device = device_of(model)
    layout = Layout.of(model)
    clone = scoring_copy(model)
    if not bias:
        drop_biases(clone)
    constants = [signed_constant(p.detach()) for p in prunable_params(clone)]
    weights = flatten(dict(zip(layout.names, constants)))
    initial = torch.rand(layout.n, generator=torch.Generator().manual_seed(seed), dtype=weights.dtype)
    scores = initial.to(device, copy=True).requires_grad_(True)
    trainer = _ScoreTrainer(clone, layout, weights, scores,
                            _epoch_source(data, batch_size=batch_size, seed=seed, device=device),
                            total_epochs=epochs, lr=lr, momentum=momentum, score_l2=score_l2)
    rounds = (epochs - 1) // iter_period
    schedule = [kept_after_round(t, rounds, layout.n, sparsity) for t in range(1, rounds + 1)]
    schedule += schedule[-1:] * (len(per_round) - rounds)  # trailing epochs: no removal, new scores
    counts: Iterator[int] = iter(per_round)
    plan = iterative_order(layout, current_keep(model), schedule,
                           lambda keep: trainer.run(next(counts), keep).abs(), seed)
    return Mined(plan=plan, initial_scores=initial, scores=scores.detach().cpu().clone(),
                 weights=dict(zip(layout.names, (c.detach().clone() for c in constants))), steps=trainer.steps)


def prune_rare_gems(
    model: nn.Module,
    sparsity: float,
    *,
    data=None,
    seed: int = 0,
    epochs: int = DEFAULTS.epochs,
    iter_period: int = DEFAULTS.iter_period,
    lr: float = DEFAULTS.lr,
    momentum: float = DEFAULTS.momentum,
    score_l2: float = DEFAULTS.score_l2,
    batch_size: int = DEFAULTS.batch_size,
    bias: bool = DEFAULTS.bias,
) -> OrderPlan:
    """Rare Gems at initialization; leaves `model` at its signed-constant weights (module docstring).

    Options (defaults as the authors' ResNet-20/CIFAR-10 config):
    - `epochs` (150): epochs of score training in all; R = ⌊(epochs − 1)/iter_period⌋ ≥ 1 rounds.
    - `iter_period` (5): epochs between pruning rounds.
    - `lr` (0.1), `momentum` (0.9): SGD on the scores, cosine schedule over `epochs`, no weight decay.
    - `score_l2` (1e-4): λ of λ Σ s²; 0 turns the regularizer off (their VGG-16 config uses 1e-6).
    - `batch_size` (128): for a `Split`; an iterable of (x, y) batches is one epoch as given.
    - `bias` (True): False zeroes the biases of the prunable layers and freezes them (requires_grad
      False), in the mining copy and in `model`, so the fine-tune trains a bias-free net as the
      authors' models are. (The default "train" protocol fine-tunes that; "rewind" would copy the
      initialization's biases back, still frozen.)
    """
    found = mine(model, sparsity, data=data, seed=seed, epochs=epochs, iter_period=iter_period, lr=lr,
                 momentum=momentum, score_l2=score_l2, batch_size=batch_size, bias=bias)
    masks_lib.copy_weights(model, {f"{name}.weight" if name else "weight": w
                                   for name, w in found.weights.items()})
    if not bias:
        drop_biases(model)
    return found.plan


def drop_biases(model: nn.Module) -> None:
    """Zero the bias of every prunable layer and freeze it: a bias-free layer, as the authors build."""
    with torch.no_grad():
        for _, module in masks_lib.prunable_layers(model):
            if module.bias is not None:
                module.bias.zero_()
                module.bias.requires_grad_(False)
