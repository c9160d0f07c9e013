"""The one run path of a sweep, whatever the backend: spec → cells → spec.yaml → backend → summary.

    preflight(spec, options)     what the backend could never run, refused before anything starts
                                 (`validate` asks the same)
    run_spec(spec, options)      preflight, store the resolved spec, run the cells the store does not
                                 hold yet, return the RunSummary
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
from sweeps.backends import RayOptions, RunSummary, backend_class, make_backend
from sweeps.cells import expand
from sweeps.paths import SweepRef
from sweeps.progress import Progress
from sweeps.spec import Spec, SpecError, build_spec, dump_yaml
from sweeps.trial import Where


def where_of(spec: Spec) -> Where:
    return Where(storage=spec.storage, data_root=spec.data.root)


def preflight(spec: Spec, options: RayOptions | None = None) -> None:
    """Raise SpecError with everything the spec's backend could never run (`Backend.check`: a GPU
    this machine lacks, a Ray trial no local Ray could place, a GPU share Ray does not take)."""
    if problems := backend_class(spec.backend).check(spec, options):
        raise SpecError(problems)


def run_spec(spec: Spec, *, options: RayOptions | None = None, progress: Progress | None = None,
             stream: TextIO | None = None) -> RunSummary:
    """Run every cell of `spec` that the store does not hold as done yet; see the module docstring.

    `preflight` comes first, so a resource problem is refused before anything is written.
    """
    stream = stream or sys.stderr
    preflight(spec, options)
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


def closing_lines(spec: Spec, summary: RunSummary, *, stream: TextIO | None = None) -> bool:
    """Counts, each failed (or, on Ray, missing) cell with its error, how to continue; whether all
    cells are done."""
    stream = stream or sys.stderr
    print(f"sweep {spec.name!r}: {len(summary.done)} done, {len(summary.failed)} failed, "
          f"{len(summary.skipped)} already done", file=stream)
    for cid in summary.failed:
        print(f"  failed {cid}: {summary.errors.get(cid)}", file=stream)
    if summary.failed:
        print(f"continue with: prunetune resume {spec.name} --storage {spec.storage} "
              "(failed and missing cells run again)", file=stream)
    return not summary.failed
