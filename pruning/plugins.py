"""Plugins: pruners, models and data sets registered from a user's own code, and where each came from.

Why: a researcher compares *their* method with the baselines. Every pruner here is "scores → a
nested family of masks" (docs/algorithms.md §3), so a score function registered from outside
(`pruning.pruners.register_pruner`, `pruning.models.register_model`, `pruning.data.register_dataset`)
gets direct and effective targets, quotas, the sweeps and the tables exactly as a built-in does.

Two ways a plugin module is imported (importing it is what registers its names):
- named in a spec's `plugins: [my_lab.pruners]`: `import_modules` imports it before the spec is
  validated, looking first where Python looks, then in the given directories (the spec's own
  directory and the current one), so a module beside the spec needs no installing;
- an installed package's entry point in the group `prunetune.plugins` (`[project.entry-points."prunetune.plugins"]
  my_lab = "my_lab.pruners"`): `load_entry_points` imports every one of them, as pytest loads its
  plugins; `sweeps` calls it before it reads a spec.

Where a registration came from is its `Origin`: the module that called `register_*` and that
module's version — the installed distribution's version when the module's file belongs to an
installed (non-editable) distribution, else `sha256:` of its source (the file, or every `.py` file of
its top-level package), so that editing a plugin changes its version. Sweeps record both in every
trials row and warn when one sweep mixes versions. This module imports no torch and no registry.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata as metadata
import inspect
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ENTRY_POINT_GROUP = "prunetune.plugins"
UNKNOWN_VERSION = "unknown"  # a module without a source file (an interactive session)
HASH_DIGITS = 16


@dataclass(frozen=True)
class Origin:
    """Where a registered pruner, model or data set came from: the registering module and its version."""

    module: str
    version: str


def caller_origin(depth: int = 2) -> Origin:
    """The Origin of the module `depth` frames up (1: the caller of this function; `register_*` asks
    for 2: the module that called it)."""
    frame = inspect.currentframe()
    for _ in range(depth):
        frame = frame.f_back if frame is not None else None
    name = frame.f_globals.get("__name__", "__main__") if frame is not None else "__main__"
    return Origin(name, module_version(name))


def refuse_taken(kind: str, name: str, registry: dict, builtin: Iterable[str]) -> None:
    """One line when `name` is registered already: a built-in, or an earlier plugin (named with its module)."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"{kind} name {name!r}: expected a non-empty string without surrounding spaces")
    if name in builtin:
        raise ValueError(f"{kind} {name!r} is a built-in {kind}; register yours under another name")
    if name in registry:
        origin = getattr(registry[name], "plugin", None)
        by = f" by plugin module {origin.module!r}" if origin is not None else ""
        raise ValueError(f"{kind} {name!r} is registered already{by}; register yours under another name")


# ----------------------------------------------------------------------------- source and version


def _file_of(module: ModuleType | None) -> Path | None:
    path = getattr(module, "__file__", None)
    return Path(path).resolve() if path else None


def package_root(name: str) -> Path | None:
    """What holds module `name`'s code: its top-level package directory, or its own `.py` file;
    None for a module without a source file."""
    top = name.partition(".")[0]
    top_module = sys.modules.get(top)
    top_file = _file_of(top_module)
    if top_file is None:
        return None
    if top_file.name == "__init__.py":
        return top_file.parent
    return top_file if top == name else None


def source_files(name: str) -> list[Path]:
    """The source files whose contents are module `name`'s version: its top-level package's `.py`
    files (sorted), or its own file."""
    root = package_root(name)
    if root is None:
        return []
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def distribution_of(name: str) -> metadata.Distribution | None:
    """The installed distribution whose recorded files contain module `name`'s file (an editable
    install records none of its sources: None, so its version is the hash of its source)."""
    path = _file_of(sys.modules.get(name))
    if path is None:
        return None
    top = name.partition(".")[0]
    candidates = [top]
    if {"site-packages", "dist-packages"} & set(path.parts):  # an import name unlike its distribution's
        candidates += _packages_distributions().get(top, [])
    for dist_name in dict.fromkeys(candidates):
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            continue
        base = Path(dist.locate_file("")).resolve()
        if path.is_relative_to(base) and str(path.relative_to(base)) in {str(f) for f in dist.files or []}:
            return dist
    return None


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    """Import name → distributions (a scan of every installed distribution: about a second, once)."""
    return metadata.packages_distributions()


def module_version(name: str) -> str:
    """The version of module `name` (see the module docstring): a distribution's version, else
    `sha256:<16 hex>` of its source files, else 'unknown'."""
    dist = distribution_of(name)
    if dist is not None:
        return dist.version
    files = source_files(name)
    if not files:
        return UNKNOWN_VERSION
    root = package_root(name)
    base = root.parent if root is not None else files[0].parent
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(base)).encode() + b"\0" + f.read_bytes() + b"\0")
    return f"sha256:{h.hexdigest()[:HASH_DIGITS]}"


def shippable_source(name: str) -> Path | None:
    """What a cluster needs to import module `name`: its package directory or `.py` file (Ray's
    `py_modules`), or None when it is installed as a distribution (install it on every node, like
    prunetune) or has no source."""
    if distribution_of(name) is not None:
        return None
    return package_root(name)


# ----------------------------------------------------------------------------- importing


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def import_modules(names: Sequence[str], search: Sequence[str | Path] = ()) -> list[str]:
    """Import the plugin modules `names` (registering what they register); every problem one line.

    A module Python cannot find on its path is looked for in `search` (appended to `sys.path`, so that
    a plugin's own later imports find their neighbours too). A module imported already is not
    imported again.
    """
    problems = []
    for name in names:
        if not isinstance(name, str) or not name or not all(p.isidentifier() for p in name.split(".")):
            problems.append(f"plugins: {name!r} is not a module name (e.g. my_lab.pruners)")
            continue
        if name in sys.modules:
            continue
        for d in search:
            d = str(Path(d).resolve())
            if d not in sys.path:
                sys.path.append(d)
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and (name == e.name or name.startswith(f"{e.name}.")):
                where = ", ".join(str(Path(d).resolve()) for d in search)
                problems.append(f"plugins: no module {name!r} on the Python path{f' or in {where}' if where else ''} "
                                f"(add its directory to PYTHONPATH, or run where it lies)")
            else:
                problems.append(f"plugins: module {name!r} failed to import: {_first_line(e)}")
        except Exception as e:  # a plugin's own error (a duplicate name, a bad option class, a typo)
            problems.append(f"plugins: module {name!r} failed to import: {_first_line(e)}")
    return problems


def entry_points() -> list[metadata.EntryPoint]:
    """The installed packages' `prunetune.plugins` entry points, by name."""
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def load_entry_points() -> list[str]:
    """Import every `prunetune.plugins` entry point (a module whose import registers; importing twice
    is Python's no-op); every problem one line naming the entry point and its distribution."""
    problems = []
    for ep in entry_points():
        try:
            ep.load()
        except Exception as e:  # any error of someone else's package: named, never a traceback
            dist = f" (distribution {ep.dist.name} {ep.dist.version})" if ep.dist is not None else ""
            problems.append(f"plugins: entry point {ep.name!r} = {ep.value!r}{dist} failed to load: {_first_line(e)}")
    return problems


def load(names: Sequence[str] = (), search: Sequence[str | Path] = ()) -> list[str]:
    """The installed entry points, then the named modules (`import_modules`); all problems."""
    return load_entry_points() + import_modules(names, search)


__all__ = ["ENTRY_POINT_GROUP", "Origin", "caller_origin", "entry_points", "import_modules", "load",
           "load_entry_points", "module_version", "refuse_taken", "shippable_source", "source_files"]
