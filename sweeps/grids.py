"""`grids:` — a spec as the union of sub-grids, each the top level with its own keys over it.

Why: a paper's grid is rarely one product (each architecture has its recipe; uniform+ exists for
conv nets only; effective targets matter for some pruners). Each grid is built and checked as a
whole spec (problems name their grid); sweep-wide keys (`SWEEP_WIDE`) stay at the top, and the
settings one sweep can have only once (HVP workers, the data root) must agree across grids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from sweeps.parse import SpecError
from sweeps.sections import SECTIONS, SWEEP_WIDE, Spec

# a grid's way of giving an axis replaces the top level's other ways of giving it
_REPLACES = {"model_dataset": ("model", "dataset"), "model": ("model_dataset",), "dataset": ("model_dataset",),
             "sparsity": ("compression",), "compression": ("sparsity",)}


def merged(base: Mapping[str, Any], grid: Mapping[str, Any]) -> dict[str, Any]:
    """A grid over the top level: axes replaced, sections merged key by key (`prune.options` too)."""
    out = dict(base)
    for given, replaced in _REPLACES.items():
        if given in grid:
            for key in replaced:
                out.pop(key, None)
    for key, value in grid.items():
        if key in SECTIONS and isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            section = {**base[key], **value}
            if key == "prune" and isinstance(base[key].get("options"), Mapping) \
                    and isinstance(value.get("options"), Mapping):
                section["options"] = {**base[key]["options"], **value["options"]}
            out[key] = section
        else:
            out[key] = value
    return out


def agree(parts: list[Spec]) -> list[str]:
    """What one sweep can have only once is the same in every grid."""
    out = []
    workers = {g.hessian.workers for g in parts if g.hessian.enabled}
    roots = {g.data.root for g in parts}
    if len(workers) > 1:
        out.append(f"grids: hessian.workers differs between grids ({sorted(workers)}); it is sweep-wide")
    if len(roots) > 1:
        out.append(f"grids: data.root differs between grids ({sorted(map(str, roots))}); it is sweep-wide")
    return out


def build_grids(raw: Mapping[str, Any], build: Callable[..., Spec], **kwargs: Any) -> Spec:
    """The union spec of `raw["grids"]`, each grid built by `build` (`sweeps.spec.build_spec`)."""
    grids = raw["grids"]
    if not isinstance(grids, list) or not grids or not all(isinstance(g, Mapping) for g in grids):
        raise SpecError([f"grids: expected a non-empty list of mappings (each overrides the top level), "
                         f"got {grids!r}"])
    base = {k: v for k, v in raw.items() if k != "grids"}
    problems: list[str] = []
    parts: list[Spec] = []
    for i, grid in enumerate(grids):
        problems += [f"grids[{i}].{key}: sweep-wide; set it at the top level"
                     for key in sorted(set(grid) & {*SWEEP_WIDE, "grids"})]
        try:
            parts.append(build(merged(base, {k: v for k, v in grid.items() if k not in SWEEP_WIDE}), **kwargs))
        except SpecError as e:
            problems += [f"grids[{i}]: {p}" for p in e.problems]
    if not problems:
        problems = agree(parts)
    if problems:
        raise SpecError(problems)
    return dataclasses.replace(parts[0], grids=tuple(parts))
