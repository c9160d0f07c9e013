"""The backend interface: run a list of cells somewhere, report progress, summarize.

Why so small: a backend decides only *where* cells run (this process, a Ray cluster); *what* runs
is always `sweeps.trial.run_cell`, and which cells still need running is decided from the store.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pruning.options import option, rule, validate
from sweeps import store

if TYPE_CHECKING:
    from sweeps.cells import Cell
    from sweeps.progress import Progress
    from sweeps.spec import Spec
    from sweeps.trial import Where


@dataclass
class RunSummary:
    """Cell ids by outcome of one `run`: done (ok or diverged now), failed, skipped (already done)."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # cell_id → one-line error of failed cells

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray backend runs (never part of a cell's identity)."""

    address: str | None = option(None, "a cluster ('auto', 'ray://head:10001'); null: $RAY_ADDRESS or a local Ray")
    num_cpus: float | None = option(None, "local Ray only: CPUs it offers (null: all of this machine's)", gt=0)
    num_gpus: float | None = option(None, "local Ray only: GPUs it offers (null: detected); fake GPUs for tests",
                                    ge=0)
    max_concurrent: int | None = option(None, "at most this many trials at once (null: as resources allow)", ge=1)
    dashboard: bool = option(False, "local Ray only: start the dashboard (bound to 127.0.0.1)")
    max_failures: int = option(2, "Tune retries of a trial whose process, node or HVP worker died", ge=0)
    reuse_actors: bool = option(True, "run the next trial in a finished trial's process (see ray_tune)")

    def __post_init__(self) -> None:
        validate(self, rule(self.address is None or (self.num_cpus is None and self.num_gpus is None), "address",
                            f"{self.address!r}; num_cpus/num_gpus are only for a local Ray, a cluster given by "
                            "address has its own resources"))

    def cluster_address(self) -> str | None:
        """The cluster to join: the option, else $RAY_ADDRESS (set by `ray job submit`), else None."""
        return self.address or os.environ.get("RAY_ADDRESS") or None


class Backend(Protocol):
    """Runs cells; `check` says what this backend could never run (before anything starts);
    `from_spec` builds one with the spec's resources."""

    name: str

    @classmethod
    def check(cls, spec: Spec, options: RayOptions | None = None) -> list[str]: ...

    @classmethod
    def from_spec(cls, spec: Spec, options: RayOptions | None = None) -> Backend: ...

    def run(self, cells: Sequence[Cell], where: Where, *, progress: Progress) -> RunSummary: ...


def pending_cells(cells: Sequence[Cell], storage: str, summary: RunSummary, progress: Progress) -> list[Cell]:
    """The cells not yet done in the store; done ones are recorded as skipped (and reported so).

    Every backend starts with this: the per-cell Parquet, not a backend's own state, says what is done.
    """
    todo = []
    for cell in cells:
        if store.is_done(storage, cell.sweep, cell.cell_id):
            summary.skipped.append(cell.cell_id)
            progress.skipped(cell)
        else:
            todo.append(cell)
    return todo

