"""`prunetune status`: done / diverged / failed / pending cells of a stored sweep (exit 1 if any failed),
what it has cost so far and is likely to cost still (`sweeps.cost`), and a warning when its finished
rows mix versions of a plugin (`analysis.plugins`)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import pandas as pd

from analysis.plugins import COLUMNS as PLUGIN_COLUMNS
from analysis.plugins import mixed_versions
from sweeps import store
from sweeps.cells import expand
from sweeps.cli.common import add_storage, add_sweep, cells_exit
from sweeps.cost import sweep_cost
from sweeps.paths import SweepRef, locate_sweep
from sweeps.runner import stored_spec


def sweep_status(ref: SweepRef) -> dict[str, Any]:
    """done / diverged / failed (with errors) / pending cell ids of a stored sweep, and its cost
    (`sweeps.cost.SweepCost`: spent so far, the pending cells' estimate)."""
    spec = stored_spec(ref)
    out: dict[str, Any] = {"done": [], "diverged": [], "failed": {}, "pending": [], "total": 0, "warnings": []}
    rows, pending = [], []
    for cell in expand(spec):
        out["total"] += 1
        row = store.trial_row(ref.storage, ref.sweep, cell.cell_id)
        if row is not None:
            rows.append(row)
        if row is None:
            out["pending"].append(cell.cell_id)
            pending.append({"kind": cell.kind, "model": cell.model, "dataset": cell.dataset,
                            "pruner": cell.pruner, "target": cell.target})
        elif row["status"] == "failed":
            out["failed"][cell.cell_id] = f"{cell.label}: {row['error']}"
        elif row["status"] == "diverged":
            out["diverged"].append(cell.cell_id)
        else:
            out["done"].append(cell.cell_id)
    out["cost"] = sweep_cost(rows, pending)
    plugin_rows = [{k: r.get(k) for k in ("sweep", "status", "pruner", "model", "dataset", *PLUGIN_COLUMNS)}
                   for r in rows]
    out["warnings"] = mixed_versions(pd.DataFrame(plugin_rows, columns=["sweep", "status", "pruner", "model",
                                                                        "dataset", *PLUGIN_COLUMNS]))
    return out


def cost_line(cost: Any) -> str:
    """`cost: 1.23 CPU-hours, 0 GPU-hours so far (40 cells); remaining 12 cells ≈ 0.35 CPU-hours, …`."""
    spent = f"cost: {cost.cpu_hours:.3g} CPU-hours, {cost.gpu_hours:.3g} GPU-hours so far ({cost.cells_costed} cells)"
    if not cost.remaining_cells:
        return spent + "; nothing pending"
    if not math.isfinite(cost.remaining_cpu_hours):  # nothing finished to extrapolate from
        return f"{spent}; remaining {cost.remaining_cells} cells: unknown ({cost.remaining_basis})"
    return (f"{spent}; remaining {cost.remaining_cells} cells ≈ {cost.remaining_cpu_hours:.3g} CPU-hours, "
            f"{cost.remaining_gpu_hours:.3g} GPU-hours ({cost.remaining_basis})")


def cmd_status(args: argparse.Namespace) -> int:
    ref = locate_sweep(args.sweep, args.storage)
    s = sweep_status(ref)
    print(f"sweep {ref.sweep!r} in {ref.storage}: {s['total']} cells — {len(s['done'])} done, "
          f"{len(s['diverged'])} diverged, {len(s['failed'])} failed, {len(s['pending'])} pending")
    print(cost_line(s["cost"]))
    for cid, err in s["failed"].items():
        print(f"  failed {cid} {err}")
    for line in s["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    return cells_exit(not s["failed"])


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("status", help="done/failed/pending cells of a sweep (exit 1 when cells failed)")
    add_sweep(s)
    add_storage(s)
    s.set_defaults(func=cmd_status)
