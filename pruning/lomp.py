"""LOMP (docs/algorithms.md §7): L1-regularized training, one-shot global magnitude pruning, and the
predicted vs actual pruning limit, as one function.

Flow: train with cross-entropy + λ·Σ|θ| (SGD momentum 0.9, weight decay 0; θ per cfg.l1_scope)
→ ε (per-batch loss std by a named recipe, or given) → SLQ of the trained dense model →
accuracy/loss curve of one-shot global-magnitude pruning over the sparsity grid (no retraining;
the trained weights are restored after the curve) → `predict_limit` and `actual_limit`. Every number a limit row needs comes back in `LompResult`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from pruning import masks as masks_lib
from pruning.slq import SLQResult, slq
from pruning.limit import (
    ActualLimit, LimitPrediction, actual_limit, batch_loss_std, check_epsilon, check_policy, curve_rows,
    limit_columns, predict_limit,
)
from pruning.limit import epsilon_recipe as recipe_options  # run_lomp's keyword has the plain name
from pruning.train import TrainConfig, TrainResult, evaluate, train

log = logging.getLogger(__name__)

# λ of the L1 term used by the authors (docs/algorithms.md §7), per registry model; other models need an
# explicit `l1`. AlexNet's 3e-5 serves both our CIFAR-sized `alexnet` and the authors' `alexnet224`.
LOMP_L1: dict[str, float] = {
    "fc5": 5e-5, "fc12": 5e-5, "alexnet": 3e-5, "alexnet224": 3e-5, "vgg16": 1e-4, "resnet18": 5e-5,
    "resnet50": 2e-5,
}


def default_l1(model_name: str | None) -> float:
    """The authors' λ for `model_name`: the one table every caller (spec, `prunetune prune`) uses;
    a one-line ValueError for a model they did not run."""
    if model_name not in LOMP_L1:
        raise ValueError(f"lomp_l1: no published value for model {model_name!r} (published for "
                         f"{', '.join(sorted(LOMP_L1))}); set lomp_l1 explicitly")
    return LOMP_L1[model_name]


def lomp_config(cfg: TrainConfig, l1: float, *, l1_scope: str | None = None) -> TrainConfig:
    """LOMP's training recipe on top of `cfg` (docs/algorithms.md §7): the L1 term λ·Σ|θ| (over
    `l1_scope`, else cfg.l1_scope; the authors' is "all"), SGD momentum 0.9 and no weight decay
    (the L1 term is the regularizer), also for λ = 0. The one place the recipe is stated."""
    scope = cfg.l1_scope if l1_scope is None else l1_scope
    return replace(cfg, l1=float(l1), momentum=0.9, weight_decay=0.0, l1_scope=scope)


def limit_iterations(model_name: str) -> int:
    """The authors' Lanczos depth for a limit: 128 iterations, 96 for AlexNet (docs/algorithms.md §7)."""
    return 96 if model_name in ("alexnet", "alexnet224") else 128


def global_magnitude_masks(weights: dict[str, torch.Tensor], removed_frac: float) -> dict[str, torch.Tensor]:
    """Remove the ⌈sN⌉ smallest |w| over all prunable layers (ties: model order, stable sort).

    The same count rule as `limit.SparseDistance`, so the curve's R(s) is exactly the distance
    to the pruned weights evaluated at that point.
    """
    flat = torch.cat([w.reshape(-1) for w in weights.values()]).abs()
    k = int(math.ceil(round(removed_frac * flat.numel(), 9)))
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.sort(flat, stable=True).indices[:k]] = False
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = keep[start : start + w.numel()].view_as(w)
        start += w.numel()
    return out


@dataclass
class LompResult:
    """Prediction, actual limit, curve rows and the SLQ run of one LOMP experiment."""

    prediction: LimitPrediction
    actual: ActualLimit
    curve: list[dict]             # sweeps/schema.py CURVES rows (without ids)
    spectrum: SLQResult
    train_result: TrainResult
    dense_test_acc: float
    l1: float
    seconds: dict = field(default_factory=dict)  # train, epsilon, hessian, curve, total

    def columns(self) -> dict:
        """The TRIALS columns this experiment fills (limit, SLQ summary, timings)."""
        out = {"lomp_l1": self.l1, "dense_test_acc": self.dense_test_acc, "hessian_model": "dense",
               "train_seconds": self.seconds.get("train"), "hessian_seconds": self.seconds.get("hessian"),
               "total_seconds": self.seconds.get("total")}
        out.update(self.spectrum.summary())
        out.update(limit_columns(self.prediction, self.actual))
        return out


def pruning_curve(model: nn.Module, train_split, test_split, sparsities: Sequence[float], *,
                  device: str | torch.device = "cpu") -> tuple[list[float], list[float], list[float]]:
    """(test_acc, test_loss, train_loss) of one-shot global magnitude pruning at each sparsity.

    Masks go through `torch.nn.utils.prune` (pruning.masks); the model's state (values and any
    previous masks) is restored afterwards, so the curve never changes the trained model.
    """
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dense = masks_lib.weights(model)
    accs, losses, train_losses = [], [], []
    try:
        for s in sparsities:
            masks_lib.apply_masks(model, global_magnitude_masks(dense, s))
            loss, acc = evaluate(model, test_split, device=device)
            train_loss, _ = evaluate(model, train_split, device=device)
            accs.append(acc), losses.append(loss), train_losses.append(train_loss)
    finally:
        masks_lib.load_state_dict(model, snapshot)
    return accs, losses, train_losses


def run_lomp(
    model: nn.Module,
    train_split,
    test_split,
    cfg: TrainConfig,
    *,
    sparsities: Sequence[float],
    l1: float | None = None,
    model_name: str | None = None,
    probes: int = 8,
    iterations: int = 64,
    epsilon: float | None = None,
    policy: str = "abs",
    tolerance_pp: float = 0.1,
    epsilon_recipe: str = "batch_loss_std_authors",
    zero_tol: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    hessian_params: Sequence[str] | str | None = None,
    slq_options: dict | None = None,
) -> LompResult:
    """Train `model` in place with LOMP's L1 recipe, then predict and measure its pruning limit.

    `l1` defaults to the authors' λ for `model_name` (LOMP_L1). The training config keeps the
    caller's schedule, epochs and batch size, but LOMP fixes momentum 0.9 and weight decay 0.
    `epsilon` None: the per-batch training-loss std over one pass (batch size cfg.batch_size) by
    `epsilon_recipe` (`pruning.limit.EPSILON_RECIPES`; the default is the authors', with the L1
    term λ over cfg.l1_scope added per batch and `seed` drawing the order and the augmentation;
    "batch_loss_std" is the deterministic un-augmented variant used before), recorded as the
    prediction's `epsilon_source`. `zero_tol` as in `predict_limit`.
    `sparsities`: removed fractions in [0, 1); 0 is added (the dense point of the curve).
    """
    t_all = time.perf_counter()
    check_policy(policy)
    lam = default_l1(model_name) if l1 is None else float(l1)
    if lam < 0:
        raise ValueError(f"lomp l1 {lam}: must be ≥ 0")
    grid = sorted({0.0, *(masks_lib.check_sparsity(s, "sparsities") for s in sparsities)})
    if epsilon is not None:
        check_epsilon(epsilon)
    eps_options = recipe_options(epsilon_recipe)
    cfg = lomp_config(cfg, lam)
    seconds = {}

    t0 = time.perf_counter()
    trained = train(model, train_split, test_split, cfg, device=device, seed=seed)
    seconds["train"] = time.perf_counter() - t0
    if trained.status != "ok":
        raise RuntimeError(f"lomp: training {trained.status} (l1={lam}, lr={cfg.lr})")

    t0 = time.perf_counter()
    if epsilon is None:
        eps = batch_loss_std(model, train_split, batch_size=cfg.batch_size, device=device, l1=lam,
                             l1_scope=cfg.l1_scope, seed=seed, **eps_options)
        source = epsilon_recipe
    else:
        eps, source = float(epsilon), "given"
    seconds["epsilon"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    spectrum = slq(model, nn.functional.cross_entropy, train_split, probes=probes, iterations=iterations,
                   seed=seed, params=hessian_params, device=device, **(slq_options or {}))
    seconds["hessian"] = time.perf_counter() - t0

    weights = masks_lib.weights(model)
    prediction = predict_limit(weights, spectrum, eps, policy=policy, epsilon_source=source, zero_tol=zero_tol)

    t0 = time.perf_counter()
    accs, losses, train_losses = pruning_curve(model, train_split, test_split, grid, device=device)
    seconds["curve"] = time.perf_counter() - t0
    dense_acc = accs[0]
    actual = actual_limit(grid, accs, dense_acc, tolerance_pp=tolerance_pp)
    rows = curve_rows(grid, accs, losses, train_losses, weights, spectrum, eps, policy, zero_tol=zero_tol)
    seconds["total"] = time.perf_counter() - t_all
    log.info("lomp: predicted removed %.4f (kept %.4f), actual strict %.4f tol %.4f, ε=%.4g (%s), q=%.3f",
             prediction.removed_frac, prediction.kept_frac, actual.removed_frac_strict,
             actual.removed_frac_tol, eps, source, spectrum.zero_mass)
    return LompResult(prediction=prediction, actual=actual, curve=rows, spectrum=spectrum,
                      train_result=trained, dense_test_acc=dense_acc, l1=lam, seconds=seconds)
