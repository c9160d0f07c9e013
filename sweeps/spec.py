"""Sweep specs: YAML → a validated `Spec`, every problem found before anything starts.

    name: demo
    kind: point                      # point (one sparsity per cell) | limit (LOMP curve per cell)
    model: [lenet300100]
    dataset: digits
    pruner: [dense, magnitude/global, snip]
    sparsity: [0.5, 0.9]             # or compression: [2, 10], or {compression_logspace: [1, 5, 21]}
    seed: [0, 1]
    target: direct                   # direct | effective
    train: {epochs: 5, lr: 0.1}      # fields of pruning.train.TrainConfig
    prune: {protocol: finetune, finetune_epochs: 2, options: {snip: {batches: 4}}}
    hessian: {enabled: true, probes: 2, iterations: 20}
    resources: {cpus: 1, gpus: 0.5}
    data: {root: ./data, options: {}}

`build_spec` is the composition of the jobs, each in its module: `sweeps.parse` turns YAML into the
sections of `sweeps.sections` (each checks its own fields), `sweeps.rules` checks what the values
must obey together, `sweeps.grids` makes a `grids:` spec the union of its grids. What a backend
adds (resources this machine or Ray can never give) is `Backend.check`, asked by
`sweeps.runner.preflight` for `validate` and `run` alike.

Why collect every problem instead of raising at the first: a sweep that dies after an hour on a
typo in its last axis wastes a cluster; a spec that lists all its problems at once is fixed in one
edit. Each problem is one line naming the field and the allowed values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sweeps import rules
from sweeps.grids import build_grids
from sweeps.parse import SpecError, dump_yaml, parse_spec, read_yaml
from sweeps.sections import Spec


def build_spec(raw: Any, *, source: str | None = None, storage: str | None = None,
               backend: str | None = None) -> Spec:
    """Validate `raw` (parsed YAML) completely and return the Spec, or raise SpecError with all problems.

    `storage`/`backend` override the spec's (CLI flags).
    """
    if isinstance(raw, Mapping) and "grids" in raw:
        return build_grids(raw, build_spec, source=source, storage=storage, backend=backend)
    spec, problems = parse_spec(raw, source=source, storage=storage, backend=backend)
    problems += rules.check(spec)
    if problems:
        raise SpecError(problems)
    return spec


def load_spec(path: str | os.PathLike, **overrides: Any) -> Spec:
    """Read and validate the spec at `path` (see `build_spec` for the overrides)."""
    return build_spec(read_yaml(path), source=str(path), **overrides)


__all__ = ["Spec", "SpecError", "build_spec", "dump_yaml", "load_spec", "read_yaml"]
