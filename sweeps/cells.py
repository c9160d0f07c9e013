"""Cells: the grid of a spec expanded into one frozen `Cell` per trial, each with a stable id.

Why a content hash: the id names the cell's Parquet files, so the same configuration must get the
same id on every run and machine (that is what makes re-runs resume and added axis values run only
the new cells), and anything that changes the result must change the id. Where results land
(storage), how many CPUs/GPUs/HVP workers a cell uses, and which backend runs it never change the
result, so they are not hashed.

Fields left at their defaults are omitted from the hash (open_lth's rule): adding a new field with a
default later keeps every existing id valid. Settings a cell does not use are normalised away (a
`dense` cell has no sparsity, a cell without SLQ has no probe count), so they cannot split one
configuration into several ids.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from sweeps.spec import HessianSection, PruneSection, Spec, lomp_l1_for, pruner_info

ID_LENGTH = 16  # hex digits of sha256: 64 bits, collision-free for any realistic sweep

# prune-section fields each kind of cell uses (others are dropped from the cell)
_LOMP_PRUNE = ("lomp_l1",)
_LIMIT_PRUNE = ("lomp_l1", "limit_grid", "epsilon", "eigen_policy", "limit_tolerance_pp")


@dataclass(frozen=True)
class Cell:
    """One trial: everything that determines its result (plus the sweep name and the id)."""

    sweep: str
    kind: str                    # "point" | "limit"
    model: str
    dataset: str
    pruner: str
    sparsity: float | None       # target sparsity; None for limit cells (their grid is prune.limit_grid)
    target: str                  # "direct" | "effective"
    seed: int
    protocol: str                # resolved: "none" | "finetune" | "rewind" | "train"
    train: dict[str, Any]        # pruning.train.TrainConfig fields
    prune: dict[str, Any]        # the prune settings this cell uses
    hessian: dict[str, Any]      # SLQ settings ({} when disabled)
    data: dict[str, Any]         # data-set loader options
    cell_id: str = field(default="", compare=False)

    def config(self) -> dict[str, Any]:
        """The full resolved config (no sweep name, no id): what the `config` column stores."""
        d = dataclasses.asdict(self)
        d.pop("sweep")
        d.pop("cell_id")
        return _jsonable(d)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for transport (Ray's param_space) and `from_dict`."""
        return {**self.config(), "sweep": self.sweep, "cell_id": self.cell_id}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cell:
        """The cell of `to_dict`; its id is recomputed and must match (a guard against drift)."""
        fields_ = {f.name for f in dataclasses.fields(cls)}
        cell = with_id(cls(**{k: v for k, v in d.items() if k in fields_ and k != "cell_id"}))
        if d.get("cell_id") and d["cell_id"] != cell.cell_id:
            raise ValueError(f"cell_id {d['cell_id']!r}: does not match its config ({cell.cell_id!r})")
        return cell

    @property
    def label(self) -> str:
        """A short human description for progress lines."""
        s = "" if self.sparsity is None else f" s={self.sparsity:.4g}"
        t = "" if self.target == "direct" else f" ({self.target})"
        return f"{self.model}/{self.dataset} {self.pruner}{s}{t} seed={self.seed}"


def _jsonable(value: Any) -> Any:
    """Tuples → lists, recursively; JSON has no tuples and ids must not depend on the container."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"cell config value {value!r}: must be finite")
    return value


@functools.cache
def _defaults() -> dict[str, dict[str, Any]]:
    from sweeps.spec import train_config_class

    return {
        "train": _jsonable(dataclasses.asdict(train_config_class()())),
        "prune": _jsonable(dataclasses.asdict(PruneSection())),
        "hessian": _jsonable(dataclasses.asdict(HessianSection())),
        "data": {},
    }


def compute_id(cell: Cell) -> str:
    """sha256 of the cell's config without fields at their defaults, as `ID_LENGTH` hex digits."""
    config = cell.config()
    for section, defaults in _defaults().items():
        config[section] = {k: v for k, v in config[section].items() if defaults.get(k, object()) != v}
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


def with_id(cell: Cell) -> Cell:
    return dataclasses.replace(cell, cell_id=compute_id(cell))


def accepts(pruner: str, option: str) -> bool:
    """Whether `pruner` takes keyword `option` (so a sweep-wide option reaches only those that do)."""
    info = pruner_info(pruner)
    if info is None:
        return False
    if option in info.options:
        return True
    family, _, scheme = pruner.partition("/")  # random/snip passes its options on to snip
    return family == "random" and pruner_info(scheme) is not None and accepts(scheme, option)


def resolve_protocol(pruner: str, override: str | None) -> str:
    """What happens after pruning: the spec's override, else the pruner's default.

    Pruners at init train the sparse net ("train"); `dense` has nothing to do after ("none").
    """
    if pruner == "dense":
        return "none"
    if override is not None:
        return override
    info = pruner_info(pruner)
    return getattr(info, "protocol", None) or "train"


def _section(obj: Any, keep: tuple[str, ...] | None = None) -> dict[str, Any]:
    d = _jsonable(dataclasses.asdict(obj))
    return d if keep is None else {k: d[k] for k in keep}


def expand(spec: Spec) -> list[Cell]:
    """All cells of `spec` in a stable order (pairs, pruner, sparsity, target, seed), deduplicated.

    `dense` gives one cell per model/dataset/seed, whatever the sparsity and target axes hold.
    """
    train = _jsonable(dataclasses.asdict(spec.train))
    hessian = {} if not spec.hessian.enabled else {
        k: v for k, v in _section(spec.hessian).items() if k != "workers"}
    data = _jsonable(dict(spec.data.options))
    cells: dict[str, Cell] = {}
    for model, dataset in spec.pairs:
        for pruner in spec.pruner:
            for sparsity, target, prune in _variants(spec, model, pruner):
                for seed in spec.seed:
                    cell = with_id(Cell(
                        sweep=spec.name, kind=spec.kind, model=model, dataset=dataset,
                        pruner=pruner, sparsity=sparsity, target=target, seed=seed,
                        protocol=resolve_protocol(pruner, spec.prune.protocol) if spec.kind == "point"
                        else "none",
                        train=train, prune=prune, hessian=hessian, data=data,
                    ))
                    cells.setdefault(cell.cell_id, cell)
    return list(cells.values())


def _variants(spec: Spec, model: str, pruner: str) -> list[tuple[float | None, str, dict[str, Any]]]:
    """(sparsity, target, prune settings) of one model × pruner."""
    p = spec.prune
    if spec.kind == "limit":
        prune = _section(p, _LIMIT_PRUNE)
        prune["lomp_l1"] = lomp_l1_for(p.lomp_l1, model)
        return [(None, "direct", prune)]
    if pruner == "dense":
        return [(0.0, "direct", {})]
    prune = {"rounds": p.rounds if accepts(pruner, "rounds") else None,
             "options": {k: v for k, v in p.options.items() if accepts(pruner, k)}}
    protocol = resolve_protocol(pruner, p.protocol)
    if protocol == "finetune":
        prune["finetune_epochs"] = p.finetune_epochs
    if getattr(pruner_info(pruner), "needs_l1_training", False):
        prune["lomp_l1"] = lomp_l1_for(p.lomp_l1, model)
    return [(s, t, prune) for s in spec.sparsity for t in spec.target]
