"""The trial pipeline: one cell in, one finished set of Parquet files out — the same under every backend.

    seed → data → model → obtain (prune at init + train, or dense from the cache + prune + protocol)
         → evaluate → sparsity report → SLQ (optional) → write layers/spectra/epochs/curves → trials
    limit cells: seed → data → model → limit (LOMP model, ε, SLQ, prediction, curve, effective terms,
         scaling, weight histograms) → Hessian rows (optional) → rounds → sparsity report → write

Why a list of named steps looked up in `STEPS` at call time: the pruning library grows in parallel
(pruners, SLQ, LOMP land as separate modules), and a step that needs a missing module fails only the
cells that use it, with a one-line error in their trials row. Tests replace single steps the same way.

Outcomes: a NaN/inf loss ends training with status "diverged" (the row is still written, and it is a
result: not retried); any exception gives status "failed" with a one-line `error` (written, so the
error is visible; failed cells are retried by the next run). `Where` (storage and data roots) is
never part of a cell's identity.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pruning import data as data_lib
from pruning import limit, limit_analyses, masks, models
from pruning.data import Split
from pruning.hvp import LocalHVPBackend, restoring
from pruning.limit_analyses import MagnitudeOrder, next_round_masks
from pruning.slq import SLQResult, slq
from pruning.lomp import pruning_curve
from pruning.pruners import PRUNERS, PruneResult, prune
from pruning.sparsity import EffectiveMaskEvaluator, sparsity_report
from pruning.train import TrainConfig, TrainResult, evaluate, seed_everything, train
from sweeps import provenance, store
from sweeps.dense_cache import DENSE_ITEM, DenseCache, dense_fields, key_of
from sweeps.cells import Cell, LimitPrune, PointPrune, hashed_config

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any]], None]
ERROR_MAX = 500  # characters of a failed cell's error line


@dataclass(frozen=True)
class Where:
    """Where results and data live; the same cell gives the same result wherever this points."""

    storage: str
    data_root: str | None = None


class Diverged(Exception):
    """A training phase produced a NaN/inf loss: stop the pipeline, keep the row."""


@dataclass
class TrialState:
    """What the steps share while one cell runs (the only mutable object of a trial)."""

    cell: Cell
    where: Where
    device: str
    report: Report | None
    hvp_backend_factory: Callable[..., Any] | None
    row: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {"layers": [], "spectra": [], "epochs": [], "curves": []})
    train_split: Split | None = None
    test_split: Split | None = None
    model: nn.Module | None = None
    init_state: dict[str, torch.Tensor] | None = None
    dense_key: str | None = None
    rewind_state: dict[str, torch.Tensor] | None = None  # IMP's rewinding point (late rewinding)
    prune_result: PruneResult | None = None
    seconds: dict[str, float] = field(
        default_factory=lambda: {"train_seconds": 0.0, "prune_seconds": 0.0, "hessian_seconds": 0.0})

    def train_config(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self.cell.train, **changes)

    @property
    def point(self) -> PointPrune:
        assert isinstance(self.cell.prune, PointPrune), "a point cell's prune section"
        return self.cell.prune

    @property
    def limit(self) -> LimitPrune:
        assert isinstance(self.cell.prune, LimitPrune), "a limit cell's prune section"
        return self.cell.prune


# ----------------------------------------------------------------------------- helpers


def _epoch_rows(phase: str, epochs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")
    return [{"phase": phase, **{k: e.get(k) for k in keep}} for e in epochs]


def _reporter(st: TrialState, phase: str) -> Callable[[dict[str, Any]], None] | None:
    """The per-epoch callback of a training phase: forwards plain metrics to `report`."""
    if st.report is None:
        return None

    def on_epoch(record: dict[str, Any]) -> None:
        st.report({"cell_id": st.cell.cell_id, "phase": phase,
                   **{k: v for k, v in record.items() if isinstance(v, (int, float, str))}})

    return on_epoch


def _train(st: TrialState, model: nn.Module, cfg: TrainConfig, phase: str) -> TrainResult:
    """Train with per-epoch reporting; records epochs rows and time; raises Diverged on NaN/inf."""
    result = train(model, st.train_split, st.test_split, cfg, device=st.device, seed=st.cell.seed,
                   on_epoch=_reporter(st, phase))
    st.tables["epochs"] += _epoch_rows(phase, result.epochs)
    st.seconds["train_seconds"] += result.seconds
    _set_metrics(st.row, result)
    if result.status == "diverged":
        raise Diverged(f"{phase} training diverged (NaN/inf loss)")
    return result


def _set_metrics(row: dict[str, Any], r: TrainResult | dict[str, Any]) -> None:
    for k in ("test_acc", "test_loss", "train_acc", "train_loss"):
        v = getattr(r, k, None) if not isinstance(r, dict) else r.get(k)
        row[k] = None if v is None else float(v)


def _dense(st: TrialState) -> dict[str, Any]:
    """The trained dense model of this cell's model/data/seed/train config, from the cache.

    Trains it from the cell's seeded initialization (once per key across all processes sharing
    the storage) on a miss; `cell.train` already holds LOMP's recipe for an L1-trained cell. The
    entry holds `state` (state_dict), `metrics` (of the dense model) and `epochs`; `use_dense`
    records them in the cell.
    """
    cfg = st.cell.train
    fields_ = _dense_fields(st.cell)
    st.dense_key = key_of(fields_)

    def compute() -> dict[str, Any]:
        net = _build(st)
        net.load_state_dict(st.init_state)
        phase = "lomp" if cfg.l1 else "dense"
        r = train(net, st.train_split, st.test_split, cfg, device=st.device, seed=st.cell.seed,
                  on_epoch=_reporter(st, phase))
        metrics = {"status": r.status, "seconds": float(r.seconds), "batch_losses": list(r.batch_losses)}
        for k in ("test_acc", "test_loss", "train_acc", "train_loss"):
            metrics[k] = float(getattr(r, k))
        return {"state": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "metrics": metrics, "epochs": _epoch_rows(phase, r.epochs)}

    entry, _ = DenseCache(st.where.storage).get_or_compute(
        st.dense_key, DENSE_ITEM, compute, describe=fields_)
    st.row["dense_test_acc"] = entry["metrics"]["test_acc"]
    return entry


def _dense_fields(cell: Cell) -> dict[str, Any]:
    hashed = hashed_config(cell)
    return dense_fields(model=cell.model, dataset=cell.dataset, data_options=hashed["data"], seed=cell.seed,
                        train=hashed["train"], model_variant=hashed.get("model_variant"))


def _build(st: TrialState) -> nn.Module:
    """The cell's model, untrained (its initialization follows the RNG state)."""
    return models.build(st.cell.model, input_shape=st.train_split.input_shape,
                        num_classes=st.train_split.num_classes, variant=st.cell.model_variant)


def _rewind_state(st: TrialState) -> dict[str, torch.Tensor]:
    """Where IMP's survivors rewind to: the dense run's weights after `rewind_iteration` optimizer
    steps (late rewinding), or the initialization for 0. Cached beside the dense model: the same
    seeded run, stopped at nothing, with a copy taken at step k."""
    k = st.point.rewind_iteration
    if not k:
        return st.init_state

    def compute() -> dict[str, Any]:
        net = _build(st)
        net.load_state_dict(st.init_state)
        r = train(net, st.train_split, None, st.cell.train, device=st.device, seed=st.cell.seed, snapshot_at=k)
        if r.snapshot is None:
            raise Diverged(f"dense training diverged before rewind_iteration {k}")
        return {"state": {name: v.detach().cpu() for name, v in r.snapshot.items()}}

    entry, _ = DenseCache(st.where.storage).get_or_compute(st.dense_key, f"rewind-{k}.pt", compute)
    return entry["state"]


def use_dense(st: TrialState, entry: dict[str, Any]) -> None:
    """Start the cell from the trained dense model: its weights, epochs, time and metrics."""
    st.tables["epochs"] += entry["epochs"]
    st.seconds["train_seconds"] += entry["metrics"]["seconds"]
    _set_metrics(st.row, entry["metrics"])
    if entry["metrics"]["status"] == "diverged":
        raise Diverged("dense training diverged (NaN/inf loss)")
    masks.load_state_dict(st.model, entry["state"])
    st.model.to(st.device)


def _prune(st: TrialState, **extra: Any) -> PruneResult:
    """Apply the cell's pruner through `pruning.pruners.prune` (masks land on the model)."""
    cell = st.cell
    data = st.train_split if PRUNERS[cell.pruner].needs_data else None
    t0, trained0 = time.perf_counter(), st.seconds["train_seconds"]
    result = prune(st.model, cell.pruner, cell.sparsity, target=cell.target, data=data,
                   seed=cell.seed, **st.point.options, **extra)
    # IMP trains inside `prune`; that time is already in train_seconds
    st.seconds["prune_seconds"] += time.perf_counter() - t0 - (st.seconds["train_seconds"] - trained0)
    st.prune_result = result
    return result


# ----------------------------------------------------------------------------- steps


def step_seed(st: TrialState) -> None:
    """Seed every RNG from the cell (first thing, never from the driver)."""
    seed_everything(st.cell.seed)


def step_data(st: TrialState) -> None:
    """Load the splits; the split itself is fixed by the loader option `seed`, not the cell seed."""
    st.train_split, st.test_split = data_lib.load(st.cell.dataset, root=st.where.data_root,
                                                  **st.cell.data)


def step_model(st: TrialState) -> None:
    """Build the model at its seeded initialization and remember that state (for rewinding)."""
    seed_everything(st.cell.seed)
    st.model = _build(st)
    st.init_state = copy.deepcopy(st.model.state_dict())
    st.row["n_params"] = models.count_parameters(st.model)


def _after_prune(st: TrialState) -> None:
    """What follows pruning: none (evaluate) | finetune (a few epochs) | rewind (to the seeded
    init, then full training) | train (full training from the current weights)."""
    protocol = st.cell.protocol
    if protocol == "none":
        st.row["test_loss"], st.row["test_acc"] = evaluate(st.model, st.test_split, device=st.device)
        st.row["train_loss"], st.row["train_acc"] = evaluate(st.model, st.train_split, device=st.device)
        return
    if protocol == "finetune":
        _train(st, st.model, st.train_config(epochs=st.point.finetune_epochs, iterations=None), "finetune")
        return
    if protocol == "rewind":  # IMP rewinds where its rounds did; everything else to the initialization
        masks.copy_weights(st.model, st.rewind_state if st.rewind_state is not None else st.init_state)
    _train(st, st.model, st.train_config(), "sparse")


def step_obtain(st: TrialState) -> None:
    """Produce the final model of a point cell, as the pruner's `when` and the protocol say."""
    cell = st.cell
    if cell.pruner == "dense":
        use_dense(st, _dense(st))
        return
    info = PRUNERS[cell.pruner]
    if info.when == "init":
        st.model.to(st.device)
        _prune(st)
        _after_prune(st)  # "train" (the default) and "rewind" coincide at init
        return
    use_dense(st, _dense(st))
    extra = _imp_options(st) if cell.pruner == "imp" else {}
    _prune(st, **extra)
    _after_prune(st)


def _imp_options(st: TrialState) -> dict[str, Any]:
    """IMP trains between its rounds: it gets our training (epochs of phase "sparse") and the init."""
    def train_fn(model: nn.Module) -> TrainResult:
        return _train(st, model, st.train_config(), "sparse")

    st.rewind_state = _rewind_state(st)
    return {"train_fn": train_fn, "rewind_state": st.rewind_state}


def step_sparsity(st: TrialState) -> None:
    """Direct and effective sparsity of the final masks, and the per-layer rows."""
    report = sparsity_report(st.model)
    st.row.update(report.trial_columns())
    st.tables["layers"] = report.layer_rows()


def _slq_split(st: TrialState) -> Split:
    n = st.cell.hessian.max_samples
    split = st.train_split
    if n is None or n >= len(split):
        return split
    return dataclasses.replace(split, x=split.x[:n], y=split.y[:n], _device_cache={})


def slq_to_plain(r: SLQResult) -> dict[str, Any]:
    """An SLQResult as tensors and plain values (what `torch.load(weights_only=True)` accepts)."""
    out = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
    for k, v in out.items():  # every array field (nodes, weights, steps, alphas, …) as a tensor
        if isinstance(v, np.ndarray):
            out[k] = torch.from_numpy(v.copy())
    out["info"] = {k: v for k, v in out["info"].items() if isinstance(v, (int, float, str, bool))}
    return out


def slq_from_plain(d: dict[str, Any]) -> SLQResult:
    return SLQResult(**{k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in d.items()})


def _run_slq(st: TrialState, model: nn.Module) -> SLQResult:
    """SLQ of the mean training loss of `model` (local HVPs, or the backend's factory's)."""
    h = st.cell.hessian
    data = _slq_split(st)
    loss_fn = torch.nn.functional.cross_entropy
    backend = None
    if st.hvp_backend_factory is not None:
        backend = st.hvp_backend_factory(model=model, loss_fn=loss_fn, data=data, device=st.device)
    return slq(model, loss_fn, data, probes=h.probes, iterations=h.iterations, seed=st.cell.seed,
               backend=backend, device=st.device)


def _record_slq(st: TrialState, r: SLQResult, which: str) -> None:
    """spectra rows of one SLQ run and its trials summary (the last recorded one wins)."""
    st.tables["spectra"] += [{"hessian_model": which, **row} for row in r.spectra_rows()]
    st.seconds["hessian_seconds"] += float(r.seconds)
    st.row.update(r.summary())
    st.row["hessian_model"] = which


def step_hessian(st: TrialState) -> None:
    """SLQ of the dense model (cached with it) and/or the pruned one, as `hessian.models` says.

    With `both`, the trials summary describes the pruned model; spectra keep both.
    """
    h = st.cell.hessian
    if h is None:
        return
    which = h.models
    if which in ("dense", "both"):
        _record_slq(st, _dense_slq(st), "dense")
    if which in ("pruned", "both"):
        _record_slq(st, _run_slq(st, st.model), "pruned")


def _dense_slq(st: TrialState) -> SLQResult:
    """The dense model's SLQ, cached beside its checkpoint (keyed by the SLQ settings)."""
    if st.dense_key is None:  # a pruner at init: the dense reference is the dense-trained model
        _dense(st)
    cache = DenseCache(st.where.storage)
    entry = cache.load(st.dense_key, DENSE_ITEM)
    h = {k: v for k, v in st.cell.hessian.layout().items() if k != "models"}
    item = f"slq-{key_of({**h, 'seed': st.cell.seed})}.pt"

    def compute() -> dict[str, Any]:
        dense = _build(st)
        masks.load_state_dict(dense, entry["state"])
        return slq_to_plain(_run_slq(st, dense.to(st.device)))

    value, fresh = cache.get_or_compute(st.dense_key, item, compute)
    result = slq_from_plain(value)
    return result if fresh else dataclasses.replace(result, seconds=0.0)  # time spent in this cell


def step_limit(st: TrialState) -> None:
    """A limit cell (docs/algorithms.md §7): LOMP training, ε, the dense SLQ, the predicted limit with
    its bands, and the actual limit from the one-shot global-magnitude curve (no retraining); then
    what costs next to nothing on top (`_limit_extras`): the curve and the limits in effective
    terms, the weight-magnitude scaling of the prediction and the histograms of log10|w|.

    The same steps as `pruning.lomp.run_lomp`, composed here from its parts (`pruning_curve`,
    `pruning.limit`) because a sweep needs three things run_lomp does not offer: the LOMP model and
    its SLQ come from the dense cache (shared with point cells of the `lomp` pruner), the SLQ can
    use the backend's distributed HVPs, and `hessian.max_samples` bounds its data. The trials row
    describes the unpruned LOMP model; the curve (0 added, as run_lomp does) the pruned ones.
    """
    p = st.limit
    use_dense(st, _dense(st))
    eps = _epsilon(st, st.model)
    spectrum = _dense_slq(st)
    _record_slq(st, spectrum, "dense")
    weights = masks.weights(st.model)
    t0 = time.perf_counter()
    prediction = limit.predict_limit(weights, spectrum, eps, policy=p.eigen_policy,
                                     epsilon_source=p.epsilon_source, zero_tol=p.zero_tol)
    grid = sorted({0.0, *p.limit_grid})
    accs, losses, train_losses = pruning_curve(st.model, st.train_split, st.test_split, grid, device=st.device)
    actual = limit.actual_limit(grid, accs, accs[0], tolerance_pp=p.limit_tolerance_pp)
    st.seconds["prune_seconds"] += time.perf_counter() - t0
    st.row.update(limit.limit_columns(prediction, actual))
    st.row["lomp_l1"] = p.lomp_l1
    st.tables["curves"] = limit.curve_rows(grid, accs, losses, train_losses, weights, spectrum, eps,
                                           p.eigen_policy, zero_tol=p.zero_tol)
    _limit_extras(st, weights, spectrum, eps, prediction.removed_frac)


def _epsilon(st: TrialState, model: nn.Module) -> float:
    """ε of a limit cell for `model`: the cell's value, else measured by its recipe (λ added)."""
    p, cfg = st.limit, st.cell.train
    if p.epsilon is not None:
        return p.epsilon
    return limit.batch_loss_std(model, st.train_split, batch_size=cfg.batch_size, device=st.device,
                                l1=p.lomp_l1, l1_scope=cfg.l1_scope, seed=st.cell.seed,
                                **limit.epsilon_recipe(p.epsilon_source))


def _limit_extras(st: TrialState, weights: dict[str, torch.Tensor], spectrum: SLQResult, eps: float,
                  predicted: float) -> None:
    """The cheap analyses of a limit cell (pruning.limit_analyses), on the unpruned LOMP model.

    Effective terms (ours): global magnitude pruning disconnects weights at high sparsity, so each
    mask of the curve, and the masks at the predicted and the actual limits, get their effective
    sparsity (one linearized pass each, `pruning.sparsity`). Scaling: s* for the weights × 1…5 with
    the spectrum held fixed (factor 1 is the trials row's s*). Weights: fixed-bin log10|w| histograms.
    """
    p, t0 = st.limit, time.perf_counter()
    order = MagnitudeOrder(weights)
    evaluator = EffectiveMaskEvaluator(st.model, input_shape=st.train_split.input_shape, dtype=torch.float32)
    effective = {}
    for row in st.tables["curves"]:
        s = row["removed_frac"]
        effective[s] = row["effective_sparsity"] = evaluator.effective_sparsity(order.masks(s))
        row["effective_compression"] = masks.compression(row["effective_sparsity"])
    st.row["predicted_effective_removed_frac"] = evaluator.effective_sparsity(order.masks(predicted))
    for rule in limit.LIMIT_RULES:
        st.row[f"actual_effective_removed_frac_{rule}"] = effective[st.row[f"actual_removed_frac_{rule}"]]
    st.tables["scaling"] = limit_analyses.scaling_rows(weights, spectrum, eps, p.eigen_policy, zero_tol=p.zero_tol)
    st.tables["weights"] = limit_analyses.weight_histogram_rows(weights)
    st.seconds["prune_seconds"] += time.perf_counter() - t0


def _hvp_backend(st: TrialState, model: nn.Module) -> Any:
    """The Hessian operator of `model` on the SLQ data (the backend's factory's, or a local one)."""
    loss_fn, data = torch.nn.functional.cross_entropy, _slq_split(st)
    if st.hvp_backend_factory is not None:
        return st.hvp_backend_factory(model=model, loss_fn=loss_fn, data=data, device=st.device)
    return LocalHVPBackend(model, loss_fn, data, device=st.device)


def step_hessian_rows(st: TrialState) -> None:
    """Exact Hessian rows of the LOMP model at `prune.row_norm_quantiles` quantiles of |w| (the
    paper's appendix): one HVP with a unit vector per chosen weight, 8 per data pass."""
    k = st.limit.row_norm_quantiles
    if not k:
        return
    t0 = time.perf_counter()
    with restoring(st.model):
        st.tables["hessian_rows"] = limit_analyses.hessian_row_rows(st.model, _hvp_backend(st, st.model), k)
    st.seconds["hessian_seconds"] += time.perf_counter() - t0


def step_rounds(st: TrialState) -> None:
    """Iterative pruning (`prune.limit_rounds` = k): round 1 is the cell's single-round limit; each
    next round prunes a copy of the model to the previous round's predicted fraction by global
    magnitude among the survivors (`next_round_masks`: a subset of the previous mask), retrains it
    under the mask with the cell's LOMP recipe, and measures ε, the SLQ of the masked model (pruned
    weights are zero rows: deflated into the zero mass), the prediction and the one-shot curve.

    Fractions are of all prunable weights, the already pruned ones included; a round's curve starts
    at its own pruned fraction (its reference accuracy), then the grid's larger fractions. The copy
    keeps the trials row about the unpruned LOMP model. A diverged retraining ends the rounds (its
    row says so).
    """
    p, row = st.limit, st.row
    accs0 = {c["removed_frac"]: c["test_acc"] for c in st.tables["curves"]}[0.0]
    rounds = [{"round": 1, "status": "ok", "removed_frac_before": 0.0, "dense_test_acc": accs0,
               "epsilon": row["epsilon"], "zero_mass": row["zero_mass"],
               **{k: row[k] for k in ("predicted_removed_frac", "predicted_kept_frac", "predicted_unresolved",
                                      "actual_removed_frac_strict", "actual_removed_frac_tol")}}]
    st.tables["rounds"] = rounds
    if p.limit_rounds == 1:
        return
    model = copy.deepcopy(st.model)
    weights = masks.weights(model)
    kept = masks.get_masks(model)
    for r in range(2, p.limit_rounds + 1):
        kept = next_round_masks(weights, kept, rounds[-1]["predicted_removed_frac"])
        before = masks.direct_sparsity(kept)
        masks.apply_masks(model, kept)
        trained = train(model, st.train_split, st.test_split, st.cell.train, device=st.device,
                        seed=st.cell.seed, on_epoch=_reporter(st, f"round{r}"))
        st.tables["epochs"] += _epoch_rows(f"round{r}", trained.epochs)
        st.seconds["train_seconds"] += trained.seconds
        if trained.status == "diverged":
            rounds.append({"round": r, "status": "diverged", "removed_frac_before": before})
            return
        eps = _epsilon(st, model)
        t0 = time.perf_counter()
        spectrum = _run_slq(st, model)
        st.seconds["hessian_seconds"] += time.perf_counter() - t0
        weights = masks.weights(model)
        t0 = time.perf_counter()
        prediction = limit.predict_limit(weights, spectrum, eps, policy=p.eigen_policy,
                                         epsilon_source=row["epsilon_source"], zero_tol=p.zero_tol)
        frozen = copy.deepcopy(model)
        masks.remove_masks(frozen)  # pruned weights are plain zeros: the curve's masks cannot revive them
        # the round's model itself (its pruned fraction) is the reference; grid points below it are that model
        grid = sorted({before, *(s for s in p.limit_grid if s > before)})
        accs, _, _ = pruning_curve(frozen, st.train_split, st.test_split, grid, device=st.device)
        actual = limit.actual_limit(grid, accs, accs[0], tolerance_pp=p.limit_tolerance_pp)
        st.seconds["prune_seconds"] += time.perf_counter() - t0
        rounds.append({"round": r, "status": "ok", "removed_frac_before": before, "dense_test_acc": accs[0],
                       "epsilon": eps, "zero_mass": spectrum.zero_mass,
                       "predicted_removed_frac": prediction.removed_frac, "predicted_kept_frac": prediction.kept_frac,
                       "predicted_unresolved": prediction.unresolved,
                       "actual_removed_frac_strict": actual.removed_frac_strict,
                       "actual_removed_frac_tol": actual.removed_frac_tol})


STEPS: dict[str, Callable[[TrialState], None]] = {
    "seed": step_seed,
    "data": step_data,
    "model": step_model,
    "obtain": step_obtain,
    "sparsity": step_sparsity,
    "hessian": step_hessian,
    "limit": step_limit,
    "hessian_rows": step_hessian_rows,
    "rounds": step_rounds,
}

PIPELINES: dict[str, tuple[str, ...]] = {
    "point": ("seed", "data", "model", "obtain", "sparsity", "hessian"),
    "limit": ("seed", "data", "model", "limit", "hessian_rows", "rounds", "sparsity"),
}


# ----------------------------------------------------------------------------- entry point


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, at most ERROR_MAX characters."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= ERROR_MAX else line[: ERROR_MAX - 1] + "…"


def identity_columns(cell: Cell) -> dict[str, Any]:
    return {"cell_id": cell.cell_id, "sweep": cell.sweep, "kind": cell.kind, "model": cell.model,
            "dataset": cell.dataset, "pruner": cell.pruner, "target": cell.target,
            "sparsity": cell.sparsity, "seed": cell.seed,
            "config": json.dumps(cell.config(), sort_keys=True)}


def run_steps(cell: Cell, where: Where, steps: tuple[str, ...], *, device: str = "cpu") -> TrialState:
    """Run `steps` of the pipeline for `cell` here and return the state; nothing is written.

    What `prunetune prune` uses to prune one model exactly as a sweep's cell would (the dense
    cache under `where.storage` is the only thing that touches storage). Errors propagate.
    """
    st = TrialState(cell=cell, where=where, device=device, report=None, hvp_backend_factory=None)
    for name in steps:
        STEPS[name](st)
    return st


def run_cell(cell: Cell, where: Where, *, device: str = "cpu", report: Report | None = None,
             hvp_backend_factory: Callable[..., Any] | None = None, backend: str = "serial") -> dict[str, Any]:
    """Run one cell end to end and write its tables (trials last); returns the trials row.

    Never raises for a problem of the cell itself (that becomes status "failed"); interrupts
    (KeyboardInterrupt, SIGKILL) leave no trials file, so the cell is redone by the next run.
    """
    started = provenance.utc_now()
    t0 = time.perf_counter()
    st = TrialState(cell=cell, where=where, device=device, report=report,
                    hvp_backend_factory=hvp_backend_factory)
    st.row.update(identity_columns(cell))
    status, error = "ok", None
    try:
        for name in PIPELINES[cell.kind]:
            STEPS[name](st)
    except Diverged as e:
        status = "diverged"
        log.warning("cell %s diverged: %s", cell.cell_id, e)
        _try_sparsity(st)
    except Exception as e:  # a cell's own failure is recorded, never fatal to the sweep
        status, error = "failed", one_line(e)
        log.warning("cell %s failed: %s", cell.cell_id, error)
        log.debug("traceback of cell %s", cell.cell_id, exc_info=True)
        _try_sparsity(st)
    st.row.update(st.seconds)
    st.row.update(status=status, error=error, total_seconds=time.perf_counter() - t0,
                  started_at=started, finished_at=provenance.utc_now(),
                  **provenance.provenance(device, backend))
    for rows in st.tables.values():
        for r in rows:
            r.update(cell_id=cell.cell_id, sweep=cell.sweep)
    row = {k: _finite_or_none(v) if k.endswith("_acc") else v for k, v in st.row.items()}
    store.write_cell(where.storage, cell.sweep, cell.cell_id, {**st.tables, "trials": [row]})
    return row


def _finite_or_none(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def _try_sparsity(st: TrialState) -> None:
    """After a divergence or failure, still record the sparsity when masks exist (best effort)."""
    if st.model is None or "direct_sparsity" in st.row:
        return
    try:
        STEPS["sparsity"](st)
    except Exception:  # the original error is what matters; this is only extra information
        log.debug("no sparsity report for %s", st.cell.cell_id, exc_info=True)
