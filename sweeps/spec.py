"""Sweep specs: YAML → frozen dataclasses, validated completely before anything starts.

Why collect every problem instead of raising at the first: a sweep that dies after an hour on a
typo in its last axis wastes a cluster; a spec that lists all its problems at once is fixed in one
edit. Each problem is one line naming the field and the allowed values.

A spec names a sweep and its axes; each axis is a scalar or a list and the grid is their product:

    name: demo
    kind: point                      # point (one sparsity per cell) | limit (LOMP curve per cell)
    model: [lenet300100]
    dataset: digits
    pruner: [dense, magnitude/global, snip]
    sparsity: [0.5, 0.9]             # or compression: [2, 10], or {compression_logspace: [1, 5, 21]}
    seed: [0, 1]
    target: direct                   # direct | effective
    train: {epochs: 5, lr: 0.1}      # fields of pruning.train.TrainConfig
    prune: {protocol: finetune, finetune_epochs: 2}
    hessian: {enabled: true, probes: 2, iterations: 20}
    resources: {cpus: 1, gpus: 0.5}
    data: {root: ./data, options: {}}

`model_dataset: [[lenet5, cifar10], [vgg16, cifar10]]` replaces the `model` × `dataset` product by
explicit pairs (the papers' grids pair each model with one data set).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import pyarrow.fs as pafs
import torch
import yaml

from pruning import data as data_lib
from pruning import models as models_lib
from pruning import quotas as quotas_lib
from pruning.limit import EIGEN_POLICIES as _POLICY_FUNCTIONS
from pruning.limit import EPSILON_RECIPES as _EPSILON_RECIPES
from pruning.lomp import default_l1
from pruning.pruners import PROTOCOLS, PRUNERS, TARGETS
from pruning.pruners.imp import rewind_iteration_for
from pruning.train import TrainConfig
from sweeps.paths import credentials_problem, default_storage, is_uri, local_path

KINDS = ("point", "limit")
HESSIAN_MODELS = ("dense", "pruned", "both")
EIGEN_POLICIES = tuple(_POLICY_FUNCTIONS)
BACKENDS = ("serial", "ray")
DEFAULT_LIMIT_GRID = tuple(round(0.005 * i, 6) for i in range(200))  # removed fractions 0, 0.005, …, 0.995
L1_SCOPES = ("all", "prunable")
EPSILON_RECIPES = tuple(_EPSILON_RECIPES)


class SpecError(ValueError):
    """A spec with problems; `problems` holds one line per problem, all of them."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class PruneSection:
    """How pruning runs, beyond the pruner's name and the sparsity."""

    protocol: Literal[PROTOCOLS] | None = None  # None: the pruner's default
    finetune_epochs: int = 1           # epochs of the `finetune` protocol (same optimizer settings)
    rounds: int | None = None          # iterative pruners (imp, synflow, snip/iterative); None: theirs
    lomp_l1: float | None = None       # λ of LOMP training; None: the authors' value for the model
    l1_scope: Literal[L1_SCOPES] = "all"  # LOMP's L1 term over every parameter (authors) | prunable
    rewind_iteration: int | None = None  # imp: rewind to the weights of this step; None: the baselines'
    limit_grid: tuple[float, ...] = DEFAULT_LIMIT_GRID  # removed fractions of a limit curve
    epsilon: float | None = None       # loss tolerance of the limit; None: from epsilon_source
    epsilon_source: Literal[EPSILON_RECIPES] = "batch_loss_std_authors"  # how ε is measured
    zero_tol: float | None = None      # |θ| ≤ zero_tol·ρ is zero curvature; None: 64 ulps of the dtype
    eigen_policy: Literal[EIGEN_POLICIES] = "abs"  # negative Hessian eigenvalues in G(R)
    limit_tolerance_pp: float = 0.1    # tolerance (percentage points) of the "tol" actual limit
    limit_rounds: int = 1              # limit cells: prune → L1-retrain under the mask → SLQ → predict, k rounds
    row_norm_quantiles: int = 0        # limit cells: exact Hessian rows at this many |w| quantiles; 0: none
    resolution_tol: float = 0.01       # limit cells: spread of s*(k) or 2·SE above this flags s* unresolved
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword options of the pruner


@dataclass(frozen=True)
class HessianSection:
    """Stochastic Lanczos quadrature of the training-loss Hessian (ALGORITHMS.md §6)."""

    enabled: bool = False
    probes: int = 4                    # Rademacher probes
    iterations: int | Literal["auto"] | None = None  # Lanczos steps per probe; None: 30, limit cells "auto"
    max_iterations: int = 512          # the cap of iterations "auto" (limit cells: grown until s* is resolved)
    workers: int = 1                   # data-parallel HVP workers (Ray backend); never changes results
    models: Literal[HESSIAN_MODELS] = "pruned"
    max_samples: int | None = None     # first N training samples; None: the whole training set


@dataclass(frozen=True)
class ResourcesSection:
    """What one cell asks of a machine; fractional GPUs let several cells share one."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True)
class DataSection:
    """Where data sets live (never part of a cell id) and options of the loader (part of it)."""

    root: str | None = None            # None: $PRUNETUNE_DATA or ./data
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Spec:
    """A validated sweep: the axes as tuples, sections as dataclasses; `source` is the YAML path."""

    name: str
    storage: str
    kind: str
    backend: str
    pairs: tuple[tuple[str, str], ...]  # (model, dataset) pairs: the product or `model_dataset`
    pruner: tuple[str, ...]
    sparsity: tuple[float, ...]
    seed: tuple[int, ...]
    target: tuple[str, ...]
    train: TrainConfig
    prune: PruneSection
    hessian: HessianSection
    resources: ResourcesSection
    data: DataSection
    model_variant: str = "default"      # pruning.models.VARIANTS
    source: str | None = None
    grids: tuple[Spec, ...] = ()        # sub-grids (each a whole Spec); the sweep is their union

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain YAML-able data (what `spec.yaml` in the store holds).

        Why resolved: generators (`compression_logspace`) and defaults are expanded, so the stored
        file re-creates exactly these cells even if defaults or generators change later.
        """
        if self.grids:
            common = {k: v for k, v in self.grids[0]._dict().items() if k in SWEEP_WIDE}
            return {**common, "grids": [{k: v for k, v in g._dict().items() if k not in SWEEP_WIDE}
                                        for g in self.grids]}
        return self._dict()

    def _dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "kind": self.kind, "backend": self.backend,
            "model_dataset": [list(p) for p in self.pairs], "pruner": list(self.pruner),
            "seed": list(self.seed), "target": list(self.target), "model_variant": self.model_variant,
        }
        if self.sparsity:
            out["sparsity"] = list(self.sparsity)
        for name in ("train", "prune", "hessian", "resources", "data"):
            out[name] = _plain(dataclasses.asdict(getattr(self, name)))
        return out


def _plain(value: Any) -> Any:
    """Tuples → lists, recursively (YAML and JSON want lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------- registries


def pruner_names() -> list[str]:
    return sorted(PRUNERS)


def loader_options(dataset: str) -> list[str]:
    """Keyword options of a data set's loader (`seed` fixes its split; `root` comes from data.root)."""
    return list(data_lib.get(dataset).option_defaults)


def check_pair(model: str, dataset: str, options: Mapping[str, Any], variant: str = "default") -> str | None:
    """Why `model` (in `variant`) cannot run on `dataset` (one line), or None when it can."""
    try:
        shape, _ = data_lib.info(dataset, **options)
        models_lib.check(model, shape, variant)
    except (ValueError, TypeError) as e:
        return f"model/dataset: {model!r} on {dataset!r}: {e}"
    return None


def layer_shapes(model: str, pairs: Sequence[tuple[str, str]], options: Mapping[str, Any]) -> list[tuple[int, ...]]:
    """The prunable weights' shapes of `model` on its first data set in `pairs`, built on the meta
    device: shapes only, nothing is allocated, even for VGG."""
    dataset = next(d for m, d in pairs if m == model)
    shape, classes = data_lib.info(dataset, **options)
    with torch.device("meta"):
        return quotas_lib.layer_shapes(models_lib.build(model, input_shape=shape, num_classes=classes))


def quota_problem(pruner: str, model: str, shapes: Sequence[tuple[int, ...]]) -> str | None:
    """Why a quota pruner is not defined on `model` with these layer shapes (uniform_plus needs a
    conv layer), or None."""
    try:
        quotas_lib.check_applicable(pruner.partition("/")[2], shapes)
    except ValueError as e:
        return f"pruner: {pruner!r} on model {model!r}: {e}"
    return None


def _rewind_problems(prune: PruneSection, train: TrainConfig, pairs: Sequence[tuple[str, str]],
                     options: Mapping[str, Any]) -> list[str]:
    """IMP rewinds to the dense run's step k: k must lie within that run (known when its length is)."""
    out = []
    for model, dataset in pairs:
        if model not in models_lib.MODELS or dataset not in data_lib.DATASETS:
            continue
        k = prune.rewind_iteration if prune.rewind_iteration is not None else rewind_iteration_for(model)
        n = data_lib.train_size(dataset, **options)
        if n is None:
            continue
        steps = train.iterations if train.iterations is not None else train.epochs * math.ceil(n / train.batch_size)
        if k > steps:
            what = "prune.rewind_iteration" if prune.rewind_iteration is not None else "the default rewind_iteration"
            out.append(f"prune.rewind_iteration: {what} {k} lies beyond the {steps} optimizer steps of the dense "
                       f"run of {model!r} on {dataset!r}; set prune.rewind_iteration ≤ {steps} "
                       "(0 rewinds to the initialization)")
    return out


# ----------------------------------------------------------------------------- type checks


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict or tp is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


_NO = object()


def _coerce(value: Any, tp: Any) -> Any:
    """`value` converted to type `tp`, or `_NO` when it does not fit.

    Floats also accept ints and numeric strings because YAML reads `1e-4` (no dot) as a string.
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        return value if value in typing.get_args(tp) else _NO
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            out = _coerce(value, arg)
            if out is not _NO:
                return out
        return _NO
    if tp is type(None):
        return None if value is None else _NO
    if tp is bool:
        return value if isinstance(value, bool) else _NO
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if tp is float:
        if isinstance(value, bool):
            return _NO
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return _NO
        return _NO
    if tp is str:
        return value if isinstance(value, str) else _NO
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return _NO
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        items = [_coerce(v, args[0]) if args else v for v in value]
        return _NO if any(i is _NO for i in items) else tuple(items)
    if origin is dict or tp is dict:
        return dict(value) if isinstance(value, Mapping) else _NO
    if isinstance(tp, type):
        return value if isinstance(value, tp) else _NO
    return value


def parse_section(cls: type, raw: Any, section: str, problems: list[str]) -> Any:
    """Dataclass `cls` from mapping `raw`; unknown keys and bad types go to `problems`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(f"{section}: expected a mapping of {sorted(f.name for f in fields(cls))}, "
                        f"got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls) if f.init]
    for key in raw:
        if key not in names:
            problems.append(f"{section}: unknown key {key!r}; allowed: {', '.join(names)}")
    values = {}
    for name in names:
        if name not in raw:
            continue
        out = _coerce(raw[name], hints[name])
        if out is _NO:
            problems.append(f"{section}.{name}: expected {_type_name(hints[name])}, got {raw[name]!r}")
        else:
            values[name] = out
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:  # TrainConfig checks its own value ranges
        for part in str(e).split("; "):
            problems.append(part if part.startswith(f"{section}.") else f"{section}: {part}")
        return cls()


# ----------------------------------------------------------------------------- axes


def _axis(raw: Mapping[str, Any], key: str, tp: Any, problems: list[str], default: Any = _NO) -> tuple:
    """Axis `key` as a tuple (a scalar is a one-value axis); bad types and duplicates reported."""
    if key not in raw or raw[key] is None:
        if default is _NO:
            problems.append(f"{key}: required (a value or a list of values)")
            return ()
        return default
    values = raw[key] if isinstance(raw[key], (list, tuple)) else [raw[key]]
    if not values:
        problems.append(f"{key}: empty list; give at least one value")
        return ()
    out = []
    for v in values:
        c = _coerce(v, tp)
        if c is _NO:
            problems.append(f"{key}: expected {_type_name(tp)}, got {v!r}")
        else:
            out.append(c)
    dups = sorted({repr(v) for v in out if out.count(v) > 1})
    if dups:
        problems.append(f"{key}: duplicate value(s) {', '.join(dups)}; each value must appear once")
    return tuple(out)


def _logspace(gen: Any, key: str, problems: list[str]) -> list[float] | None:
    """10**linspace(lo, hi, n) from `[lo, hi, n]`."""
    ok = (isinstance(gen, (list, tuple)) and len(gen) == 3
          and all(isinstance(g, (int, float)) and not isinstance(g, bool) for g in gen)
          and float(gen[2]).is_integer() and gen[2] >= 1)
    if not ok:
        problems.append(f"{key}: expected [low_exponent, high_exponent, count], got {gen!r}")
        return None
    lo, hi, n = float(gen[0]), float(gen[1]), int(gen[2])
    step = (hi - lo) / (n - 1) if n > 1 else 0.0
    return [10 ** (lo + i * step) for i in range(n)]


def _tidy(s: float) -> float:
    """Round to 12 significant digits so 1 − 1/c prints (and hashes) the same everywhere."""
    return float(f"{s:.12g}")


def _sparsities(raw: Mapping[str, Any], problems: list[str]) -> tuple[float, ...]:
    """The sparsity axis from `sparsity:` or `compression:` (s = 1 − 1/c), generators expanded."""
    if "sparsity" in raw and "compression" in raw:
        problems.append("sparsity/compression: give one of them, not both")
        return ()
    key = "compression" if "compression" in raw else "sparsity"
    value = raw.get(key)
    if value is None:
        return ()
    if isinstance(value, Mapping):
        gens = {"compression_logspace"} if key == "sparsity" else {"logspace"}
        unknown = set(value) - gens
        if unknown or len(value) != 1:
            problems.append(f"{key}: unknown generator {sorted(map(str, unknown)) or value!r}; "
                            f"allowed: {', '.join(sorted(gens))}")
            return ()
        comps = _logspace(next(iter(value.values())), f"{key}.{next(iter(value))}", problems)
        if comps is None:
            return ()
        values: list[Any] = [1 - 1 / c for c in comps]
        key_for_range = "compression"
    else:
        values = list(_axis(raw, key, float, problems))
        key_for_range = key
        if key == "compression":
            bad = [c for c in values if not (c >= 1 and math.isfinite(c))]
            if bad:
                problems.append(f"compression: {bad} outside [1, inf); compression = 1/(1 − sparsity)")
                return ()
            values = [1 - 1 / c for c in values]
    bad = [s for s in values if not 0 <= s < 1]
    if bad:
        problems.append(f"{key_for_range}: {', '.join(map(repr, bad))} outside [0, 1) (sparsity); "
                        "a fully pruned network cannot be trained")
    tidy = tuple(_tidy(s) for s in values)
    if len(set(tidy)) != len(tidy) and key_for_range == "compression":
        problems.append(f"{key}: duplicate value(s) after conversion to sparsity")
    return tidy


# ----------------------------------------------------------------------------- storage


def storage_problem(storage: str) -> str | None:
    """Why results cannot be written under `storage` (one line), or None."""
    if (why := credentials_problem(storage)) is not None:
        return why
    if is_uri(storage):
        try:
            pafs.FileSystem.from_uri(storage)
        except Exception as e:  # pyarrow raises several types for bad URIs
            return f"storage: {storage!r} is not a usable pyarrow.fs URI: {str(e).splitlines()[0]}"
        return None
    path = Path(local_path(storage))
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"storage: {str(probe)!r} is a file, not a directory; give a writable directory"
    try:  # a real write: permission bits lie for root and for read-only mounts
        fd, name = tempfile.mkstemp(prefix=".prunetune-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
        if path.exists():
            os.listdir(path)
    except OSError as e:
        return (f"storage: {str(path)!r} is not readable/writable ({e.strerror}); "
                "give a writable directory or a pyarrow.fs URI")
    return None


# ----------------------------------------------------------------------------- the spec

_TOP_KEYS = ("name", "storage", "kind", "backend", "model", "model_variant", "dataset", "model_dataset", "pruner",
             "sparsity", "compression", "seed", "target", "train", "prune", "hessian", "resources",
             "data", "grids")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _pairs(raw: Mapping[str, Any], problems: list[str]) -> tuple[tuple[str, str], ...]:
    """(model, dataset) pairs: `model_dataset` or the product of `model` and `dataset`."""
    if "model_dataset" in raw:
        if "model" in raw or "dataset" in raw:
            problems.append("model_dataset: give either model_dataset or model + dataset, not both")
        items = raw["model_dataset"]
        ok = isinstance(items, list) and items and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) for x in p)
            for p in items)
        if not ok:
            problems.append(f"model_dataset: expected a list of [model, dataset] pairs, got {items!r}")
            return ()
        pairs = tuple((m, d) for m, d in items)
        dups = sorted({repr(list(p)) for p in pairs if pairs.count(p) > 1})
        if dups:
            problems.append(f"model_dataset: duplicate pair(s) {', '.join(dups)}")
        return pairs
    models = _axis(raw, "model", str, problems)
    datasets = _axis(raw, "dataset", str, problems, default=("digits",))
    return tuple((m, d) for m in models for d in datasets)


SWEEP_WIDE = ("name", "storage", "kind", "backend", "resources")  # one value for all grids
_SECTIONS = ("train", "prune", "hessian", "data")


def _merged(base: Mapping[str, Any], grid: Mapping[str, Any]) -> dict[str, Any]:
    """A grid over the top level: axes replaced, sections merged key by key (`prune.options` too)."""
    out = dict(base)
    for given, replaced in (("model_dataset", ("model", "dataset")), ("model", ("model_dataset",)),
                            ("dataset", ("model_dataset",)), ("sparsity", ("compression",)),
                            ("compression", ("sparsity",))):
        if given in grid:  # a grid's way of giving an axis replaces the top level's other way
            for key in replaced:
                out.pop(key, None)
    for key, value in grid.items():
        if key in _SECTIONS and isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            section = {**base[key], **value}
            if key == "prune" and isinstance(base[key].get("options"), Mapping) \
                    and isinstance(value.get("options"), Mapping):
                section["options"] = {**base[key]["options"], **value["options"]}
            out[key] = section
        else:
            out[key] = value
    return out


def _build_grids(raw: Mapping[str, Any], **kwargs: Any) -> Spec:
    """A spec with `grids:`: each grid is the top level with its own keys over it (e.g. one
    model with its own recipe, or some pruners with an extra target); the sweep is their union.

    Why: a paper's grid is rarely one product (each architecture has its recipe; uniform+ exists
    for conv nets only; effective targets matter for some pruners). Each grid is validated as a
    whole spec; problems name their grid. Sweep-wide keys (`SWEEP_WIDE`) stay at the top.
    """
    grids = raw["grids"]
    if not isinstance(grids, list) or not grids or not all(isinstance(g, Mapping) for g in grids):
        raise SpecError([f"grids: expected a non-empty list of mappings (each overrides the top level), "
                         f"got {grids!r}"])
    base = {k: v for k, v in raw.items() if k != "grids"}
    problems: list[str] = []
    parts: list[Spec] = []
    for i, grid in enumerate(grids):
        for key in sorted(set(grid) & {*SWEEP_WIDE, "grids"}):
            problems.append(f"grids[{i}].{key}: sweep-wide; set it at the top level")
        try:
            parts.append(build_spec(_merged(base, {k: v for k, v in grid.items() if k not in SWEEP_WIDE}),
                                    **kwargs))
        except SpecError as e:
            problems += [f"grids[{i}]: {p}" for p in e.problems]
    if not problems:
        workers = {g.hessian.workers for g in parts if g.hessian.enabled}
        roots = {g.data.root for g in parts}
        if len(workers) > 1:
            problems.append(f"grids: hessian.workers differs between grids ({sorted(workers)}); it is sweep-wide")
        if len(roots) > 1:
            problems.append(f"grids: data.root differs between grids ({sorted(map(str, roots))}); it is sweep-wide")
    if problems:
        raise SpecError(problems)
    return dataclasses.replace(parts[0], grids=tuple(parts))


def build_spec(raw: Any, *, source: str | None = None, storage: str | None = None,
               backend: str | None = None, check_local_resources: bool = False) -> Spec:
    """Validate `raw` (parsed YAML) completely and return the Spec, or raise SpecError with all problems.

    `storage`/`backend` override the spec's (CLI flags). `check_local_resources` adds the checks
    that only matter when this machine runs the cells itself (GPUs for the serial backend).
    A spec with `grids:` is the union of several grids (see `_build_grids`).
    """
    if isinstance(raw, Mapping) and "grids" in raw:
        return _build_grids(raw, source=source, storage=storage, backend=backend,
                            check_local_resources=check_local_resources)
    problems: list[str] = []
    if not isinstance(raw, Mapping):
        raise SpecError([f"spec: expected a mapping with keys {', '.join(_TOP_KEYS)}, "
                         f"got {type(raw).__name__}"])
    for key in raw:
        if key not in _TOP_KEYS:
            problems.append(f"spec: unknown key {key!r}; allowed: {', '.join(_TOP_KEYS)}")

    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        problems.append(f"name: expected a name of letters, digits, '_', '.', '-' (not starting "
                        f"with '.' or '_'), got {name!r}")
        name = "invalid"
    kind = raw.get("kind", "point")
    if kind not in KINDS:
        problems.append(f"kind: {kind!r}; choose from {', '.join(KINDS)}")
        kind = "point"
    backend = backend or raw.get("backend", "serial")
    if backend not in BACKENDS:
        problems.append(f"backend: {backend!r}; choose from {', '.join(BACKENDS)}")
    storage = storage or raw.get("storage") or default_storage()
    if not isinstance(storage, str):
        problems.append(f"storage: expected a path or pyarrow.fs URI, got {storage!r}")
        storage = default_storage()
    if (sp := storage_problem(storage)) is not None:
        problems.append(sp)
    storage = storage if is_uri(storage) else local_path(storage)

    train = parse_section(TrainConfig, raw.get("train"), "train", problems)
    prune = _parse_prune(raw.get("prune"), problems)
    hessian = parse_section(HessianSection, raw.get("hessian"), "hessian", problems)
    resources = parse_section(ResourcesSection, raw.get("resources"), "resources", problems)
    data = parse_section(DataSection, raw.get("data"), "data", problems)
    _check_ranges(hessian, resources, prune, problems)

    pairs = _pairs(raw, problems)
    known_models, known_data = sorted(models_lib.MODELS), sorted(data_lib.DATASETS)
    for m in sorted({m for m, _ in pairs} - set(known_models)):
        problems.append(f"model: unknown {m!r}; choose from {', '.join(known_models)}")
    for d in sorted({d for _, d in pairs} - set(known_data)):
        problems.append(f"dataset: unknown {d!r}; choose from {', '.join(known_data)}")
    variant = raw.get("model_variant", "default")
    if variant not in models_lib.VARIANTS:
        problems.append(f"model_variant: {variant!r}; choose from {', '.join(models_lib.VARIANTS)}")
        variant = "default"
    for m, d in pairs:
        if m in known_models and d in known_data and (why := check_pair(m, d, data.options, variant)):
            problems.append(why)
    for d in sorted({d for _, d in pairs} & set(known_data)):
        allowed = loader_options(d)
        for key in sorted(set(data.options) - set(allowed)):
            problems.append(f"data.options: unknown {key!r} for dataset {d!r}; allowed: "
                            f"{', '.join(allowed) or 'none'}")

    default_pruner = ("lomp",) if kind == "limit" else _NO
    pruners = _axis(raw, "pruner", str, problems, default=default_pruner)
    known_pruners = pruner_names()
    for p in pruners:
        if p not in known_pruners:
            problems.append(f"pruner: unknown {p!r}; choose from {', '.join(known_pruners)}")
    _check_options(prune, [p for p in pruners if p in known_pruners], problems)
    sparsity = _sparsities(raw, problems)
    seeds = _axis(raw, "seed", int, problems, default=(0,))
    for s in seeds:
        if s < 0:
            problems.append(f"seed: {s} is negative; seeds are integers ≥ 0")
    targets = _axis(raw, "target", str, problems, default=("direct",))
    for t in targets:
        if t not in TARGETS:
            problems.append(f"target: {t!r}; choose from {', '.join(TARGETS)}")

    if kind == "limit":
        if sparsity:
            problems.append("sparsity: not used by kind 'limit' (its grid is prune.limit_grid); remove it")
        if not hessian.enabled:
            problems.append("hessian.enabled: kind 'limit' predicts from the Hessian spectrum; set it to true")
        if "effective" in targets:
            problems.append("target: kind 'limit' prunes to direct (global magnitude) fractions; "
                            "use target: direct")
        if tuple(pruners) != ("lomp",):
            problems.append(f"pruner: kind 'limit' runs 'lomp' only, got {list(pruners)}")
    elif hessian.iterations == "auto":
        problems.append("hessian.iterations: auto grows the Lanczos run until the predicted limit is resolved; "
                        "it needs kind 'limit' (give a number of iterations)")
    if kind != "limit" and any(p != "dense" for p in pruners) and not sparsity:
        problems.append("sparsity: required for pruners other than 'dense' (or give compression:)")

    l1_pruners = [p for p in pruners if p in PRUNERS and PRUNERS[p].needs_l1_training]
    if (kind == "limit" or l1_pruners) and prune.lomp_l1 is None:
        for m in sorted({m for m, _ in pairs if m in known_models}):
            try:
                default_l1(m)
            except ValueError as e:
                problems.append(str(e))

    quota_checked = [p for p in pruners if p.endswith("/uniform_plus") and p in PRUNERS]
    for m in sorted({m for m, _ in pairs if m in known_models}) if quota_checked else ():
        shapes = layer_shapes(m, pairs, data.options)  # once per model, not per pruner
        problems += [why for p in quota_checked if (why := quota_problem(p, m, shapes)) is not None]
    if "imp" in pruners:
        problems += _rewind_problems(prune, train, pairs, data.options)
    if prune.rewind_iteration is not None and "imp" not in pruners:
        problems.append(f"prune.rewind_iteration: {prune.rewind_iteration} is used by imp only, and the "
                        f"sweep's pruners are {list(pruners)}")

    if check_local_resources and backend == "serial" and resources.gpus > 0 and not torch.cuda.is_available():
        problems.append(f"resources.gpus: {resources.gpus} requested but this machine has no GPU "
                        "(the serial backend runs here); set gpus: 0 or use --backend ray")
    if problems:
        raise SpecError(problems)
    return Spec(name=name, storage=storage, kind=kind, backend=backend, pairs=pairs,
                pruner=tuple(pruners), sparsity=sparsity, seed=tuple(seeds), target=tuple(targets),
                train=train, prune=prune, hessian=hessian, resources=resources, data=data,
                model_variant=variant, source=source)


def _parse_prune(raw: Any, problems: list[str]) -> PruneSection:
    """The prune section; `limit_grid` may also be `{linspace: [start, stop, num]}`."""
    if isinstance(raw, Mapping) and isinstance(raw.get("limit_grid"), Mapping):
        gen = raw["limit_grid"]
        raw = dict(raw)
        g = gen.get("linspace")
        if set(gen) != {"linspace"} or not (isinstance(g, list) and len(g) == 3 and float(g[2]).is_integer()
                                            and g[2] >= 2):
            problems.append(f"prune.limit_grid: expected a list of removed fractions or "
                            f"{{linspace: [start, stop, num]}}, got {gen!r}")
            raw.pop("limit_grid")
        else:
            a, b, n = float(g[0]), float(g[1]), int(g[2])
            raw["limit_grid"] = [_tidy(a + i * (b - a) / (n - 1)) for i in range(n)]
    section = parse_section(PruneSection, raw, "prune", problems)
    return section


def _check_options(prune: PruneSection, pruners: list[str], problems: list[str]) -> None:
    """`prune.options` and `prune.rounds` must be taken by at least one pruner of the sweep.

    An option keyed by a pruner's name holds options for that pruner alone (and the pruners that
    hand their options to it: `snip: {batch_size: 100}` reaches snip and random/snip).
    """
    wanted = [k for k in prune.options if k not in PRUNERS] + (["rounds"] if prune.rounds is not None else [])
    for option in wanted:
        if pruners and not any(PRUNERS[p].accepts(option) for p in pruners):
            takers = sorted({o for info in PRUNERS.values() for o in info.option_defaults})
            problems.append(f"prune.options: {option!r} is taken by none of the pruners {pruners}; "
                            f"options of the registered pruners: {', '.join(takers)}")
    for name in (k for k in prune.options if k in PRUNERS):
        scoped = prune.options[name]
        if not isinstance(scoped, Mapping):
            problems.append(f"prune.options.{name}: expected a mapping of {name}'s options, got {scoped!r}")
            continue
        for option in scoped:
            if not PRUNERS[name].accepts(option):
                allowed = ", ".join(PRUNERS[name].option_defaults) or "none"
                problems.append(f"prune.options.{name}: unknown option {option!r}; allowed: {allowed}")


def _check_ranges(h: HessianSection, r: ResourcesSection, p: PruneSection, problems: list[str]) -> None:
    """Value ranges the types cannot express."""
    checks: list[tuple[bool, str]] = [
        (h.probes >= 1, f"hessian.probes: {h.probes}; must be ≥ 1"),
        (h.iterations in (None, "auto") or h.iterations >= 2,
         f"hessian.iterations: {h.iterations}; must be ≥ 2, auto or null"),
        (h.max_iterations >= 2, f"hessian.max_iterations: {h.max_iterations}; must be ≥ 2"),
        (p.resolution_tol > 0, f"prune.resolution_tol: {p.resolution_tol}; must be > 0"),
        (h.workers >= 1, f"hessian.workers: {h.workers}; must be ≥ 1"),
        (h.max_samples is None or h.max_samples >= 1, f"hessian.max_samples: {h.max_samples}; must be ≥ 1 or null"),
        (r.cpus > 0, f"resources.cpus: {r.cpus}; must be > 0"),
        (r.gpus >= 0, f"resources.gpus: {r.gpus}; must be ≥ 0 (fractions allowed)"),
        (p.finetune_epochs >= 0, f"prune.finetune_epochs: {p.finetune_epochs}; must be ≥ 0"),
        (p.rounds is None or p.rounds >= 1, f"prune.rounds: {p.rounds}; must be ≥ 1 or null"),
        (p.lomp_l1 is None or p.lomp_l1 >= 0, f"prune.lomp_l1: {p.lomp_l1}; must be ≥ 0 or null"),
        (p.epsilon is None or p.epsilon > 0, f"prune.epsilon: {p.epsilon}; must be > 0 or null"),
        (p.zero_tol is None or p.zero_tol >= 0, f"prune.zero_tol: {p.zero_tol}; must be ≥ 0 or null"),
        (p.rewind_iteration is None or p.rewind_iteration >= 0,
         f"prune.rewind_iteration: {p.rewind_iteration}; must be ≥ 0 or null"),
        (p.limit_tolerance_pp >= 0, f"prune.limit_tolerance_pp: {p.limit_tolerance_pp}; must be ≥ 0"),
        (p.limit_rounds >= 1, f"prune.limit_rounds: {p.limit_rounds}; must be ≥ 1"),
        (p.row_norm_quantiles >= 0, f"prune.row_norm_quantiles: {p.row_norm_quantiles}; must be ≥ 0 (0: none)"),
        (p.limit_grid is None or all(0 <= s < 1 for s in p.limit_grid),
         f"prune.limit_grid: removed fractions must lie in [0, 1), got {p.limit_grid}"),
    ]
    problems.extend(msg for ok, msg in checks if not ok)


def read_yaml(path: str | os.PathLike) -> Any:
    """Parsed YAML of `path`; unreadable files and YAML syntax errors become one-line SpecErrors."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SpecError([f"spec: cannot read {str(path)!r}: {e.strerror}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise SpecError([f"spec: invalid YAML in {str(path)!r}{line}: "
                         f"{getattr(e, 'problem', None) or e}"]) from None


def load_spec(path: str | os.PathLike, **overrides: Any) -> Spec:
    """Read and validate the spec at `path` (see `build_spec` for the overrides)."""
    return build_spec(read_yaml(path), source=str(path), **overrides)


def dump_yaml(spec: Spec) -> str:
    """The resolved spec as YAML text (stored beside the results as spec.yaml)."""
    return yaml.safe_dump(spec.to_dict(), sort_keys=False)
