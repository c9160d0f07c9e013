"""Progress of a sweep: one result line per finished cell and a done/total line with an ETA.

Why plain lines when not a terminal: logs of cluster jobs and CI keep every line readable (no
carriage returns, no escape codes); on a terminal the done/total line redraws in place instead.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from sweeps.cells import Cell


def duration(seconds: float) -> str:
    """`1h02m`, `3m05s`, `12s`; `?` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def compression_text(c: Any) -> str:
    if c is None or (isinstance(c, float) and math.isnan(c)):
        return "-"
    return "inf" if math.isinf(c) else f"{c:.4g}"


def result_line(cell: Cell, row: dict[str, Any]) -> str:
    """`pruner sparsity acc direct× effective×` of one finished cell (or its one-line error)."""
    head = cell.label
    status = row.get("status")
    if status == "failed":
        return f"FAILED {head}: {row.get('error')}"
    acc = row.get("test_acc")
    acc_text = "-" if acc is None else f"{acc:.4f}"
    mark = "ok" if status == "ok" else status
    if cell.kind == "limit":
        return f"{mark} {head}  acc {acc_text}  {limit_text(row)}  ({duration(row.get('total_seconds') or 0.0)})"
    return (f"{mark} {head}  acc {acc_text}  direct x{compression_text(row.get('direct_compression'))}"
            f"  effective x{compression_text(row.get('effective_compression'))}"
            f"  ({duration(row.get('total_seconds') or 0.0)})")


def _frac(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def limit_text(row: dict[str, Any]) -> str:
    """`predicted 0.913 (authors 0.905) vs actual strict 0.820 tol 0.840 loss 0.900, 160 steps,
    unresolved` of a limit cell's row: what a reader decides from, as the limit table shows it."""
    flag = row.get("predicted_unresolved")
    resolved = "" if flag is None else (", unresolved" if flag else ", resolved")
    steps = row.get("slq_iterations")
    depth = "" if steps is None else f", {int(steps)} steps"
    return (f"predicted {_frac(row.get('predicted_removed_frac'))} "
            f"(authors {_frac(row.get('predicted_removed_frac_authors'))}) vs actual "
            f"strict {_frac(row.get('actual_removed_frac_strict'))} tol {_frac(row.get('actual_removed_frac_tol'))} "
            f"loss {_frac(row.get('actual_removed_frac_loss'))}{depth}{resolved}")


class Progress:
    """Counts finished cells of a run and estimates the time left from the ones run so far."""

    def __init__(self, total: int, *, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, tty: bool | None = None):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.start = clock()
        self.done = 0        # finished or skipped
        self.ran = 0         # finished in this run (they set the pace)
        self.skipped_count = 0
        self.paced = False   # the clock restarts when the first cell really starts

    def eta(self) -> float:
        """Seconds left: mean time of the cells run so far × cells left (nan before the first)."""
        if self.ran == 0:
            return math.nan
        return (self.clock() - self.start) / self.ran * (self.total - self.done)

    def status_line(self) -> str:
        skipped = f", {self.skipped_count} already done" if self.skipped_count else ""
        return f"[{self.done}/{self.total}{skipped}] ETA {duration(self.eta())}"

    def _emit(self, line: str | None) -> None:
        if self.tty:
            if line is not None:
                self.stream.write("\r\033[K" + line + "\n")
            self.stream.write("\r\033[K" + self.status_line())
        elif line is not None:
            self.stream.write(line + "  " + self.status_line() + "\n")
        self.stream.flush()

    def skipped(self, cell: Cell) -> None:
        self.done += 1
        self.skipped_count += 1
        if self.tty:
            self._emit(None)

    def started(self, cell: Cell) -> None:
        if not self.paced:  # the pace counts from the first cell that really runs
            self.start, self.paced = self.clock(), True

    def finished(self, cell: Cell, row: dict[str, Any]) -> None:
        self.done += 1
        self.ran += 1
        self._emit(result_line(cell, row))

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
