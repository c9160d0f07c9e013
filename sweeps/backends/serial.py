"""The serial backend: cells one after another in this process (laptops, CI, debugging).

Finished cells are skipped by reading the store, so an interrupted sweep continues where it
stopped and a grown sweep runs only its new cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from sweeps.backends.base import RayOptions, RunSummary, pending_cells
from sweeps.trial import run_cell

if TYPE_CHECKING:
    from sweeps.cells import Cell
    from sweeps.progress import Progress
    from sweeps.spec import Spec
    from sweeps.trial import Where


class SerialBackend:
    name = "serial"

    def __init__(self, device: str = "cpu", threads: int | None = None):
        self.device = device
        self.threads = threads

    @classmethod
    def check(cls, spec: Spec, options: RayOptions | None = None) -> list[str]:
        """The cells run here, one at a time on one device: a GPU request needs a GPU, and one GPU
        is all a cell gets."""
        gpus = spec.resources.gpus
        if gpus > 0 and not torch.cuda.is_available():
            return [f"resources.gpus: {gpus} requested but this machine has no GPU (the serial backend runs "
                    "here); set gpus: 0 or use --backend ray"]
        if gpus > 1:
            return [f"resources.gpus: {gpus}; the serial backend runs each cell on one GPU: set gpus ≤ 1, "
                    "or use --backend ray"]
        return []

    @classmethod
    def from_spec(cls, spec: Spec, options: RayOptions | None = None) -> SerialBackend:
        """CUDA when the spec asks for a GPU (`check` made sure one exists), else CPU.

        Torch threads = the spec's `resources.cpus`, as Ray gives a trial of that many CPUs: CPU
        reductions depend on the thread count, so this is what makes serial and Ray rows agree.
        Ray's options do not apply here (the CLI refuses them for this backend).
        """
        return cls(device="cuda" if spec.resources.gpus > 0 else "cpu",
                   threads=max(1, int(spec.resources.cpus)))

    def run(self, cells: Sequence[Cell], where: Where, *, progress: Progress) -> RunSummary:
        summary = RunSummary()
        todo = pending_cells(cells, where.storage, summary, progress)
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            for cell in todo:
                progress.started(cell)
                row = run_cell(cell, where, device=self.device, backend=self.name)
                progress.finished(cell, row)
                if row["status"] == "failed":
                    summary.failed.append(cell.cell_id)
                    summary.errors[cell.cell_id] = row["error"]
                else:
                    summary.done.append(cell.cell_id)
        finally:
            torch.set_num_threads(before)
        return summary
