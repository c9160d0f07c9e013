"""The point pipeline: one pruner at one sparsity, read top to bottom.

    seed → data → model → obtain (prune at init + train, or the dense model from the cache + prune +
    what the protocol says) → sparsity report → SLQ of the dense and/or pruned model (optional)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pruning import masks
from pruning.pruners import PRUNERS, PruneResult, prune
from pruning.train import TrainResult, evaluate, train
from sweeps.dense_cache import DenseCache
from sweeps.trial_common import (
    Diverged, TrialState, build, dense_entry, dense_slq, record_slq, run_slq, train_phase, use_dense,
)


def step_obtain(st: TrialState) -> None:
    """Produce the final model of a point cell, as the pruner's `when` and the protocol say."""
    cell = st.cell
    if cell.pruner == "dense":
        use_dense(st, dense_entry(st))
        return
    if PRUNERS[cell.pruner].when == "init":
        st.model.to(st.device)
        _prune(st)
        if cell.pruner in FINETUNE_NAMED:
            st.row["finetune_recipe"] = finetune_recipe(st)
        _after_prune(st, rewind_to=st.init_state)  # "train" (the default) and "rewind" coincide at init
        return
    use_dense(st, dense_entry(st))
    extra, rewind_to = ({}, st.init_state) if cell.pruner != "imp" else _imp_options(st)
    _prune(st, **extra)
    _after_prune(st, rewind_to=rewind_to)


# Pruners whose rows name the recipe that trained their mask: Rare Gems' own paper fine-tunes with its
# own recipe, a sweep with the cell's `train` section, and a comparison must say which it was.
FINETUNE_NAMED = ("rare_gems",)


def finetune_recipe(st: TrialState) -> str:
    """`protocol: the training recipe` of what follows pruning, e.g. `train: SGD lr 0.1 cosine, …`."""
    protocol = st.cell.protocol
    if protocol == "none":
        return "none: no training after pruning"
    cfg = st.train_config(epochs=st.point.finetune_epochs, iterations=None) if protocol == "finetune" \
        else st.cell.train
    biases = "" if st.point.options.get("bias", True) else "; bias-free (biases zeroed and frozen)"
    return f"{protocol}: {cfg.describe()} (the cell's train section){biases}"


def _prune(st: TrialState, **extra: Any) -> PruneResult:
    """Apply the cell's pruner through `pruning.pruners.prune` (masks land on the model); timed as
    "prune" (IMP's training inside it is timed as "train")."""
    cell = st.cell
    data = st.train_split if PRUNERS[cell.pruner].needs_data else None
    with st.clock("prune"):
        st.prune_result = prune(st.model, cell.pruner, cell.sparsity, target=cell.target, data=data,
                                seed=cell.seed, **st.point.options, **extra)
    return st.prune_result


def _after_prune(st: TrialState, *, rewind_to: dict[str, torch.Tensor]) -> None:
    """What follows pruning: none (evaluate) | finetune (a few epochs) | rewind (to `rewind_to`,
    then full training) | train (full training from the current weights)."""
    protocol = st.cell.protocol
    if protocol == "none":
        st.row["test_loss"], st.row["test_acc"] = evaluate(st.model, st.test_split, device=st.device)
        st.row["train_loss"], st.row["train_acc"] = evaluate(st.model, st.train_split, device=st.device)
        return
    if protocol == "finetune":
        train_phase(st, st.model, st.train_config(epochs=st.point.finetune_epochs, iterations=None), "finetune")
        return
    if protocol == "rewind":
        masks.copy_weights(st.model, rewind_to)
    train_phase(st, st.model, st.train_config(), "sparse")


def _imp_options(st: TrialState) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """IMP trains between its rounds (our training, epochs of phase "sparse") and rewinds its
    survivors where the protocol's rewind will (late rewinding)."""
    def train_fn(model: nn.Module) -> TrainResult:
        return train_phase(st, model, st.train_config(), "sparse")

    rewind = _rewind_state(st)
    return {"train_fn": train_fn, "rewind_state": rewind}, rewind


def _rewind_state(st: TrialState) -> dict[str, torch.Tensor]:
    """Where IMP's survivors rewind to: the dense run's weights after `rewind_iteration` optimizer
    steps (late rewinding), or the initialization for 0. Cached beside the dense model: the same
    seeded run, stopped at nothing, with a copy taken at step k."""
    k = st.point.rewind_iteration
    if not k:
        return st.init_state

    def compute() -> dict[str, Any]:
        net = build(st)
        net.load_state_dict(st.init_state)
        r = train(net, st.train_split, None, st.cell.train, device=st.device, seed=st.cell.seed, snapshot_at=k)
        if r.snapshot is None:
            raise Diverged(f"dense training diverged before rewind_iteration {k}")
        return {"state": {name: v.detach().cpu() for name, v in r.snapshot.items()}}

    with st.clock("train"):
        entry, _ = DenseCache(st.where.storage).get_or_compute(st.dense_key, f"rewind-{k}.pt", compute)
    return entry["state"]


def step_hessian(st: TrialState) -> None:
    """SLQ of the dense model (cached with it) and/or the pruned one, as `hessian.models` says.

    With `both`, the trials summary describes the pruned model; spectra keep both.
    """
    h = st.cell.hessian
    if h is None:
        return
    if h.models in ("dense", "both"):
        record_slq(st, dense_slq(st), "dense")
    if h.models in ("pruned", "both"):
        with st.clock("hessian"):
            spectrum = run_slq(st, st.model)
        record_slq(st, spectrum, "pruned")


STEPS = {"obtain": step_obtain, "hessian": step_hessian}
