"""The serial backend: cells one after another in this process (laptops, CI, debugging).

Finished cells are skipped by reading the store, so an interrupted sweep continues where it
stopped and a grown sweep runs only its new cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sweeps import store
from sweeps.backends.base import RunSummary
from sweeps.trial import run_cell

if TYPE_CHECKING:
    from sweeps.cells import Cell
    from sweeps.progress import Progress
    from sweeps.spec import Spec
    from sweeps.trial import Where


class SerialBackend:
    name = "serial"

    def __init__(self, device: str = "cpu"):
        self.device = device

    @classmethod
    def from_spec(cls, spec: Spec) -> SerialBackend:
        """CUDA when the spec asks for a GPU (validation made sure one exists), else CPU."""
        return cls(device="cuda" if spec.resources.gpus > 0 else "cpu")

    def run(self, cells: Sequence[Cell], where: Where, *, progress: Progress) -> RunSummary:
        summary = RunSummary()
        todo = []
        for cell in cells:
            if store.is_done(where.storage, cell.sweep, cell.cell_id):
                summary.skipped.append(cell.cell_id)
                progress.skipped(cell)
            else:
                todo.append(cell)
        for cell in todo:
            progress.started(cell)
            row = run_cell(cell, where, device=self.device, backend=self.name)
            progress.finished(cell, row)
            if row["status"] == "failed":
                summary.failed.append(cell.cell_id)
                summary.errors[cell.cell_id] = row["error"]
            else:
                summary.done.append(cell.cell_id)
        return summary
