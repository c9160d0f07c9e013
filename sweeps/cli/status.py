"""`prunetune status`: done / diverged / failed / pending cells of a stored sweep (exit 1 if any failed)."""

from __future__ import annotations

import argparse
from typing import Any

from sweeps import store
from sweeps.cells import expand
from sweeps.cli.common import add_storage, add_sweep, cells_exit
from sweeps.paths import SweepRef, locate_sweep
from sweeps.runner import stored_spec


def sweep_status(ref: SweepRef) -> dict[str, Any]:
    """done / diverged / failed (with errors) / pending cell ids of a stored sweep."""
    spec = stored_spec(ref)
    out: dict[str, Any] = {"done": [], "diverged": [], "failed": {}, "pending": [], "total": 0}
    for cell in expand(spec):
        out["total"] += 1
        row = store.trial_row(ref.storage, ref.sweep, cell.cell_id)
        if row is None:
            out["pending"].append(cell.cell_id)
        elif row["status"] == "failed":
            out["failed"][cell.cell_id] = f"{cell.label}: {row['error']}"
        elif row["status"] == "diverged":
            out["diverged"].append(cell.cell_id)
        else:
            out["done"].append(cell.cell_id)
    return out


def cmd_status(args: argparse.Namespace) -> int:
    ref = locate_sweep(args.sweep, args.storage)
    s = sweep_status(ref)
    print(f"sweep {ref.sweep!r} in {ref.storage}: {s['total']} cells — {len(s['done'])} done, "
          f"{len(s['diverged'])} diverged, {len(s['failed'])} failed, {len(s['pending'])} pending")
    for cid, err in s["failed"].items():
        print(f"  failed {cid} {err}")
    return cells_exit(not s["failed"])


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("status", help="done/failed/pending cells of a sweep (exit 1 when cells failed)")
    add_sweep(s)
    add_storage(s)
    s.set_defaults(func=cmd_status)
