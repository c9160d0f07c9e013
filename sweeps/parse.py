"""YAML → a Spec: the top-level keys, the axes (scalars or lists, generators expanded) and the
sections (`pruning.options.parse` of each section's dataclass), with every problem as one line.

Why this module only converts: whether a value *fits* its field is the section's own check
(`sweeps.sections`), and whether values fit *each other* (a model on a data set, a pruner's options,
a limit sweep's pruner) is `sweeps.rules`. Parsing never stops at the first problem: a field that
cannot be read keeps its default, so the rules still run and the user sees every problem at once.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pruning.options import UNFIT, coerce, describe, parse as parse_options
from sweeps import sections
from sweeps.paths import default_storage, is_uri, local_path
from sweeps.sections import BACKENDS, KINDS, SECTIONS, Spec

TOP_KEYS = ("name", "storage", "kind", "backend", "model", "model_variant", "dataset", "model_dataset", "pruner",
            "sparsity", "compression", "seed", "target", "train", "prune", "hessian", "resources",
            "data", "grids")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NO = object()


class SpecError(ValueError):
    """A spec with problems; `problems` holds one line per problem, all of them."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# ----------------------------------------------------------------------------- files


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


def dump_yaml(spec: Spec) -> str:
    """The resolved spec as YAML text (stored beside the results as spec.yaml)."""
    return yaml.safe_dump(spec.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------- axes


def axis(raw: Mapping[str, Any], key: str, tp: Any, problems: list[str], default: Any = _NO) -> tuple:
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
        c = coerce(v, tp)
        if c is UNFIT:
            problems.append(f"{key}: {v!r}; expected {describe(tp)}")
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


def tidy(s: float) -> float:
    """Round to 12 significant digits so 1 − 1/c prints (and hashes) the same everywhere."""
    return float(f"{s:.12g}")


def sparsities(raw: Mapping[str, Any], problems: list[str]) -> tuple[float, ...]:
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
        values = list(axis(raw, key, float, problems))
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
    out = tuple(tidy(s) for s in values)
    if len(set(out)) != len(out) and key_for_range == "compression":
        problems.append(f"{key}: duplicate value(s) after conversion to sparsity")
    return out


def pairs(raw: Mapping[str, Any], problems: list[str]) -> tuple[tuple[str, str], ...]:
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
        out = tuple((m, d) for m, d in items)
        dups = sorted({repr(list(p)) for p in out if out.count(p) > 1})
        if dups:
            problems.append(f"model_dataset: duplicate pair(s) {', '.join(dups)}")
        return out
    models = axis(raw, "model", str, problems)
    datasets = axis(raw, "dataset", str, problems, default=("digits",))
    return tuple((m, d) for m in models for d in datasets)


# ----------------------------------------------------------------------------- sections


def _limit_grid(raw: Any, problems: list[str]) -> Any:
    """The prune section with `limit_grid: {linspace: [start, stop, num]}` expanded to a list."""
    if not (isinstance(raw, Mapping) and isinstance(raw.get("limit_grid"), Mapping)):
        return raw
    gen, raw = raw["limit_grid"], dict(raw)
    g = gen.get("linspace")
    ok = (set(gen) == {"linspace"} and isinstance(g, list) and len(g) == 3
          and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in g)
          and float(g[2]).is_integer() and g[2] >= 2)
    if not ok:
        problems.append(f"prune.limit_grid: expected a list of removed fractions or "
                        f"{{linspace: [start, stop, num]}}, got {gen!r}")
        raw.pop("limit_grid")
        return raw
    a, b, n = float(g[0]), float(g[1]), int(g[2])
    raw["limit_grid"] = [tidy(a + i * (b - a) / (n - 1)) for i in range(n)]
    return raw


def section(name: str, raw: Any, problems: list[str]) -> Any:
    """Section `name` from its YAML mapping; on a problem, the section's defaults (and the lines)."""
    cls = sections.section_class(name)
    if name == "prune":
        raw = _limit_grid(raw, problems)
    value, found = parse_options(cls, raw, name)
    problems += found
    return value if value is not None else cls()


# ----------------------------------------------------------------------------- the spec


def choice(raw: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str, problems: list[str]) -> str:
    value = raw.get(key, default)
    if value not in allowed:
        problems.append(f"{key}: {value!r}; choose from {', '.join(allowed)}")
        return default
    return value


def storage_of(raw: Mapping[str, Any], override: str | None, problems: list[str]) -> str:
    """The storage root: the CLI's, else the spec's, else $PRUNETUNE_STORAGE or ./results."""
    storage = override or raw.get("storage") or default_storage()
    if not isinstance(storage, str):
        problems.append(f"storage: expected a path or pyarrow.fs URI, got {storage!r}")
        storage = default_storage()
    return storage if is_uri(storage) else local_path(storage)


def parse_spec(raw: Any, *, source: str | None = None, storage: str | None = None,
               backend: str | None = None) -> tuple[Spec, list[str]]:
    """The Spec that `raw` (parsed YAML, no `grids:`) describes, and every problem of conversion.

    `storage`/`backend` override the spec's (CLI flags). Fields that cannot be read keep their
    defaults in the returned Spec (which is then only good for running the rules on it).
    """
    if not isinstance(raw, Mapping):
        raise SpecError([f"spec: expected a mapping with keys {', '.join(TOP_KEYS)}, got {type(raw).__name__}"])
    problems = [f"spec: unknown key {key!r}; allowed: {', '.join(TOP_KEYS)}" for key in raw if key not in TOP_KEYS]
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        problems.append(f"name: expected a name of letters, digits, '_', '.', '-' (not starting "
                        f"with '.' or '_'), got {name!r}")
        name = "invalid"
    kind = choice(raw, "kind", KINDS, "point", problems)
    if backend is None:
        backend = choice(raw, "backend", BACKENDS, "serial", problems)
    parts = {s: section(s, raw.get(s), problems) for s in SECTIONS}
    variant = raw.get("model_variant", "default")
    if not isinstance(variant, str):
        problems.append(f"model_variant: {variant!r}; expected a string")
        variant = "default"
    spec = Spec(
        name=name, storage=storage_of(raw, storage, problems), kind=kind, backend=backend,
        pairs=pairs(raw, problems),
        pruner=axis(raw, "pruner", str, problems, default=("lomp",) if kind == "limit" else _NO),
        sparsity=sparsities(raw, problems),
        seed=axis(raw, "seed", int, problems, default=(0,)),
        target=axis(raw, "target", str, problems, default=("direct",)),
        **parts, model_variant=variant, source=source)
    return spec, problems
