"""The central Parquet schemas: one per table, used by every writer and reader.

Why here and torch/Ray-free: the sweep engine writes these tables and `analysis` reads them; both
import this one module so a column is spelled the same in the store, the tables and the plots.

Layout of a sweep in a storage root (local path or pyarrow.fs URI):

    <storage>/<sweep>/spec.yaml                    the resolved spec, written at start
    <storage>/<sweep>/<table>/<cell_id>.parquet    one file per cell and table, written atomically
    <storage>/_cache/...                           dense checkpoints and their SLQ, shared by sweeps

Hidden names (a leading '.' or '_') are temp files or caches and are never results.
New columns may be added (always nullable); readers fill missing ones with nulls. A column is
renamed only when its name claimed something false, and then `RENAMED` maps the old name to the new
one, so readers show files of either age under the new name.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

TABLES = ("trials", "layers", "spectra", "curves", "epochs", "weights", "scaling", "hessian_rows", "rounds")

# old column name → new name (the Gauss–Radau s* is a diagnostic, not the end of a guaranteed bracket)
RENAMED = {"predicted_removed_frac_radau": "predicted_removed_frac_radau_rule"}

_TS = pa.timestamp("us", tz="UTC")

TRIALS = pa.schema(
    [
        # identity and the cell's axes
        ("cell_id", pa.string()),            # hash of the resolved cell config
        ("sweep", pa.string()),              # sweep name
        ("kind", pa.string()),               # "point" (one sparsity) | "limit" (a curve over a grid)
        ("model", pa.string()),
        ("dataset", pa.string()),
        ("pruner", pa.string()),             # registry name, e.g. "random/igq", "magnitude/global"
        ("target", pa.string()),             # "direct" | "effective": which sparsity `sparsity` targets
        ("sparsity", pa.float64()),          # the requested (target) sparsity of this cell
        ("seed", pa.int64()),
        ("config", pa.string()),             # the full resolved cell config as JSON
        # outcome
        ("status", pa.string()),             # "ok" | "diverged" | "failed"
        ("error", pa.string()),              # one-line error for failed cells, else null
        # sparsity (docs/algorithms.md §1); compression is inf for a disconnected net
        ("n_prunable", pa.int64()),
        ("n_params", pa.int64()),
        ("direct_sparsity", pa.float64()),
        ("effective_sparsity", pa.float64()),
        ("direct_compression", pa.float64()),
        ("effective_compression", pa.float64()),
        # accuracy and loss of the final (pruned, trained) model
        ("test_acc", pa.float64()),
        ("test_loss", pa.float64()),
        ("train_acc", pa.float64()),
        ("train_loss", pa.float64()),
        ("dense_test_acc", pa.float64()),    # the dense reference model of the same cell, if any
        # timings in seconds
        ("train_seconds", pa.float64()),
        ("prune_seconds", pa.float64()),
        ("hessian_seconds", pa.float64()),
        ("total_seconds", pa.float64()),
        # SLQ summary (of the model named in hessian_model), null when no SLQ ran
        ("hessian_model", pa.string()),      # "dense" | "pruned"
        ("slq_probes", pa.int64()),
        ("slq_iterations", pa.int64()),
        ("slq_dim", pa.int64()),
        ("hessian_trace", pa.float64()),     # estimate of tr(H)
        ("hessian_lambda_max", pa.float64()),
        ("hessian_lambda_min", pa.float64()),
        ("zero_mass", pa.float64()),         # fraction q of deflated zero-curvature directions
        # pruning limit (kind == "limit"); removed_frac and kept_frac are always both stored
        ("lomp_l1", pa.float64()),
        ("epsilon", pa.float64()),
        ("epsilon_source", pa.string()),     # "batch_loss_std" | "batch_loss_std_authors" | "given"
        ("eigen_policy", pa.string()),       # "abs" | "drop" | "flat"
        ("predicted_removed_frac", pa.float64()),
        ("predicted_kept_frac", pa.float64()),
        ("band_kept_frac_low", pa.float64()),    # kinematic band (our derivation), kept fraction
        ("band_kept_frac_high", pa.float64()),
        ("trace_bound_removed_frac", pa.float64()),  # Jensen bound (our derivation)
        ("actual_removed_frac_strict", pa.float64()),
        ("actual_kept_frac_strict", pa.float64()),
        ("actual_removed_frac_tol", pa.float64()),
        ("actual_kept_frac_tol", pa.float64()),
        ("limit_tolerance_pp", pa.float64()),    # tolerance of the "tol" rule, percentage points
        # provenance
        ("prunetune_version", pa.string()),
        ("git_commit", pa.string()),
        ("torch_version", pa.string()),
        ("ray_version", pa.string()),
        ("device", pa.string()),
        ("host", pa.string()),
        ("backend", pa.string()),            # "serial" | "ray"
        ("started_at", _TS),
        ("finished_at", _TS),
        ("schema_version", pa.int32()),
        # added after version 1 (nullable; older files read back with nulls)
        # how far the predicted limit is resolved (pruning.limit.predict_limit)
        ("predicted_removed_frac_radau_rule", pa.float64()),  # s* by the Gauss–Radau rule: a diagnostic, not a bound
        ("predicted_removed_frac_se", pa.float64()),     # jackknife standard error of s* over probes
        ("predicted_resolution_tol", pa.float64()),      # the tolerance of predicted_unresolved
        ("predicted_unresolved", pa.bool_()),            # spread or 2·SE > tolerance, or drop ill posed
        ("zero_curvature_tol", pa.float64()),            # |θ| ≤ this is zero curvature (absolute)
        # the limits in effective terms (ours): effective sparsity of the global-magnitude mask at
        # the predicted and at the actual removed fractions (disconnected weights counted as removed)
        ("predicted_effective_removed_frac", pa.float64()),
        ("actual_effective_removed_frac_strict", pa.float64()),
        ("actual_effective_removed_frac_tol", pa.float64()),
        # the converged limit: resolution over the last quarter of the Lanczos run, adaptive depth,
        # the theory's loss criterion and the authors' estimator (s*(m/2), the column
        # predicted_removed_frac_half_iters of older files, is no longer written: not a convergence test)
        ("predicted_removed_frac_spread", pa.float64()),  # max − min of s*(k), k = ⌈3m/4⌉ … m
        ("predicted_removed_frac_authors", pa.float64()),  # the authors' estimator on probe 0 (128 steps)
        ("predicted_negative_share", pa.float64()),  # G at R(s*) from negative curvature (what drop removes)
        ("predicted_note", pa.string()),     # one line when the prediction is ill posed
        ("slq_max_iterations", pa.int64()),  # the cap of iterations: auto; null for a fixed depth
        ("actual_removed_frac_loss", pa.float64()),  # training loss ≤ dense training loss + ε
        ("actual_kept_frac_loss", pa.float64()),
        ("actual_effective_removed_frac_loss", pa.float64()),
        ("finetune_recipe", pa.string()),    # rare_gems: `protocol: recipe` that trained the mined mask
    ]
)

LAYERS = pa.schema(
    [
        ("cell_id", pa.string()),
        ("sweep", pa.string()),
        ("layer_index", pa.int32()),         # model order
        ("layer", pa.string()),              # module name, e.g. "features.0"
        ("n_weights", pa.int64()),
        ("direct_sparsity", pa.float64()),
        ("effective_sparsity", pa.float64()),
        ("schema_version", pa.int32()),
    ]
)

SPECTRA = pa.schema(
    [
        ("cell_id", pa.string()),
        ("sweep", pa.string()),
        ("hessian_model", pa.string()),      # "dense" | "pruned"
        ("probe", pa.int32()),
        ("node_index", pa.int32()),
        ("node", pa.float64()),              # Ritz value theta_j
        ("weight", pa.float64()),            # tau_j, sums to 1 per probe
        ("zero_mass", pa.float64()),         # q of this SLQ run (same on every row)
        ("dim", pa.int64()),                 # operator dimension D (after deflation)
        ("schema_version", pa.int32()),
    ]
)

CURVES = pa.schema(
    [
        ("cell_id", pa.string()),
        ("sweep", pa.string()),
        ("removed_frac", pa.float64()),
        ("kept_frac", pa.float64()),
        ("test_acc", pa.float64()),
        ("test_loss", pa.float64()),
        ("train_loss", pa.float64()),
        ("r", pa.float64()),                 # R(s): distance to the best sparse approximation
        ("g_of_r", pa.float64()),            # G(R(s)) from the SLQ quadrature
        ("schema_version", pa.int32()),
        # added after version 1: the same mask in effective terms (pruning.sparsity; ours)
        ("effective_sparsity", pa.float64()),
        ("effective_compression", pa.float64()),  # inf for a disconnected net
    ]
)

EPOCHS = pa.schema(
    [
        ("cell_id", pa.string()),
        ("sweep", pa.string()),
        ("phase", pa.string()),              # "dense" | "sparse" | "finetune" | "lomp"
        ("epoch", pa.int32()),
        ("lr", pa.float64()),
        ("train_loss", pa.float64()),
        ("train_acc", pa.float64()),
        ("test_loss", pa.float64()),
        ("test_acc", pa.float64()),
        ("seconds", pa.float64()),
        ("schema_version", pa.int32()),
    ]
)

# --- limit cells only (pruning.limit_analyses): the analyses of the limit paper, added after version 1

WEIGHTS = pa.schema(
    [
        ("cell_id", pa.string()),
        ("sweep", pa.string()),
        ("layer_index", pa.int32()),         # model order; -1 for the histogram over all layers
        ("layer", pa.string()),              # module name, "(all)" for all layers together
        ("bin", pa.int32()),                 # fixed log10|w| bins of width 0.05 from -12; -1: below
        ("log10_low", pa.float64()),         # bin edges of log10|w| (-inf / inf for the end bins)
        ("log10_high", pa.float64()),
        ("count", pa.int64()),               # trained prunable weights in the bin (empty bins left out)
        ("schema_version", pa.int32()),
    ]
)

SCALING = pa.schema(
    [
        ("cell_id", pa.string()),
        ("sweep", pa.string()),
        ("factor", pa.float64()),            # trained weights × factor; the Hessian spectrum held fixed
        ("predicted_removed_frac", pa.float64()),  # factor 1: the trials row's prediction exactly
        ("predicted_kept_frac", pa.float64()),
        ("schema_version", pa.int32()),
    ]
)

HESSIAN_ROWS = pa.schema(
    [
        ("cell_id", pa.string()),
        ("sweep", pa.string()),
        ("quantile", pa.float64()),          # rank of |w| among the prunable weights, in [0, 1]
        ("weight_index", pa.int64()),        # flat index over the prunable weights (model order)
        ("layer", pa.string()),
        ("abs_weight", pa.float64()),
        ("row_l1", pa.float64()),            # ‖H_i,:‖₁ of the mean training loss (exact, one HVP)
        ("hessian_diag", pa.float64()),      # H_ii
        ("schema_version", pa.int32()),
    ]
)

ROUNDS = pa.schema(
    [
        ("cell_id", pa.string()),
        ("sweep", pa.string()),
        ("round", pa.int32()),               # 1: the single-round limit of the trials row
        ("status", pa.string()),             # "ok" | "diverged" (its retraining) | "refused" (no s* to prune to)
        ("removed_frac_before", pa.float64()),  # pruned at the start of the round (of all prunable)
        ("dense_test_acc", pa.float64()),    # the round's model before further pruning
        ("epsilon", pa.float64()),
        ("zero_mass", pa.float64()),
        ("predicted_removed_frac", pa.float64()),  # of all prunable weights, pruned ones included
        ("predicted_kept_frac", pa.float64()),
        ("predicted_unresolved", pa.bool_()),
        ("actual_removed_frac_strict", pa.float64()),
        ("actual_removed_frac_tol", pa.float64()),
        ("schema_version", pa.int32()),
        # added after version 1 (nullable)
        ("actual_removed_frac_loss", pa.float64()),
        ("slq_iterations", pa.int64()),      # the Lanczos depth the round's SLQ used
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "trials": TRIALS,
    "layers": LAYERS,
    "spectra": SPECTRA,
    "curves": CURVES,
    "epochs": EPOCHS,
    "weights": WEIGHTS,
    "scaling": SCALING,
    "hessian_rows": HESSIAN_ROWS,
    "rounds": ROUNDS,
}


def schema(table: str) -> pa.Schema:
    """The schema of `table`; an unknown name lists the known ones."""
    if table not in SCHEMAS:
        raise ValueError(f"table {table!r}: choose from {sorted(SCHEMAS)}")
    return SCHEMAS[table]
