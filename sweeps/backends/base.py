"""The backend interface: run a list of cells somewhere, report progress, summarize.

Why so small: a backend decides only *where* cells run (this process, a Ray cluster); *what* runs
is always `sweeps.trial.run_cell`, and which cells still need running is decided from the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

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


class Backend(Protocol):
    """Runs cells; `from_spec` builds one with the spec's resources."""

    name: str

    @classmethod
    def from_spec(cls, spec: Spec) -> Backend: ...

    def run(self, cells: Sequence[Cell], where: Where, *, progress: Progress) -> RunSummary: ...


def pending_cells(cells: Sequence[Cell], storage: str, summary: RunSummary, progress: Progress) -> list[Cell]:
    """The cells not yet done in the store; done ones are recorded as skipped (and reported so).

    Every backend starts with this: the per-cell Parquet, not a backend's own state, says what is done.
    """
    from sweeps import store

    todo = []
    for cell in cells:
        if store.is_done(storage, cell.sweep, cell.cell_id):
            summary.skipped.append(cell.cell_id)
            progress.skipped(cell)
        else:
            todo.append(cell)
    return todo

