"""Cells: the grid of a spec expanded into one frozen, typed `Cell` per trial, each with a stable id.

Why typed, with every default resolved here: the trial reads fields, never `cfg.get(key, default)`,
so no default is restated below the spec where nobody sees it. What a cell computes is exactly what
its fields say, and its id hashes those fields.

Why a content hash: the id names the cell's Parquet files, so the same configuration must get the
same id on every run and machine (re-runs resume, added axis values run only the new cells), and
anything that changes the result must change the id. Where results land (storage), how many CPUs,
GPUs or HVP workers a cell uses, and which backend runs it never change the result: not hashed.

A field is left out of the hash only when its value equals its *original* default
(`sweeps.defaults`): adding a field never changes old ids, and a default that changes later gives the
cells that use it new ids instead of silently changing what an old id computes. Settings a cell does
not use are not part of it (a `dense` cell has no sparsity options, a cell without SLQ has no
probe count), so they cannot split one configuration into several ids.

The hashed layout (`Cell.config()`) is the JSON the ids were first defined on, so ids of cells whose
fields sit at their original defaults are those of every earlier version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pruning.data import DATASETS
from pruning.lomp import LimitRule, default_l1, lomp_config
from pruning.options import parse as parse_options
from pruning.pruners import PRUNERS
from pruning.pruners.imp import rewind_iteration_for
from pruning.train import TrainConfig
from sweeps.defaults import original
from sweeps.sections import Spec

ID_LENGTH = 16  # hex digits of sha256: 64 bits, collision-free for any realistic sweep
POINT_ITERATIONS = 30  # Lanczos depth of a point cell's SLQ when the spec gives none
AUTO = "auto"  # hessian.iterations of a limit cell that grows its Lanczos run until s* is resolved


@dataclass(frozen=True)
class PointPrune:
    """How a point cell prunes, beyond the pruner's name and the sparsity (defaults resolved)."""

    options: Mapping[str, Any] = field(default_factory=dict)  # all of the pruner's options, `rounds` too
    finetune_epochs: int | None = None   # epochs of the `finetune` protocol; None for other protocols
    lomp_l1: float | None = None         # λ of the L1-trained dense model (lomp); None for other pruners
    rewind_iteration: int | None = None  # imp: the optimizer step whose weights survivors rewind to

    def layout(self) -> dict[str, Any]:
        opts = dict(self.options)
        out: dict[str, Any] = {}
        if "rounds" in opts:
            out["rounds"] = opts.pop("rounds")
        out["options"] = opts
        if self.finetune_epochs is not None:
            out["finetune_epochs"] = self.finetune_epochs
        if self.lomp_l1 is not None:
            out["lomp_l1"] = self.lomp_l1
        if self.rewind_iteration is not None:
            out["rewind_iteration"] = self.rewind_iteration
        return out

    @classmethod
    def from_layout(cls, d: Mapping[str, Any]) -> PointPrune:
        opts = dict(d.get("options") or {})
        if "rounds" in d:
            opts["rounds"] = d["rounds"]
        return cls(options=opts, finetune_epochs=d.get("finetune_epochs"), lomp_l1=d.get("lomp_l1"),
                   rewind_iteration=d.get("rewind_iteration"))


@dataclass(frozen=True)
class LimitPrune:
    """How a limit cell measures its pruning limit (docs/algorithms.md §7; defaults resolved)."""

    lomp_l1: float                       # λ of LOMP training
    limit_grid: tuple[float, ...]        # removed fractions of the one-shot curve (0 is always added)
    epsilon: float | None                # loss tolerance; None: measured by `epsilon_source`
    eigen_policy: str                    # negative Hessian eigenvalues in G(R): abs | drop | flat
    limit_tolerance_pp: float            # tolerance (percentage points) of the "tol" actual limit
    epsilon_source: str                  # pruning.limit.EPSILON_RECIPES: how ε is measured ("given": by the spec)
    zero_tol: float | None               # |θ| ≤ zero_tol·ρ is zero curvature; None: 64 ulps of the dtype
    limit_rounds: int                    # rounds of prune → L1-retrain under the mask → SLQ → predict
    row_norm_quantiles: int              # exact Hessian rows at this many quantiles of |w|; 0: none
    resolution_tol: float                # spread of s*(k) or 2·SE above this: unresolved (and auto's goal)

    def layout(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    def rule(self) -> LimitRule:
        """What `pruning.lomp.limit_round` needs of this section."""
        return LimitRule(grid=self.limit_grid, policy=self.eigen_policy, zero_tol=self.zero_tol,
                         tolerance_pp=self.limit_tolerance_pp, resolution_tol=self.resolution_tol,
                         epsilon=self.epsilon, epsilon_source=self.epsilon_source)

    @classmethod
    def from_layout(cls, d: Mapping[str, Any]) -> LimitPrune:
        """The section of a layout; a field the layout predates had its original default
        (`sweeps.defaults`) in that computation."""
        values = {f.name: d[f.name] if f.name in d else original(f"prune.{f.name}") for f in dataclasses.fields(cls)}
        values["limit_grid"] = tuple(float(s) for s in values["limit_grid"])
        return cls(**values)


@dataclass(frozen=True)
class SLQSettings:
    """Stochastic Lanczos quadrature of a cell (docs/algorithms.md §6); workers are not part of a cell."""

    probes: int                 # Rademacher probes
    iterations: int | str       # Lanczos steps per probe, or "auto" (limit cells: grow until s* is resolved)
    models: str                 # dense | pruned | both
    max_samples: int | None     # first N training samples; None: the whole training set
    max_iterations: int | None = None  # the cap of "auto"; None for a fixed depth (not part of that cell)

    @property
    def adaptive(self) -> bool:
        return self.iterations == AUTO

    def layout(self) -> dict[str, Any]:
        out = {"enabled": True, **dataclasses.asdict(self)}
        if out["max_iterations"] is None:
            del out["max_iterations"]  # a fixed depth has no cap: its layout is the one ids were defined on
        return out

    @classmethod
    def from_layout(cls, d: Mapping[str, Any]) -> SLQSettings | None:
        if not d:
            return None
        it = d["iterations"]
        return cls(probes=int(d["probes"]), iterations=it if it == AUTO else int(it), models=d["models"],
                   max_samples=d["max_samples"], max_iterations=d.get("max_iterations"))


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
    train: TrainConfig
    prune: PointPrune | LimitPrune
    hessian: SLQSettings | None  # None: no SLQ
    data: Mapping[str, Any]      # data-set loader options, defaults resolved (`seed` fixes the split)
    model_variant: str = "default"  # pruning.models.VARIANTS: today's models | the authors' builds
    cell_id: str = field(default="", compare=False)

    def config(self) -> dict[str, Any]:
        """The full resolved config (no sweep name, no id): what the `config` column stores."""
        return _jsonable({
            "kind": self.kind, "model": self.model, "dataset": self.dataset, "pruner": self.pruner,
            "sparsity": self.sparsity, "target": self.target, "seed": self.seed,
            "protocol": self.protocol, "train": dataclasses.asdict(self.train),
            "prune": self.prune.layout(),
            "hessian": {} if self.hessian is None else self.hessian.layout(),
            "data": dict(self.data), "model_variant": self.model_variant,
        })

    def to_dict(self) -> dict[str, Any]:
        """Plain data for transport (Ray's param_space) and `from_dict`."""
        return {**self.config(), "sweep": self.sweep, "cell_id": self.cell_id}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Cell:
        """The cell of `to_dict`; its id is recomputed and must match (a guard against drift)."""
        train = dict(d["train"])
        train["milestones"] = tuple(train.get("milestones") or ())
        prune_cls = LimitPrune if d["kind"] == "limit" else PointPrune
        cell = with_id(cls(
            sweep=d["sweep"], kind=d["kind"], model=d["model"], dataset=d["dataset"], pruner=d["pruner"],
            sparsity=d["sparsity"], target=d["target"], seed=int(d["seed"]), protocol=d["protocol"],
            train=TrainConfig(**train), prune=prune_cls.from_layout(d["prune"]),
            hessian=SLQSettings.from_layout(d["hessian"]), data=dict(d["data"]),
            model_variant=d["model_variant"],
        ))
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
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"cell config value {value!r}: must be finite")
    return value


# ----------------------------------------------------------------------------- the id


def _changed(values: Mapping[str, Any], key_of: Any) -> dict[str, Any]:
    """The entries of `values` that differ from their original default (`key_of(name)` names it)."""
    return {k: v for k, v in values.items() if v != _jsonable(original(key_of(k)))}


def hashed_config(cell: Cell) -> dict[str, Any]:
    """What the id hashes: the config without fields at their original defaults."""
    config = cell.config()
    config.update(_changed({"model_variant": config.pop("model_variant")}, lambda k: k))
    config["train"] = _changed(config["train"], lambda k: f"train.{k}")
    config["hessian"] = _changed(config["hessian"], lambda k: f"hessian.{k}")
    config["data"] = _changed(config["data"], lambda k: f"data.{cell.dataset}.{k}")
    prune = config["prune"]
    if cell.kind == "limit":
        config["prune"] = _changed(prune, lambda k: f"prune.{k}")
    else:
        options = _changed(prune.pop("options"), lambda k: f"prune.{cell.pruner}.{k}")  # rounds too
        config["prune"] = _changed(prune, lambda k: f"prune.{cell.pruner}.{k}" if k == "rounds"
                                   else f"prune.{k}")
        if options:
            config["prune"]["options"] = options
    return config


def compute_id(cell: Cell) -> str:
    """sha256 of `hashed_config(cell)` as `ID_LENGTH` hex digits."""
    text = json.dumps(hashed_config(cell), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


def with_id(cell: Cell) -> Cell:
    return dataclasses.replace(cell, cell_id=compute_id(cell))


# ----------------------------------------------------------------------------- expansion


def resolve_protocol(pruner: str, override: str | None) -> str:
    """What happens after pruning: the spec's override, else the pruner's default.

    Pruners at init train the sparse net ("train"); `dense` has nothing to do after ("none").
    """
    if pruner == "dense":
        return "none"
    return override if override is not None else PRUNERS[pruner].protocol


def pruner_options(spec: Spec, pruner: str) -> dict[str, Any]:
    """Every option of `pruner`, typed (`PrunerInfo.options`): its defaults, overridden by what the
    spec gives it (`PruneSection.given_options`: bare options it takes, `rounds`, scoped ones)."""
    given = {k: v for k, (v, _) in spec.prune.given_options(pruner).items()}
    return dataclasses.asdict(PRUNERS[pruner].make_options(given))


def lomp_l1(spec: Spec, model: str) -> float:
    """λ of a LOMP model: the spec's, else the authors' value (`pruning.lomp.default_l1`)."""
    return spec.prune.lomp_l1 if spec.prune.lomp_l1 is not None else default_l1(model)


def train_config(spec: Spec, model: str, pruner: str, kind: str) -> TrainConfig:
    """What trains the cell's model: the spec's `train`, with LOMP's recipe (the L1 term, SGD
    momentum 0.9, no weight decay; `pruning.lomp.lomp_config`) for a limit cell or an L1 pruner.

    Resolved here so that the id hashes the training that really runs."""
    if kind == "limit" or PRUNERS[pruner].needs_l1_training:
        return lomp_config(spec.train, lomp_l1(spec, model), l1_scope=spec.prune.l1_scope)
    return spec.train


def slq_settings(spec: Spec, model: str) -> SLQSettings | None:
    """The SLQ of a cell; the Lanczos depth defaults to 30, for a limit cell to "auto" (from the
    authors' depth, `pruning.lomp.limit_iterations`, grown until s* is resolved or the cap)."""
    h = spec.hessian
    if not h.enabled:
        return None
    iterations = h.iterations
    if iterations is None:
        iterations = AUTO if spec.kind == "limit" else POINT_ITERATIONS
    cap = h.max_iterations if iterations == AUTO else None
    return SLQSettings(h.probes, iterations, h.models, h.max_samples, max_iterations=cap)


def data_options(spec: Spec, dataset: str) -> dict[str, Any]:
    """Every loader option of `dataset`, typed (`DataInfo.options`): its defaults, overridden by the
    spec's `data.options`."""
    typed, problems = parse_options(DATASETS[dataset].options, spec.data.options)
    if problems:
        raise ValueError(f"data.options of {dataset!r}: {'; '.join(problems)}")
    return dataclasses.asdict(typed)


def _prune_sections(spec: Spec, model: str, pruner: str) -> list[tuple[float | None, str, PointPrune | LimitPrune]]:
    """(sparsity, target, prune section) of one model × pruner."""
    p = spec.prune
    if spec.kind == "limit":
        return [(None, "direct", LimitPrune(
            lomp_l1=lomp_l1(spec, model), limit_grid=tuple(p.limit_grid), epsilon=p.epsilon,
            eigen_policy=p.eigen_policy, limit_tolerance_pp=p.limit_tolerance_pp,
            epsilon_source=p.epsilon_source if p.epsilon is None else "given", zero_tol=p.zero_tol,
            limit_rounds=p.limit_rounds, row_norm_quantiles=p.row_norm_quantiles,
            resolution_tol=p.resolution_tol))]
    if pruner == "dense":
        return [(0.0, "direct", PointPrune())]
    section = PointPrune(
        options=pruner_options(spec, pruner),
        finetune_epochs=p.finetune_epochs if resolve_protocol(pruner, p.protocol) == "finetune" else None,
        lomp_l1=lomp_l1(spec, model) if PRUNERS[pruner].needs_l1_training else None,
        rewind_iteration=(None if pruner != "imp" else p.rewind_iteration if p.rewind_iteration is not None
                          else rewind_iteration_for(model)),
    )
    return [(s, t, section) for s in spec.sparsity for t in spec.target]


def expand(spec: Spec) -> list[Cell]:
    """All cells of `spec` in a stable order (pairs, pruner, sparsity, target, seed), deduplicated.

    `dense` gives one cell per model/dataset/seed, whatever the sparsity and target axes hold.
    A spec with grids gives the union of its grids' cells, in grid order.
    """
    if spec.grids:
        union = {c.cell_id: c for grid in spec.grids for c in expand(grid)}
        return list(union.values())
    cells: dict[str, Cell] = {}
    for model, dataset in spec.pairs:
        data = data_options(spec, dataset)
        hessian = slq_settings(spec, model)
        for pruner in spec.pruner:
            protocol = resolve_protocol(pruner, spec.prune.protocol) if spec.kind == "point" else "none"
            train = train_config(spec, model, pruner, spec.kind)
            for sparsity, target, prune in _prune_sections(spec, model, pruner):
                for seed in spec.seed:
                    cell = with_id(Cell(
                        sweep=spec.name, kind=spec.kind, model=model, dataset=dataset, pruner=pruner,
                        sparsity=sparsity, target=target, seed=seed, protocol=protocol,
                        train=train, prune=prune, hessian=hessian, data=data,
                        model_variant=spec.model_variant,
                    ))
                    cells.setdefault(cell.cell_id, cell)
    return list(cells.values())
