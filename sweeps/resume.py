"""Resume a Ray sweep after a crash or Ctrl-C: restore the Tune experiment, then run whatever is missing.

    storage/<sweep>/spec.yaml ─▶ cells ─▶ pending = not done in the store
        ─▶ Tuner.restore(latest experiment, resume_errored=True).fit()   (when its state is usable)
        ─▶ a fresh Tune run over the cells still pending                   (always: the store decides)

Why both: after a clean interruption (SIGINT) Tune's experiment state is exact and restoring it
keeps the trial history and retry counts; after a driver SIGKILL the state can be stale (trials
marked running, result.json missing) or absent, and then the restored experiment may not cover
every pending cell. Our per-cell Parquet is the source of truth, so whatever the restore did, the
cells that are still not done get a fresh run, and cells already done are never run again (the
trainable returns at once for them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import pyarrow.fs as pafs
from ray import tune

from sweeps import store
from sweeps.backends.base import RunSummary, pending_cells
from sweeps.backends.base import RayOptions
from sweeps.backends.ray_tune import RUN_PREFIX, ProgressCallback, RayBackend, absolute, collect
from sweeps.cells import Cell, expand
from sweeps.paths import tune_root
from sweeps.progress import Progress
from sweeps.runner import where_of
from sweeps.spec import Spec
from sweeps.trial import Where

log = logging.getLogger(__name__)


def latest_experiment(storage: str, sweep: str) -> str | None:
    """The newest Tune experiment directory of the sweep (names sort by their UTC start time)."""
    loc = store.locate(storage)
    root = tune_root(loc.base if loc.local else storage, sweep)  # what Tune takes: a path or a URI
    infos = loc.fs.get_file_info(pafs.FileSelector(tune_root(loc.base, sweep), allow_not_found=True))
    runs = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory
                  and i.base_name.startswith(RUN_PREFIX))
    return f"{root}/{runs[-1]}" if runs else None


def restore(backend: RayBackend, where: Where, cells: list[Cell], path: str | None) -> bool:
    """Restore and finish the Tune experiment at `path`; False (nothing run) when it cannot be restored.

    Why the broad but listed exceptions: a state file left by a killed driver can be truncated
    (JSON errors are ValueErrors), point at trials Tune no longer knows (TuneError) or be gone
    (OSError); each of these means "start fresh", which is always safe here.
    """
    if path is None or not tune.Tuner.can_restore(path):
        log.info("resume: no restorable Tune experiment (%s); running the pending cells afresh", path)
        return False
    try:
        tuner = tune.Tuner.restore(path, trainable=backend.trainable(where, cells), resume_errored=True)
        backend.results = tuner.fit()
    except (tune.TuneError, ValueError, OSError, RuntimeError) as e:
        log.warning("resume: Tune state at %s is not usable (%s); running the pending cells afresh", path, e)
        return False
    return True


def _written_since(storage: str, cell: Cell, when: datetime) -> bool:
    row = store.trial_row(storage, cell.sweep, cell.cell_id)
    return row is not None and row.get("finished_at") is not None and row["finished_at"] >= when


def resume(spec: Spec, *, options: RayOptions | None = None, progress: Progress | None = None,
           trackers: Sequence[Any] = (), **backend_kwargs: Any) -> RunSummary:
    """Continue the stored Ray sweep `spec` until every cell is done (or failed); see the module docstring.

    `skipped` lists the cells that were done before this call; `done`/`failed` the others.
    `trackers` (`sweeps.trackers`) see the cells that run now, never the ones done before.
    """
    cells = expand(spec)
    progress = progress or Progress(len(cells), trackers=trackers)
    try:
        return _resume(spec, cells, options, progress, backend_kwargs)
    finally:
        progress.close()


def _resume(spec: Spec, cells: list[Cell], options: RayOptions | None, progress: Progress,
            backend_kwargs: dict[str, Any]) -> RunSummary:
    where = where_of(spec)
    summary = RunSummary()
    pending = pending_cells(cells, spec.storage, summary, progress)
    if not pending:
        return summary
    backend = RayBackend.from_spec(spec, options, **backend_kwargs)
    started = datetime.now(timezone.utc)
    with backend.session():
        where = absolute(where)
        callback = ProgressCallback({c.cell_id: c for c in pending}, where.storage, progress)
        if restore(backend, where, cells, latest_experiment(spec.storage, spec.name)):
            restored = collect(pending, where, backend.results, RunSummary(), callback)
            # a cell the restored experiment ran to a failed row keeps it (Tune already retried
            # it); cells with no row, or with a failed row older than this call, run afresh
            missing = [c for c in pending if not _written_since(spec.storage, c, started)]
            missing_ids = {c.cell_id for c in missing}
            summary.done += restored.done
            summary.failed += [cid for cid in restored.failed if cid not in missing_ids]
            summary.errors.update({cid: e for cid, e in restored.errors.items() if cid not in missing_ids})
            pending = missing
        if pending:
            fresh = RunSummary()
            backend.results = backend.tuner(pending, where, callback).fit()
            collect(pending, where, backend.results, fresh, callback)
            summary.done += fresh.done
            summary.failed += fresh.failed
            summary.errors.update(fresh.errors)
    return summary
