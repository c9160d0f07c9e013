"""Progress of a sweep: one result line per finished cell, a done/total line with an ETA, and where a
long cell is while it runs (epoch i/n with its loss, SLQ probe batch and iteration, curve point).

Why plain lines when not a terminal: logs of cluster jobs and CI keep every line readable (no
carriage returns, no escape codes); on a terminal the done/total line redraws in place instead.
Why a running cell's lines are throttled per cell (`every`, default 5 s, the first after as long):
a cell of seconds should print one line, its result; a cell of ten minutes should show signs of life
without flooding a log with one line per epoch or Lanczos step. The same hooks (`started`,
`cell_progress`, `finished`, `close`) reach the experiment trackers (`sweeps.trackers`), which get
every report unthrottled: a tracker plots every epoch.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
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


def _num(v: Any, fmt: str = ".4g") -> str:
    return "-" if not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _epoch_text(v: dict[str, Any]) -> str:
    total = v.get("epochs")
    of = f"/{total}" if isinstance(total, int) else ""
    return f"{v.get('phase', 'train')} epoch {int(v['epoch']) + 1}{of} loss {_num(v.get('train_loss'))}"


def _slq_text(v: dict[str, Any]) -> str:
    batch = f"probe batch {v['slq_batch']}/{v['slq_batches']} " if "slq_batch" in v else ""
    resolved = "" if "slq_resolved" not in v else f" (s* resolved: {'yes' if v['slq_resolved'] else 'no'})"
    return f"slq {batch}iteration {v['slq_iteration']}/{v.get('slq_max_iterations', '?')}{resolved}"


def _curve_text(v: dict[str, Any]) -> str:
    return f"curve point {v['curve_point']}/{v['curve_points']}"


def _limit_text(v: dict[str, Any]) -> str:
    return (f"limit predicted {_frac(v.get('predicted_removed_frac'))} vs actual strict "
            f"{_frac(v.get('actual_removed_frac_strict'))}, now the remaining steps")


# What a running cell's report says, by the key that marks its kind (the first key present wins):
# per-epoch training records, SLQ (sweeps.trial_common.run_slq), the limit's curve, the limit's result.
WHERE_TEXT: dict[str, Callable[[dict[str, Any]], str]] = {
    "epoch": _epoch_text, "slq_iteration": _slq_text, "curve_point": _curve_text,
    "predicted_removed_frac": _limit_text,
}


def where_text(values: dict[str, Any]) -> str | None:
    """`sparse epoch 3/10 loss 0.4123`, `slq probe batch 1/2 iteration 40/128`, `curve point 120/200`;
    None for a report that says nothing about where the cell is."""
    for key, text in WHERE_TEXT.items():
        if values.get(key) is not None:  # Tune's reports carry every table column, None where unset
            return text(values)
    return None


class Progress:
    """Counts finished cells of a run and estimates the time left from the ones run so far; prints
    where a long cell is (throttled per cell); forwards every hook to the trackers."""

    def __init__(self, total: int, *, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, tty: bool | None = None,
                 every: float = 5.0, trackers: Sequence[Any] = ()):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.start = clock()
        self.done = 0        # finished or skipped
        self.ran = 0         # finished in this run (they set the pace)
        self.skipped_count = 0
        self.paced = False   # the clock restarts when the first cell really starts
        self.every = every   # seconds between two lines of one running cell (the first after as long)
        self.trackers = list(trackers)
        self._since: dict[str, float] = {}  # cell_id → when it started, then when its last line went out
        self._began: dict[str, float] = {}

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
        now = self.clock()
        if not self.paced:  # the pace counts from the first cell that really runs
            self.start, self.paced = now, True
        self._since[cell.cell_id] = self._began[cell.cell_id] = now
        for t in self.trackers:
            t.started(cell)

    def cell_progress(self, cell: Cell, values: dict[str, Any]) -> None:
        """A running cell's report: to every tracker; a line when `every` seconds passed since the
        cell started or since its last line, and the report says where it is."""
        for t in self.trackers:
            t.progress(cell, values)
        now = self.clock()
        since = self._since.setdefault(cell.cell_id, now)
        if now - since < self.every or (text := where_text(values)) is None:
            return
        self._since[cell.cell_id] = now
        line = f"  … {cell.label}: {text} ({duration(now - self._began.get(cell.cell_id, since))})"
        if self.tty:
            self.stream.write("\r\033[K" + line + "\n" + self.status_line())
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finished(self, cell: Cell, row: dict[str, Any]) -> None:
        self.done += 1
        self.ran += 1
        self._since.pop(cell.cell_id, None)
        self._began.pop(cell.cell_id, None)
        self._emit(result_line(cell, row))
        for t in self.trackers:
            t.finished(cell, row)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        for t in self.trackers:
            t.close()
