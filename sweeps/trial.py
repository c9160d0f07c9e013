"""The trial: one cell in, one finished set of Parquet files out — the same under every backend.

    point cells (sweeps/trial_point.py): seed → data → model → obtain → sparsity → hessian
    limit cells (sweeps/trial_limit.py): seed → data → model → limit → hessian_rows → rounds → sparsity

Why a list of named steps looked up in `STEPS` at call time: a step that needs a missing or broken
piece fails only the cells that use it, with a one-line error in their trials row, and tests
replace single steps the same way.

Outcomes: a NaN/inf loss ends training with status "diverged" (the row is still written, and it is a
result: not retried); any exception gives status "failed" with a one-line `error` (written, so the
error is visible; failed cells are retried by the next run). `Where` (storage and data roots) is
never part of a cell's identity. Time by phase comes from the cell's `Clock` (exclusive phases:
`train_seconds` + `prune_seconds` + `hessian_seconds` ≤ `total_seconds`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from sweeps import provenance, store
from sweeps.cells import Cell
from sweeps.trial_common import (  # noqa: F401  (re-exported: the trial's public names)
    Diverged, Report, TrialState, Where, slq_from_plain, slq_to_plain, step_data, step_model, step_seed,
    step_sparsity,
)
from sweeps.trial_limit import STEPS as LIMIT_STEPS
from sweeps.trial_point import STEPS as POINT_STEPS

log = logging.getLogger(__name__)

ERROR_MAX = 500  # characters of a failed cell's error line

STEPS: dict[str, Callable[[TrialState], None]] = {
    "seed": step_seed, "data": step_data, "model": step_model, "sparsity": step_sparsity,
    **POINT_STEPS, **LIMIT_STEPS,
}

PIPELINES: dict[str, tuple[str, ...]] = {
    "point": ("seed", "data", "model", "obtain", "sparsity", "hessian"),
    "limit": ("seed", "data", "model", "limit", "hessian_rows", "rounds", "sparsity"),
}

# The clock's phases and the trials columns they fill (ε and the limit's curve are limit work: prune).
PHASE_COLUMNS = {"train": "train_seconds", "prune": "prune_seconds", "epsilon": "prune_seconds",
                 "limit": "prune_seconds", "hessian": "hessian_seconds"}


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


def phase_columns(st: TrialState) -> dict[str, float]:
    out = dict.fromkeys(sorted(set(PHASE_COLUMNS.values())), 0.0)
    for phase, seconds in st.clock.seconds.items():
        out[PHASE_COLUMNS[phase]] += seconds
    return out


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
    st.row.update(phase_columns(st))
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
