"""Hand-built result stores for the analysis tests, written with pyarrow in the central schema.

Why hand-built: every number in a golden table must be checkable by hand, so the rows here are few
and their accuracies and compressions round. `GOLDEN` is the accuracy/compression fixture the
tables tests assert against; its comments give the expected values' derivation.
"""

from __future__ import annotations

import hashlib
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq

from sweeps.schema import SCHEMA_VERSION, SCHEMAS

INF = math.inf


def cell_id(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def _sparsity(compression: float | None) -> float | None:
    if compression is None:
        return None
    return 1.0 if math.isinf(compression) else 1.0 - 1.0 / compression


def trial(pruner: str, sparsity: float | None, seed: int, *, dc: float | None = None, ec: float | None = None,
          acc: float | None = None, status: str = "ok", kind: str = "point", target: str = "direct",
          model: str = "mlp", dataset: str = "digits", sweep: str = "golden", **extra: object) -> dict:
    """One trials row; direct/effective sparsity follow from the compressions dc/ec."""
    row = {
        "cell_id": cell_id(sweep, model, dataset, pruner, target, sparsity, seed, kind),
        "sweep": sweep, "kind": kind, "model": model, "dataset": dataset, "pruner": pruner,
        "target": target, "sparsity": sparsity, "seed": seed, "status": status,
        "error": "boom" if status == "failed" else None,
        "direct_compression": dc, "effective_compression": ec,
        "direct_sparsity": _sparsity(dc), "effective_sparsity": _sparsity(ec),
        "test_acc": acc, "schema_version": SCHEMA_VERSION,
    }
    row.update(extra)
    return row


# The golden accuracy/compression set: model mlp on digits, 3 seeds overall.
#   random/igq:       seeds 0, 1 (seed 2 failed at sparsity 0.9 and has no other cell)
#       sparsity 0.9   dc 10    ec 20    acc 0.90 / 0.92
#       sparsity 0.99  dc 100   ec 1000  acc 0.80 / 0.84
#       sparsity 0.999 dc 1000  ec inf   acc 0.10 / 0.10   (disconnected: no effective support)
#   magnitude/global: seeds 0, 1, 2; ec == dc
#       sparsity 0.9   dc 10   acc 0.95 / 0.96 / 0.97
#       sparsity 0.99  dc 100  acc 0.90 / 0.91 / 0.95
#       (seed 2 diverged at sparsity 0.999: excluded, so level 1000 has no support)
#   synflow:          sparsity 0.99, dc 100, ec 500 / inf / inf, acc 0.5 / 0.1 / 0.1
#   dense:            sparsity 0, dc = ec = 1, acc 0.98 / 0.98 / 0.99
GOLDEN: list[dict] = [
    trial("random/igq", 0.9, 0, dc=10, ec=20, acc=0.90),
    trial("random/igq", 0.9, 1, dc=10, ec=20, acc=0.92),
    trial("random/igq", 0.9, 2, status="failed"),
    trial("random/igq", 0.99, 0, dc=100, ec=1000, acc=0.80),
    trial("random/igq", 0.99, 1, dc=100, ec=1000, acc=0.84),
    trial("random/igq", 0.999, 0, dc=1000, ec=INF, acc=0.10),
    trial("random/igq", 0.999, 1, dc=1000, ec=INF, acc=0.10),
    trial("magnitude/global", 0.9, 0, dc=10, ec=10, acc=0.95),
    trial("magnitude/global", 0.9, 1, dc=10, ec=10, acc=0.96),
    trial("magnitude/global", 0.9, 2, dc=10, ec=10, acc=0.97),
    trial("magnitude/global", 0.99, 0, dc=100, ec=100, acc=0.90),
    trial("magnitude/global", 0.99, 1, dc=100, ec=100, acc=0.91),
    trial("magnitude/global", 0.99, 2, dc=100, ec=100, acc=0.95),
    trial("magnitude/global", 0.999, 2, dc=1000, ec=1000, acc=0.10, status="diverged"),
    trial("synflow", 0.99, 0, dc=100, ec=500, acc=0.5),
    trial("synflow", 0.99, 1, dc=100, ec=INF, acc=0.1),
    trial("synflow", 0.99, 2, dc=100, ec=INF, acc=0.1),
    trial("dense", 0.0, 0, dc=1, ec=1, acc=0.98, target=None),
    trial("dense", 0.0, 1, dc=1, ec=1, acc=0.98, target=None),
    trial("dense", 0.0, 2, dc=1, ec=1, acc=0.99, target=None),
]


def limit_row(seed: int, *, predicted: float, strict: float, tol: float, band: tuple[float, float],
              trace_bound: float = 0.5, epsilon: float = 0.01, zero_mass: float = 0.2, loss: float | None = None,
              model: str = "mlp", dataset: str = "digits", sweep: str = "golden", **extra: object) -> dict:
    """A kind == "limit" row (LOMP) with the fractions given as removed fractions (`loss`: the loss
    rule's actual limit, absent from rows of older files when None)."""
    if loss is not None:
        extra = {"actual_removed_frac_loss": loss, "actual_kept_frac_loss": 1 - loss, **extra}
    return trial("lomp", None, seed, kind="limit", model=model, dataset=dataset, sweep=sweep,
                 lomp_l1=5e-5, epsilon=epsilon, epsilon_source="batch_loss_std", eigen_policy="abs",
                 zero_mass=zero_mass, predicted_removed_frac=predicted, predicted_kept_frac=1 - predicted,
                 band_kept_frac_low=band[0], band_kept_frac_high=band[1],
                 trace_bound_removed_frac=trace_bound,
                 actual_removed_frac_strict=strict, actual_kept_frac_strict=1 - strict,
                 actual_removed_frac_tol=tol, actual_kept_frac_tol=1 - tol, limit_tolerance_pp=0.1,
                 dense_test_acc=0.95, **extra)


def curve_rows(cell: str, points: list[tuple[float, float, float]], sweep: str = "golden") -> list[dict]:
    """curves rows from (removed_frac, test_acc, g_of_r); r grows with s as R(s) does, the test loss
    falls as the accuracy rises, and the effective sparsity leaves the direct one above s = 0.9."""
    return [{"cell_id": cell, "sweep": sweep, "removed_frac": s, "kept_frac": 1 - s, "test_acc": acc,
             "test_loss": 2.0 * (1.0 - acc), "r": math.sqrt(s), "g_of_r": g,
             "effective_sparsity": s + max(0.0, s - 0.9) * 0.5,
             "effective_compression": 1 / (1 - (s + max(0.0, s - 0.9) * 0.5)),
             "schema_version": SCHEMA_VERSION} for s, acc, g in points]


def spectrum_rows(cell: str, probes: list[list[tuple[float, float]]], zero_mass: float = 0.1,
                  sweep: str = "golden") -> list[dict]:
    """spectra rows from per-probe (node, weight) lists."""
    return [{"cell_id": cell, "sweep": sweep, "hessian_model": "dense", "probe": p, "node_index": j,
             "node": node, "weight": weight, "zero_mass": zero_mass, "dim": 100,
             "schema_version": SCHEMA_VERSION}
            for p, nodes in enumerate(probes) for j, (node, weight) in enumerate(nodes)]


def weight_rows(cell: str, counts: dict[int, int], layer: str = "(all)", sweep: str = "golden") -> list[dict]:
    """weights rows from {bin: count} (bins of width 0.05 from log10|w| = -12, as the trial's)."""
    return [{"cell_id": cell, "sweep": sweep, "layer_index": -1 if layer == "(all)" else 0, "layer": layer,
             "bin": b, "log10_low": -12 + 0.05 * b, "log10_high": -12 + 0.05 * (b + 1), "count": n,
             "schema_version": SCHEMA_VERSION} for b, n in counts.items()]


def scaling_rows(cell: str, points: list[tuple[float, float]], sweep: str = "golden") -> list[dict]:
    """scaling rows from (factor, predicted_removed_frac)."""
    return [{"cell_id": cell, "sweep": sweep, "factor": f, "predicted_removed_frac": s, "predicted_kept_frac": 1 - s,
             "schema_version": SCHEMA_VERSION} for f, s in points]


def hessian_rows_rows(cell: str, points: list[tuple[float, float, float]], sweep: str = "golden") -> list[dict]:
    """hessian_rows rows from (quantile, abs_weight, row_l1)."""
    return [{"cell_id": cell, "sweep": sweep, "quantile": q, "weight_index": i, "layer": "fc", "abs_weight": w,
             "row_l1": r, "hessian_diag": r / 10, "schema_version": SCHEMA_VERSION}
            for i, (q, w, r) in enumerate(points)]


def rounds_rows(cell: str, points: list[tuple[float, float, float]], sweep: str = "golden") -> list[dict]:
    """rounds rows from (removed_frac_before, predicted_removed_frac, actual_removed_frac_tol); the loss
    rule's limit is the tolerance rule's + 0.01, the Lanczos depth 128."""
    return [{"cell_id": cell, "sweep": sweep, "round": i + 1, "status": "ok", "removed_frac_before": b,
             "dense_test_acc": 0.95, "epsilon": 0.01, "zero_mass": b, "predicted_removed_frac": p,
             "predicted_kept_frac": 1 - p, "predicted_unresolved": False, "actual_removed_frac_strict": b,
             "actual_removed_frac_tol": a, "actual_removed_frac_loss": a + 0.01, "slq_iterations": 128,
             "schema_version": SCHEMA_VERSION} for i, (b, p, a) in enumerate(points)]


def write_file(root: str | os.PathLike, sweep: str, table: str, rows: list[dict], *, name: str | None = None,
               schema: pa.Schema | None = None) -> str:
    """rows → <root>/<sweep>/<table>/<name>.parquet (name: the first row's cell_id)."""
    directory = os.path.join(os.fspath(root), sweep, table)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name or rows[0]['cell_id']}.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema or SCHEMAS[table]), path)
    return path


def write_store(root: str | os.PathLike, sweep: str, trials: list[dict], *, curves: list[dict] = (),
                spectra: list[dict] = (), **tables: list[dict]) -> str:
    """One file per cell and table, plus spec.yaml, as the sweep engine lays a sweep out; `tables`
    gives rows of further tables by name (weights=..., rounds=...)."""
    sweep_dir = os.path.join(os.fspath(root), sweep)
    os.makedirs(sweep_dir, exist_ok=True)
    with open(os.path.join(sweep_dir, "spec.yaml"), "w") as f:
        f.write(f"name: {sweep}\n")
    for row in trials:
        write_file(root, sweep, "trials", [{**row, "sweep": sweep}])
    for table, rows in (("curves", curves), ("spectra", spectra), *tables.items()):
        by_cell: dict[str, list[dict]] = {}
        for r in rows:
            by_cell.setdefault(r["cell_id"], []).append({**r, "sweep": sweep})
        for rows_of_cell in by_cell.values():
            write_file(root, sweep, table, rows_of_cell)
    return sweep_dir
