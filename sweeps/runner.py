"""The one run path of a sweep, whatever the backend: spec → cells → spec.yaml → backend → summary.

    run_spec(spec, options)      validate-time checks of the backend, store the resolved spec, run the
                                 cells the store does not hold yet, return the RunSummary
    stored_spec(ref)             the spec a stored sweep was run with (for status and resume)
    closing_lines(...)           what a run prints at its end, and its exit code

Why one path: `run`, `resume`, `demo` and the two backends used to carry near copies of these
steps that drifted apart (which one cleaned temp files, how the summary read). Backends decide only
*where* cells run; what is done is decided by the store.
"""

from __future__ import annotations

import sys
from typing import TextIO

import yaml

from sweeps import store
from sweeps.backends import RayOptions, RunSummary, make_backend
from sweeps.cells import expand
from sweeps.paths import SweepRef
from sweeps.progress import Progress
from sweeps.spec import Spec, build_spec, dump_yaml
from sweeps.trial import Where

EXIT_FAILED_CELLS = 1


def where_of(spec: Spec) -> Where:
    return Where(storage=spec.storage, data_root=spec.data.root)


def run_spec(spec: Spec, *, options: RayOptions | None = None, progress: Progress | None = None,
             stream: TextIO | None = None) -> RunSummary:
    """Run every cell of `spec` that the store does not hold as done yet; see the module docstring.

    The backend is built first, so a resource problem (a trial a local Ray could never place) is
    refused before anything is written.
    """
    stream = stream or sys.stderr
    cells = expand(spec)
    backend = make_backend(spec, options)
    store.write_spec(spec.storage, spec.name, dump_yaml(spec))
    store.clean_temp_files(spec.storage, spec.name)
    print(f"sweep {spec.name!r}: {len(cells)} cells on backend {spec.backend!r}, results in "
          f"{spec.storage}/{spec.name}", file=stream)
    progress = progress or Progress(len(cells))
    summary = backend.run(cells, where_of(spec), progress=progress)
    progress.close()
    return summary


def stored_spec(ref: SweepRef, *, backend: str | None = None) -> Spec:
    """The resolved spec stored with sweep `ref` (its storage as located, `backend` overriding)."""
    text = store.read_spec_text(ref.storage, ref.sweep)
    if text is None:
        raise ValueError(f"no sweep {ref.sweep!r} in {ref.storage!r} (its spec.yaml is missing); "
                         "give the sweep directory, or the storage root with --storage")
    return build_spec(yaml.safe_load(text), storage=ref.storage, backend=backend)


def closing_lines(spec: Spec, summary: RunSummary, *, stream: TextIO | None = None) -> int:
    """Counts, each failed (or, on Ray, missing) cell with its error, how to continue; the exit code."""
    stream = stream or sys.stderr
    print(f"sweep {spec.name!r}: {len(summary.done)} done, {len(summary.failed)} failed, "
          f"{len(summary.skipped)} already done", file=stream)
    for cid in summary.failed:
        print(f"  failed {cid}: {summary.errors.get(cid)}", file=stream)
    if summary.failed:
        print(f"continue with: prunetune resume {spec.name} --storage {spec.storage} "
              "(failed and missing cells run again)", file=stream)
    return EXIT_FAILED_CELLS if summary.failed else 0
