"""What a cell costs: the resources reserved for it × its wall time, and what a sweep has cost so far.

The rule (one place, used by every backend and by `prunetune status`):

    cpu_hours = reserved_cpus × total_seconds / 3600        gpu_hours = reserved_gpus × total_seconds / 3600

`reserved_*` is what the backend held for the cell during its whole run, whether the cell used it
or not (a scheduler bills reservations): on Ray the trial's placement group, one bundle of
`resources.cpus`/`resources.gpus` for the trial and one more per HVP worker (`hessian.workers`); on
the serial backend the torch threads it runs with (`resources.cpus`) and, on CUDA, the whole GPU (one
cell at a time holds it). `total_seconds` is the cell's wall time inside `run_cell`, so its phases
(`train_seconds`, `prune_seconds`, `hessian_seconds`, from one exclusive clock) never exceed it.

Why a dense model trained for the cache counts once: it is trained inside the first cell that needs
it (`sweeps.trial_common.dense_entry`), so its time is in that cell's wall time and cost; every
other cell that shares it only loads it (or waits for it while another process trains it, which is
time it holds its slot, so it counts there too). Which cell pays is whichever asked first — in a
serial sweep the first in expansion order (usually the `dense` cell), on Ray the winner of the race.

Torch- and Ray-free: `prunetune status` reads it beside the store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SECONDS_PER_HOUR = 3600.0
COST_COLUMNS = ("reserved_cpus", "reserved_gpus", "cpu_hours", "gpu_hours")


@dataclass(frozen=True)
class Reserved:
    """CPUs and GPUs a backend holds for one cell while it runs (fractions allowed)."""

    cpus: float
    gpus: float = 0.0

    def columns(self, seconds: float) -> dict[str, float]:
        """The trials row's cost columns for a cell that ran `seconds` of wall time."""
        hours = max(float(seconds), 0.0) / SECONDS_PER_HOUR
        return {"reserved_cpus": float(self.cpus), "reserved_gpus": float(self.gpus),
                "cpu_hours": float(self.cpus) * hours, "gpu_hours": float(self.gpus) * hours}


def reserved_by_serial(cpus: float, device: str) -> Reserved:
    """The serial backend: its torch threads, and the whole GPU when it runs on one."""
    return Reserved(cpus=float(cpus), gpus=1.0 if str(device).startswith("cuda") else 0.0)


def trial_bundles(cpus: float, gpus: float, hessian_workers: int) -> list[dict[str, float]]:
    """A Ray trial's placement group: one bundle for the trial, one per HVP worker (each the
    trial's own CPUs/GPUs). Here, not in the Ray backend, so that `prunetune estimate` can cost a
    Ray sweep without importing Ray."""
    one = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}
    extra = hessian_workers if hessian_workers > 1 else 0
    return [dict(one) for _ in range(1 + extra)]


def reserved_by_bundles(bundles: Sequence[Mapping[str, float]]) -> Reserved:
    """A Ray placement group: the sum of its bundles (the trial's and its HVP workers')."""
    return Reserved(cpus=sum(float(b.get("CPU", 0.0)) for b in bundles),
                    gpus=sum(float(b.get("GPU", 0.0)) for b in bundles))


# ----------------------------------------------------------------------------- a sweep's cost


@dataclass(frozen=True)
class SweepCost:
    """Spent (rows written, failed ones included: they held their resources too) and the
    remaining estimate (pending cells, from the finished cells most like them)."""

    cpu_hours: float
    gpu_hours: float
    cells_costed: int            # rows with a cost (older rows without cost columns are left out)
    remaining_cpu_hours: float   # nan when nothing finished yet to extrapolate from
    remaining_gpu_hours: float
    remaining_cells: int
    remaining_basis: str         # how the remaining estimate was made, in words


# Keys from the most to the least specific: a pending cell is costed as the mean of the finished cells
# that share its first key with any finished cell (a cell's cost depends on these, in this order).
LIKENESS: tuple[tuple[str, ...], ...] = (
    ("kind", "model", "dataset", "pruner", "target"),
    ("kind", "model", "dataset", "pruner"),
    ("kind", "model", "dataset"),
    ("model", "dataset"),
    (),
)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def sweep_cost(rows: Iterable[Mapping[str, Any]], pending: Iterable[Mapping[str, Any]]) -> SweepCost:
    """Sum the cost of the written `rows`; estimate the `pending` cells (mappings of their axes:
    kind, model, dataset, pruner, target) from the mean cost of the most alike finished ones.

    Why means of alike cells rather than of all: a sweep mixes cells of seconds (random pruners
    on small nets) and of minutes (SLQ, LOMP limits); the pending ones are rarely a random sample.
    The mean of a group already spreads its dense training over the cells that shared it.
    """
    costed = [r for r in rows if _finite(r.get("cpu_hours")) and _finite(r.get("gpu_hours"))]
    spent_cpu = sum(float(r["cpu_hours"]) for r in costed)
    spent_gpu = sum(float(r["gpu_hours"]) for r in costed)
    done = [r for r in costed if r.get("status") != "failed"]
    means: dict[tuple[str, ...], dict[tuple, tuple[float, float]]] = {}
    for keys in LIKENESS:
        groups: dict[tuple, list[Mapping[str, Any]]] = {}
        for r in done:
            groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
        means[keys] = {g: (sum(float(r["cpu_hours"]) for r in rs) / len(rs),
                           sum(float(r["gpu_hours"]) for r in rs) / len(rs)) for g, rs in groups.items()}
    pending = list(pending)
    cpu = gpu = 0.0
    used: set[int] = set()
    for cell in pending:
        for level, keys in enumerate(LIKENESS):
            got = means[keys].get(tuple(cell.get(k) for k in keys))
            if got is not None:
                cpu, gpu = cpu + got[0], gpu + got[1]
                used.add(level)
                break
    if pending and not done:
        return SweepCost(spent_cpu, spent_gpu, len(costed), math.nan, math.nan, len(pending),
                         "no finished cell to extrapolate from yet (prunetune estimate SPEC measures before a run)")
    basis = ("mean of the finished cells of the same model, data set, pruner and target"
             if used <= {0} else "mean of the most alike finished cells (same pruner and target where any finished)")
    return SweepCost(spent_cpu, spent_gpu, len(costed), cpu, gpu, len(pending), basis)

