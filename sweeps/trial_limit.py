"""The limit pipeline (docs/algorithms.md §7), read top to bottom.

    seed → data → model → limit (the LOMP model from the dense cache → `pruning.lomp.limit_round`:
    ε, the dense SLQ, the predicted limit, the one-shot curve, the actual limit by every rule; then
    the cheap extras: effective terms, weight scaling, |w| histograms) → Hessian rows (optional) →
    iterative rounds (optional: prune to the last prediction, L1-retrain under the mask, one more
    `limit_round`) → sparsity report

The trials row describes the unpruned LOMP model and its round-1 limit; the curve rows the pruned
ones; the rounds table every round.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pruning import limit, limit_analyses, masks
from pruning.hvp import restoring
from pruning.limit_analyses import MagnitudeOrder, next_round_masks
from pruning.lomp import LimitRound, limit_round
from pruning.slq import SLQResult
from pruning.sparsity import EffectiveMaskEvaluator
from sweeps.trial_common import (
    Diverged, TrialState, dense_entry, dense_slq, hvp_backend, record_slq, run_slq, train_phase, use_dense,
)


def _round(st: TrialState, model: nn.Module, spectrum: Callable[[nn.Module, Callable[[SLQResult], bool]], SLQResult],
           start: float = 0.0) -> LimitRound:
    """`limit_round` with this cell's rule, LOMP's λ and ε recipe, seed, device and clock."""
    p, cfg = st.limit, st.cell.train
    return limit_round(model, st.train_split, st.test_split, p.rule(), spectrum=spectrum, l1=p.lomp_l1,
                       l1_scope=cfg.l1_scope, batch_size=cfg.batch_size, seed=st.cell.seed, start=start,
                       device=st.device, clock=st.clock)


def step_limit(st: TrialState) -> None:
    """Round 1 on the LOMP model of the dense cache (shared with point cells of the `lomp` pruner);
    its SLQ is cached beside it (keyed by the SLQ settings and, for `iterations: auto`, by what
    the stopping rule reads) and may use the backend's distributed HVPs."""
    p = st.limit
    use_dense(st, dense_entry(st))
    stop_key = {k: p.layout()[k] for k in ("eigen_policy", "zero_tol", "resolution_tol", "epsilon", "epsilon_source")}
    result = _round(st, st.model, lambda _model, until: dense_slq(st, until, stop_key))
    st.limit_round = result
    record_slq(st, result.spectrum, "dense")
    st.row.update(limit.limit_columns(result.prediction, result.actual))
    st.row["lomp_l1"] = p.lomp_l1
    st.tables["curves"] = result.curve
    _limit_extras(st, result)
    st.progress(phase="limit", predicted_removed_frac=result.prediction.removed_frac,
                actual_removed_frac_strict=result.actual.removed_frac_strict,
                actual_removed_frac_loss=result.actual.removed_frac_loss, slq_iterations=result.spectrum.iterations)


def _limit_extras(st: TrialState, result: LimitRound) -> None:
    """The cheap analyses of a limit cell (pruning.limit_analyses), on the unpruned LOMP model.

    Effective terms (ours): global magnitude pruning disconnects weights at high sparsity, so each
    mask of the curve, and the masks at the predicted and the actual limits, get their effective
    sparsity (one linearized pass each, `pruning.sparsity`). Scaling: s* for the weights × 1…5 with
    the spectrum held fixed (factor 1 is the trials row's s*). Weights: fixed-bin log10|w| histograms.
    """
    p, weights, spectrum, eps = st.limit, result.weights, result.spectrum, result.epsilon
    with st.clock("limit"):
        order = MagnitudeOrder(weights)
        evaluator = EffectiveMaskEvaluator(st.model, input_shape=st.train_split.input_shape, dtype=torch.float32)
        effective = {}
        for row in st.tables["curves"]:
            s = row["removed_frac"]
            effective[s] = row["effective_sparsity"] = evaluator.effective_sparsity(order.masks(s))
            row["effective_compression"] = masks.compression(row["effective_sparsity"])
        predicted = result.prediction.removed_frac  # None: refused (drop where ill posed)
        st.row["predicted_effective_removed_frac"] = (
            None if predicted is None else evaluator.effective_sparsity(order.masks(predicted)))
        for rule in limit.LIMIT_RULES:
            st.row[f"actual_effective_removed_frac_{rule}"] = effective[result.actual.removed_frac(rule)]
        st.tables["scaling"] = [] if predicted is None else limit_analyses.scaling_rows(
            weights, spectrum, eps, p.eigen_policy, zero_tol=p.zero_tol)
        st.tables["weights"] = limit_analyses.weight_histogram_rows(weights)


def step_hessian_rows(st: TrialState) -> None:
    """Exact Hessian rows of the LOMP model at `prune.row_norm_quantiles` quantiles of |w| (the
    paper's appendix): one HVP with a unit vector per chosen weight, 8 per data pass."""
    k = st.limit.row_norm_quantiles
    if not k:
        return
    with st.clock("hessian"), restoring(st.model):
        st.tables["hessian_rows"] = limit_analyses.hessian_row_rows(st.model, hvp_backend(st, st.model), k)


def _round_row(r: int, before: float, result: LimitRound) -> dict[str, Any]:
    pred, actual = result.prediction, result.actual
    return {"round": r, "status": "ok", "removed_frac_before": before, "dense_test_acc": result.reference_acc,
            "epsilon": result.epsilon, "zero_mass": result.spectrum.zero_mass,
            "slq_iterations": result.spectrum.iterations,
            "predicted_removed_frac": pred.removed_frac, "predicted_kept_frac": pred.kept_frac,
            "predicted_unresolved": pred.unresolved,
            **{f"actual_removed_frac_{rule}": actual.removed_frac(rule) for rule in limit.LIMIT_RULES}}


def step_rounds(st: TrialState) -> None:
    """Iterative pruning (`prune.limit_rounds` = k): round 1 is the cell's single-round limit; each
    next round prunes a copy of the model to the previous round's predicted fraction by global
    magnitude among the survivors (`next_round_masks`: a subset of the previous mask), retrains it
    under the mask with the cell's LOMP recipe, and runs `limit_round` on it: ε, the SLQ of the
    masked model (pruned weights are zero rows: deflated into the zero mass), the prediction and
    the one-shot curve from its own pruned fraction (its reference accuracy) to the grid's larger
    fractions.

    Fractions are of all prunable weights, the already pruned ones included. The copy keeps the
    trials row about the unpruned LOMP model. A diverged retraining ends the rounds (its row says so),
    and so does a refused prediction (status "refused": there is no fraction to prune to).
    """
    p = st.limit
    rounds = [_round_row(1, 0.0, st.limit_round)]
    st.tables["rounds"] = rounds
    model = copy.deepcopy(st.model)
    weights = st.limit_round.weights
    kept = masks.get_masks(model)
    for r in range(2, p.limit_rounds + 1):
        if rounds[-1]["predicted_removed_frac"] is None:
            rounds.append({"round": r, "status": "refused", "removed_frac_before": rounds[-1]["removed_frac_before"]})
            return
        kept = next_round_masks(weights, kept, rounds[-1]["predicted_removed_frac"])
        before = masks.direct_sparsity(kept)
        masks.apply_masks(model, kept)
        try:
            train_phase(st, model, st.cell.train, f"round{r}", metrics=False)
        except Diverged:
            rounds.append({"round": r, "status": "diverged", "removed_frac_before": before})
            return
        result = _round(st, model, lambda m, until: run_slq(st, m, until), start=before)
        weights = result.weights
        rounds.append(_round_row(r, before, result))


STEPS = {"limit": step_limit, "hessian_rows": step_hessian_rows, "rounds": step_rounds}
