"""`prunetune status`: done / diverged / failed / pending cells of a stored sweep."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sweeps import store
from sweeps.cells import expand
from sweeps.paths import SPEC_FILE, SweepRef, locate_sweep
from sweeps.runner import stored_spec
from sweeps.spec import build_spec, read_yaml


def locate(name_or_path: str, storage: str | None) -> SweepRef:
    """A sweep from a name, a sweep directory or URI, its spec.yaml, or the user's own spec file."""
    path = Path(name_or_path)
    if path.is_file() and path.name != SPEC_FILE:
        raw = read_yaml(path)
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ValueError(f"status: {str(path)!r} has no sweep name")
        return SweepRef(build_spec(raw, storage=storage).storage, raw["name"])
    return locate_sweep(name_or_path, storage)


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
    ref = locate(args.sweep, args.storage)
    s = sweep_status(ref)
    print(f"sweep {ref.sweep!r} in {ref.storage}: {s['total']} cells — {len(s['done'])} done, "
          f"{len(s['diverged'])} diverged, {len(s['failed'])} failed, {len(s['pending'])} pending")
    for cid, err in s["failed"].items():
        print(f"  failed {cid} {err}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("status", help="done/failed/pending cells of a sweep")
    s.add_argument("sweep", metavar="NAME_OR_PATH", help="sweep name, sweep directory, URI or spec file")
    s.add_argument("--storage", default=None, help="results root (for a sweep name)")
    s.set_defaults(func=cmd_status)
