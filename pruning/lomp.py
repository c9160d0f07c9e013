"""LOMP (docs/algorithms.md §7): L1-regularized training, one-shot global magnitude pruning, and the
predicted vs actual pruning limit.

One limit round (`limit_round`): ε (per-batch loss std by a named recipe, or given) → the spectrum
of the trained model (injected: a local SLQ, the dense cache, distributed HVPs; `iterations: auto`
grows it until s* is resolved) → `predict_limit` → accuracy/loss curve of one-shot global-magnitude
pruning over the sparsity grid (no retraining; the model is never changed) → `actual_limit` by
every rule. `run_lomp` trains with cross-entropy + λ·Σ|θ| (SGD momentum 0.9, weight decay 0; θ per
cfg.l1_scope) and runs one round; a sweep's limit cell (sweeps/trial_limit.py) runs the same round
on the dense-cached LOMP model, and its iterative rounds on each retrained masked model.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from pruning import masks as masks_lib
from pruning.clock import Clock
from pruning.limit import (
    RESOLUTION_TOL, ActualLimit, LimitPrediction, actual_limit, batch_loss_std, check_epsilon, check_policy,
    check_resolution_tol, curve_rows, depth_resolved, limit_columns, predict_limit,
)
from pruning.limit import epsilon_recipe as recipe_options  # run_lomp's keyword has the plain name
from pruning.slq import SLQResult, slq
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


SpectrumFn = Callable[[nn.Module, Callable[[SLQResult], bool]], SLQResult]


@dataclass(frozen=True)
class LimitRule:
    """How one limit round reads its limit (docs/algorithms.md §7): what `run_lomp`, a sweep's limit
    cell and its later rounds share, stated once."""

    grid: tuple[float, ...]              # removed fractions of the one-shot curve (the start is added)
    policy: str = "abs"                  # negative eigenvalues in G(R): abs | drop | flat
    zero_tol: float | None = None        # zero-curvature tolerance (relative; None: 64 ulps of the dtype)
    tolerance_pp: float = 0.1            # the "tol" rule's tolerance, percentage points
    resolution_tol: float = RESOLUTION_TOL
    epsilon: float | None = None         # given ε; None: measured by `epsilon_source`
    epsilon_source: str = "batch_loss_std_authors"


@dataclass
class LimitRound:
    """One round's limit: ε, the spectrum, the prediction, the actual limit by every rule, and the
    curve rows (0 or the round's start first)."""

    epsilon: float
    spectrum: SLQResult
    prediction: LimitPrediction
    actual: ActualLimit
    curve: list[dict]                    # sweeps/schema.py CURVES rows (without ids)
    weights: dict[str, torch.Tensor]     # the prunable weights the prediction saw

    @property
    def reference_acc(self) -> float:
        """Test accuracy at the curve's start (the dense model, or a round's pruned model)."""
        return self.curve[0]["test_acc"]


def limit_round(model: nn.Module, train_split, test_split, rule: LimitRule, *, spectrum: SpectrumFn,
                l1: float, l1_scope: str, batch_size: int, seed: int, start: float = 0.0,
                device: str | torch.device = "cpu", clock: Clock | None = None) -> LimitRound:
    """ε → spectrum → predicted limit → one-shot curve → actual limits, on the trained `model`.

    The one limit pipeline: `run_lomp`, a limit cell and each of its iterative rounds call it with
    their own `spectrum(model, until)` (a local SLQ, the dense cache, the backend's HVP workers);
    `until` is the depth rule of `iterations: auto` (`pruning.limit.depth_resolved`), which a fixed
    depth ignores. ε: `rule.epsilon`, else the per-batch loss std by `rule.epsilon_source` with
    λ·Σ|θ| (`l1`, `l1_scope`) added per batch, batches of `batch_size`, order drawn from `seed`.
    The curve starts at `start` (a round's own pruned fraction; 0 for a dense model), then the
    grid's larger fractions; it runs on a copy whose pruning masks are folded in (pruned weights
    stay zero at every point), so `model` is never changed. Phases go to `clock`.
    """
    clock = clock or Clock()
    with clock("epsilon"):
        if rule.epsilon is not None:
            eps, source = check_epsilon(rule.epsilon), "given"
        else:
            eps = batch_loss_std(model, train_split, batch_size=batch_size, device=device, l1=l1,
                                 l1_scope=l1_scope, seed=seed, **recipe_options(rule.epsilon_source))
            source = rule.epsilon_source
    weights = masks_lib.weights(model)
    until = depth_resolved(weights, eps, policy=rule.policy, zero_tol=rule.zero_tol,
                           resolution_tol=rule.resolution_tol)
    with clock("hessian"):
        spec = spectrum(model, until)
    with clock("limit"):
        prediction = predict_limit(weights, spec, eps, policy=rule.policy, epsilon_source=source,
                                   zero_tol=rule.zero_tol, resolution_tol=rule.resolution_tol)
        grid = sorted({float(start), *(float(s) for s in rule.grid if s > start)})
        frozen = copy.deepcopy(model)
        masks_lib.remove_masks(frozen)  # pruned weights are plain zeros: no curve mask revives them
        accs, losses, train_losses = pruning_curve(frozen, train_split, test_split, grid, device=device)
        actual = actual_limit(grid, accs, accs[0], tolerance_pp=rule.tolerance_pp, train_loss=train_losses,
                              dense_train_loss=train_losses[0], epsilon=eps)
        rows = curve_rows(grid, accs, losses, train_losses, weights, spec, eps, rule.policy,
                          zero_tol=rule.zero_tol)
    log.info("limit: predicted removed %s (authors' estimator %.4f, unresolved %s), actual strict %.4f "
             "tol %.4f loss %.4f, ε=%.4g (%s), depth %d, q=%.3f", prediction.note or f"{prediction.removed_frac:.4f}",
             prediction.authors_removed_frac, prediction.unresolved, actual.removed_frac_strict,
             actual.removed_frac_tol, actual.removed_frac_loss, eps, source, spec.iterations, spec.zero_mass)
    return LimitRound(epsilon=eps, spectrum=spec, prediction=prediction, actual=actual, curve=rows,
                      weights=weights)


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
    seconds: dict = field(default_factory=dict)  # train, epsilon, hessian, limit (curve included), total

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
    iterations: int | str = 64,
    max_iterations: int = 512,
    epsilon: float | None = None,
    policy: str = "abs",
    tolerance_pp: float = 0.1,
    epsilon_recipe: str = "batch_loss_std_authors",
    zero_tol: float | None = None,
    resolution_tol: float = RESOLUTION_TOL,
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
    prediction's `epsilon_source`. `zero_tol` as in `predict_limit`. `iterations="auto"` grows the
    Lanczos run from the authors' depth (`limit_iterations`, or `iterations` of `slq_options`'
    `min_iterations`) until s* is resolved or `max_iterations` (`limit_round`, `slq`).
    `sparsities`: removed fractions in [0, 1); 0 is added (the dense point of the curve).
    """
    clock, t0 = Clock(), time.perf_counter()
    check_policy(policy)
    lam = default_l1(model_name) if l1 is None else float(l1)
    if lam < 0:
        raise ValueError(f"lomp l1 {lam}: must be ≥ 0")
    rule = LimitRule(grid=tuple(masks_lib.check_sparsity(s, "sparsities") for s in sparsities), policy=policy,
                     zero_tol=zero_tol, tolerance_pp=tolerance_pp, resolution_tol=check_resolution_tol(resolution_tol),
                     epsilon=None if epsilon is None else check_epsilon(epsilon),
                     epsilon_source=epsilon_recipe)
    recipe_options(epsilon_recipe)  # an unknown recipe fails here, before training
    cfg = lomp_config(cfg, lam)
    options = dict(slq_options or {})
    if iterations == "auto":
        options.setdefault("min_iterations", limit_iterations(model_name or ""))
        depth = max_iterations
    else:
        depth = int(iterations)

    def spectrum(net: nn.Module, until: Callable[[SLQResult], bool]) -> SLQResult:
        return slq(net, nn.functional.cross_entropy, train_split, probes=probes, iterations=depth, seed=seed,
                   params=hessian_params, device=device, until=until if iterations == "auto" else None,
                   **options)

    with clock("train"):
        trained = train(model, train_split, test_split, cfg, device=device, seed=seed)
    if trained.status != "ok":
        raise RuntimeError(f"lomp: training {trained.status} (l1={lam}, lr={cfg.lr})")
    result = limit_round(model, train_split, test_split, rule, spectrum=spectrum, l1=lam,
                         l1_scope=cfg.l1_scope, batch_size=cfg.batch_size, seed=seed, device=device,
                         clock=clock)
    return LompResult(prediction=result.prediction, actual=result.actual, curve=result.curve,
                      spectrum=result.spectrum, train_result=trained, dense_test_acc=result.reference_acc,
                      l1=lam, seconds={**clock.seconds, "total": time.perf_counter() - t0})
