"""What the point and limit pipelines share: the state of one running cell, its training, the
dense-model cache, SLQ, and the steps every cell starts and ends with (seed, data, model, sparsity).

The pipelines themselves read top to bottom in `sweeps/trial_point.py` and `sweeps/trial_limit.py`;
`sweeps/trial.py` names their steps and runs a cell. Time goes to one `Clock` per cell (phases are
exclusive, so they never add up to more than the cell's wall time).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pruning import data as data_lib
from pruning import masks, models
from pruning.clock import Clock
from pruning.data import Split
from pruning.hvp import LocalHVPBackend
from pruning.lomp import limit_iterations
from pruning.slq import SLQResult, slq
from pruning.sparsity import sparsity_report
from pruning.train import TrainConfig, TrainResult, seed_everything, train
from sweeps.dense_cache import DENSE_ITEM, DenseCache, dense_fields, key_of
from sweeps.cells import Cell, LimitPrune, PointPrune, hashed_config

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any]], None]
AUTO_CHECK_EVERY = 16  # iterations: auto asks whether s* is resolved every this many Lanczos steps


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
    prune_result: Any = None  # a point cell's `pruning.pruners.PruneResult` (None for dense)
    limit_round: Any = None  # a limit cell's round 1 (`pruning.lomp.LimitRound`), for its later rounds
    clock: Clock = field(default_factory=Clock)

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

    def progress(self, **values: Any) -> None:
        """Tell the backend where a long cell is (a phase and its numbers); nothing without one."""
        if self.report is not None:
            self.report({"cell_id": self.cell.cell_id, **values})


# ----------------------------------------------------------------------------- training


def epoch_rows(phase: str, epochs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")
    return [{"phase": phase, **{k: e.get(k) for k in keep}} for e in epochs]


def reporter(st: TrialState, phase: str) -> Callable[[dict[str, Any]], None] | None:
    """The per-epoch callback of a training phase: forwards plain metrics to `report`."""
    if st.report is None:
        return None

    def on_epoch(record: dict[str, Any]) -> None:
        st.progress(phase=phase, **{k: v for k, v in record.items() if isinstance(v, (int, float, str))})

    return on_epoch


def set_metrics(row: dict[str, Any], r: TrainResult | dict[str, Any]) -> None:
    for k in ("test_acc", "test_loss", "train_acc", "train_loss"):
        v = getattr(r, k, None) if not isinstance(r, dict) else r.get(k)
        row[k] = None if v is None else float(v)


def train_phase(st: TrialState, model: nn.Module, cfg: TrainConfig, phase: str, *,
                metrics: bool = True) -> TrainResult:
    """Train with per-epoch reporting, timed as "train"; records epochs rows (and, with `metrics`,
    the row's accuracy and loss); raises Diverged on NaN/inf."""
    with st.clock("train"):
        result = train(model, st.train_split, st.test_split, cfg, device=st.device, seed=st.cell.seed,
                       on_epoch=reporter(st, phase))
    st.tables["epochs"] += epoch_rows(phase, result.epochs)
    if metrics:
        set_metrics(st.row, result)
    if result.status == "diverged":
        raise Diverged(f"{phase} training diverged (NaN/inf loss)")
    return result


# ----------------------------------------------------------------------------- the dense cache


def build(st: TrialState) -> nn.Module:
    """The cell's model, untrained (its initialization follows the RNG state)."""
    return models.build(st.cell.model, input_shape=st.train_split.input_shape,
                        num_classes=st.train_split.num_classes, variant=st.cell.model_variant)


def _dense_fields(cell: Cell) -> dict[str, Any]:
    hashed = hashed_config(cell)
    return dense_fields(model=cell.model, dataset=cell.dataset, data_options=hashed["data"], seed=cell.seed,
                        train=hashed["train"], model_variant=hashed.get("model_variant"))


def dense_entry(st: TrialState) -> dict[str, Any]:
    """The trained dense model of this cell's model/data/seed/train config, from the cache.

    Trains it from the cell's seeded initialization (once per key across all processes sharing
    the storage) on a miss, timed as this cell's "train" (a hit costs only the load: the time was
    spent, and counted, by the cell that trained it); `cell.train` already holds LOMP's recipe for
    an L1-trained cell. The entry holds `state` (state_dict), `metrics` (of the dense model, its
    training time among them) and `epochs`; `use_dense` records them in the cell.
    """
    cfg = st.cell.train
    fields_ = _dense_fields(st.cell)
    st.dense_key = key_of(fields_)

    def compute() -> dict[str, Any]:
        net = build(st)
        net.load_state_dict(st.init_state)
        phase = "lomp" if cfg.l1 else "dense"
        r = train(net, st.train_split, st.test_split, cfg, device=st.device, seed=st.cell.seed,
                  on_epoch=reporter(st, phase))
        metrics = {"status": r.status, "seconds": float(r.seconds), "batch_losses": list(r.batch_losses)}
        for k in ("test_acc", "test_loss", "train_acc", "train_loss"):
            metrics[k] = float(getattr(r, k))
        return {"state": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "metrics": metrics, "epochs": epoch_rows(phase, r.epochs)}

    with st.clock("train"):
        entry, _ = DenseCache(st.where.storage).get_or_compute(st.dense_key, DENSE_ITEM, compute, describe=fields_)
    st.row["dense_test_acc"] = entry["metrics"]["test_acc"]
    return entry


def use_dense(st: TrialState, entry: dict[str, Any]) -> None:
    """Start the cell from the trained dense model: its weights, epochs and metrics."""
    st.tables["epochs"] += entry["epochs"]
    set_metrics(st.row, entry["metrics"])
    if entry["metrics"]["status"] == "diverged":
        raise Diverged("dense training diverged (NaN/inf loss)")
    masks.load_state_dict(st.model, entry["state"])
    st.model.to(st.device)


# ----------------------------------------------------------------------------- SLQ


def slq_split(st: TrialState) -> Split:
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


def hvp_backend(st: TrialState, model: nn.Module) -> Any:
    """The Hessian operator of `model` on the SLQ data (the backend's factory's, or a local one)."""
    loss_fn, data = torch.nn.functional.cross_entropy, slq_split(st)
    if st.hvp_backend_factory is not None:
        return st.hvp_backend_factory(model=model, loss_fn=loss_fn, data=data, device=st.device)
    return LocalHVPBackend(model, loss_fn, data, device=st.device)


def run_slq(st: TrialState, model: nn.Module, until: Callable[[SLQResult], bool] | None = None) -> SLQResult:
    """SLQ of the mean training loss of `model` (local HVPs, or the backend's factory's).

    `iterations: auto`: from the authors' depth for the model, `until` asked every
    AUTO_CHECK_EVERY steps, up to `max_iterations`; every check is reported as progress."""
    h = st.cell.hessian
    backend = None
    if st.hvp_backend_factory is not None:
        backend = hvp_backend(st, model)
    data = slq_split(st)
    if not h.adaptive:
        return slq(model, torch.nn.functional.cross_entropy, data, probes=h.probes, iterations=h.iterations,
                   seed=st.cell.seed, backend=backend, device=st.device)

    def checked(partial: SLQResult) -> bool:
        done = until is None or until(partial)
        st.progress(phase="slq", slq_iteration=partial.iterations, slq_max_iterations=h.max_iterations,
                    slq_resolved=done)
        return done

    return slq(model, torch.nn.functional.cross_entropy, data, probes=h.probes, iterations=h.max_iterations,
               seed=st.cell.seed, backend=backend, device=st.device, until=checked,
               min_iterations=limit_iterations(st.cell.model), check_every=AUTO_CHECK_EVERY)


def record_slq(st: TrialState, r: SLQResult, which: str) -> None:
    """spectra rows of one SLQ run and its trials summary (the last recorded one wins)."""
    st.tables["spectra"] += [{"hessian_model": which, **row} for row in r.spectra_rows()]
    st.row.update(r.summary())
    st.row["slq_max_iterations"] = r.info.get("max_iterations")
    st.row["hessian_model"] = which


def dense_slq(st: TrialState, until: Callable[[SLQResult], bool] | None = None,
              stop_key: dict[str, Any] | None = None) -> SLQResult:
    """The dense model's SLQ, cached beside its checkpoint (keyed by the SLQ settings and, for an
    adaptive depth, `stop_key`: what its stopping rule depends on besides the model).

    Timed as "hessian" when computed here; a cached result is loaded, not recomputed."""
    if st.dense_key is None:  # a pruner at init: the dense reference is the dense-trained model
        dense_entry(st)
    cache = DenseCache(st.where.storage)
    entry = cache.load(st.dense_key, DENSE_ITEM)
    h = {k: v for k, v in st.cell.hessian.layout().items() if k != "models"}
    if st.cell.hessian.adaptive:
        h["stop"] = stop_key or {}
    item = f"slq-{key_of({**h, 'seed': st.cell.seed})}.pt"

    def compute() -> dict[str, Any]:
        dense = build(st)
        masks.load_state_dict(dense, entry["state"])
        return slq_to_plain(run_slq(st, dense.to(st.device), until))

    with st.clock("hessian"):
        value, fresh = cache.get_or_compute(st.dense_key, item, compute)
    result = slq_from_plain(value)
    return result if fresh else dataclasses.replace(result, seconds=0.0)  # time spent in this cell


# ----------------------------------------------------------------------------- shared steps


def step_seed(st: TrialState) -> None:
    """Seed every RNG from the cell (first thing, never from the driver)."""
    seed_everything(st.cell.seed)


def step_data(st: TrialState) -> None:
    """Load the splits; the split itself is fixed by the loader option `seed`, not the cell seed."""
    st.train_split, st.test_split = data_lib.load(st.cell.dataset, root=st.where.data_root, **st.cell.data)


def step_model(st: TrialState) -> None:
    """Build the model at its seeded initialization and remember that state (for rewinding)."""
    seed_everything(st.cell.seed)
    st.model = build(st)
    st.init_state = copy.deepcopy(st.model.state_dict())
    st.row["n_params"] = models.count_parameters(st.model)


def step_sparsity(st: TrialState) -> None:
    """Direct and effective sparsity of the final masks, and the per-layer rows."""
    with st.clock("prune"):
        report = sparsity_report(st.model)
    st.row.update(report.trial_columns())
    st.tables["layers"] = report.layer_rows()
