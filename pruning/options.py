"""Typed options: frozen dataclasses whose fields carry their type, range and help.

Why one mechanism for everything a user sets — a spec's sections, `TrainConfig`, each pruner's
options, each loader's options, Ray's flags: a value is checked where it is declared, by the same
rules, so a string never reaches a hash where a number or a boolean belongs, and every refusal reads
alike (`batches: -3; expected an integer ≥ 1`). Declaring an option is one line:

    @dataclass(frozen=True)
    class SnipOptions:
        batches: int = option(10, "batches the mean gradient is taken over", ge=1)
        batch_size: int = option(128, "images per scoring batch", ge=1)

        def __post_init__(self) -> None:
            validate(self)

The type is the annotation (`int`, `float`, `bool`, `str`, `Literal[...]`, `tuple[int, ...]`, a
union with `None`, `dict`); ranges are `ge`/`gt`/`le`/`lt` (for a tuple, of every item); floats are
finite. `validate` raises `OptionError` with every problem at once, a cross-field rule included
(`validate(self, rule(ok, "field", "why"))`). `parse(cls, raw)` is the YAML side: unknown keys,
values converted to the declared type (YAML reads `1e-4` as a string, so a float takes a numeric
string), then the class's own checks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal

__all__ = ["UNFIT", "Bounds", "OptionError", "Problem", "coerce", "defaults", "describe", "field_help",
           "names", "option", "parse", "rule", "validate"]


@dataclass(frozen=True)
class Bounds:
    """An inclusive (ge, le) or exclusive (gt, lt) range of a number, or of every item of a tuple."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, x: float) -> bool:
        return ((self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
                and (self.le is None or x <= self.le) and (self.lt is None or x < self.lt))

    def text(self) -> str:
        parts = [f"{op} {_num(v)}" for op, v in (("≥", self.ge), (">", self.gt), ("≤", self.le), ("<", self.lt))
                 if v is not None]
        return " and ".join(parts)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def option(default: Any = MISSING, help: str = "", *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, default_factory: Any = MISSING) -> Any:
    """A dataclass field with its help text and range (see the module docstring)."""
    metadata = {"help": help, "bounds": Bounds(ge, gt, le, lt)}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Problem:
    """One refused value: the field and what is wrong with it (`'x'; expected an integer ≥ 1`)."""

    field: str
    text: str

    def line(self, where: str = "") -> str:
        return f"{where}.{self.field}: {self.text}" if where else f"{self.field}: {self.text}"


class OptionError(ValueError):
    """Every problem of one options object; `lines(where)` gives them one line each."""

    def __init__(self, problems: list[Problem], where: str = ""):
        self.problems = list(problems)
        self.where = where
        super().__init__("; ".join(p.line(where) for p in self.problems))

    def lines(self, where: str | None = None) -> list[str]:
        return [p.line(self.where if where is None else where) for p in self.problems]


def rule(ok: bool, field: str, text: str) -> Problem | None:
    """A cross-field rule for `validate`: the problem when `ok` is false."""
    return None if ok else Problem(field, text)


# ----------------------------------------------------------------------------- types


UNFIT = object()  # what `coerce` returns for a value that does not fit its type


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _args(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def coerce(value: Any, tp: Any, *, strict: bool = False) -> Any:
    """`value` as type `tp`, or `UNFIT` when it does not fit (ranges are not checked).

    Not strict (YAML): an int is a float, a numeric string is a float (YAML reads `1e-4` as a
    string), a list is a tuple. Strict (a value set in Python): no strings for numbers.
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        return value if any(value == a and type(value) is type(a) for a in _args(tp)) else UNFIT
    if _is_union(tp):
        for arg in _args(tp):
            out = coerce(value, arg, strict=strict)
            if out is not UNFIT:
                return out
        return UNFIT
    if tp is type(None):
        return None if value is None else UNFIT
    if tp is bool:
        return value if isinstance(value, bool) else UNFIT
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else UNFIT
    if tp is float:
        if isinstance(value, bool):
            return UNFIT
        if isinstance(value, str) and not strict:
            try:
                value = float(value)
            except ValueError:
                return UNFIT
        if isinstance(value, (int, float)) and math.isfinite(value):
            return value if strict else float(value)
        return UNFIT
    if tp is str:
        return value if isinstance(value, str) else UNFIT
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return UNFIT
        args = _args(tp)
        if args and args[-1] is Ellipsis:
            items = [coerce(v, args[0], strict=strict) for v in value]
        elif args:
            if len(value) != len(args):
                return UNFIT
            items = [coerce(v, a, strict=strict) for v, a in zip(value, args)]
        else:
            items = list(value)
        return UNFIT if any(i is UNFIT for i in items) else tuple(items)
    if origin is dict or tp is dict:
        return dict(value) if isinstance(value, Mapping) else UNFIT
    if isinstance(tp, type):
        return value if isinstance(value, tp) else UNFIT
    return value


def describe(tp: Any, bounds: Bounds | None = None) -> str:
    """What a field of type `tp` accepts, in words: `an integer ≥ 1`, `null or a number > 0`."""
    b = bounds.text() if bounds is not None else ""
    suffix = f" {b}" if b else ""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in _args(tp))
    if _is_union(tp):
        arms = [a for a in _args(tp) if a is not type(None)]
        text = " or ".join(describe(a, bounds) for a in arms)
        return f"null or {text}" if len(arms) < len(_args(tp)) else text
    if tp is bool:
        return "true or false"
    if tp is int:
        return f"an integer{suffix}"
    if tp is float:
        return f"a number{suffix}"
    if tp is str:
        return "a string"
    if origin in (tuple, list):
        args = _args(tp)
        item = args[0] if args else Any
        noun = {int: "integers", float: "numbers", str: "strings"}.get(item, "values")
        if args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} {noun}{suffix}"
        return f"a list of {noun}{suffix}"
    if origin is dict or tp is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _bounds(f: dataclasses.Field) -> Bounds | None:
    return f.metadata.get("bounds")


def field_help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, tuple):
        return [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return []


def field_problem(f: dataclasses.Field, tp: Any, value: Any, *, strict: bool = True) -> Problem | None:
    """Whether `value` fits field `f` (type `tp`): its type, then its range."""
    bounds = _bounds(f)
    got = coerce(value, tp, strict=strict)
    if got is UNFIT or (bounds is not None and not all(bounds.holds(x) for x in _numbers(got))):
        return Problem(f.name, f"{value!r}; expected {describe(tp, bounds)}")
    return None


# ----------------------------------------------------------------------------- objects


def names(cls: type) -> list[str]:
    return [f.name for f in fields(cls) if f.init]


def defaults(cls: type) -> dict[str, Any]:
    """Every option with its default (a factory's product for mutable defaults)."""
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def validate(obj: Any, *rules: Problem | None, where: str = "") -> None:
    """Check every field of a dataclass instance (type and range) and the given cross-field rules;
    raise OptionError with all problems (its message prefixed with `where`, e.g. `train`). Call it
    from `__post_init__`."""
    tps = hints(type(obj))
    problems = [p for f in fields(obj) if (p := field_problem(f, tps[f.name], getattr(obj, f.name))) is not None]
    bad = {p.field for p in problems}
    problems += [r for r in rules if r is not None and r.field not in bad]
    if problems:
        raise OptionError(problems, where)


def parse(cls: type, raw: Any, where: str = "") -> tuple[Any, list[str]]:
    """An instance of dataclass `cls` from a YAML mapping, or None, and every problem as a line.

    Unknown keys, values of the wrong type and values out of range are all reported, each once,
    prefixed with `where` (`train`, `prune.options.snip`); values are converted to the declared
    type first (see `coerce`).
    """
    prefix = f"{where}: " if where else ""
    allowed = names(cls)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        return None, [f"{prefix}expected a mapping of {', '.join(allowed) or 'nothing'}, got {raw!r}"]
    problems = [f"{prefix}unknown key {k!r}; allowed: {', '.join(allowed) or 'none'}"
                for k in raw if k not in allowed]
    tps = hints(cls)
    values = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        if (p := field_problem(f, tps[f.name], raw[f.name], strict=False)) is not None:
            problems.append(p.line(where))
        else:
            values[f.name] = coerce(raw[f.name], tps[f.name])
    if problems:
        return None, problems
    try:
        return cls(**values), []
    except OptionError as e:
        return None, e.lines(where)
