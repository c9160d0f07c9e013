"""The sections of a sweep spec, and the Spec: frozen dataclasses that check themselves.

Every field is a `pruning.options.option`: its type is the annotation, its range and help sit
beside it, and constructing a section with a value that does not fit raises (`validate` in
`__post_init__`), exactly as `TrainConfig`, a pruner's options and a loader's options do. So a
section is checked the same way wherever it comes from (YAML through `sweeps.parse`, Python, a
stored spec.yaml), and the README's spec reference reads off these declarations.

A section only says what the user asked for; `sweeps.cells.expand` resolves what each cell runs
(a pruner's own defaults, the authors' λ and Lanczos depth for a limit cell), so no default here
is restated below it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from pruning.limit import EIGEN_POLICIES as _POLICY_FUNCTIONS
from pruning.limit import EPSILON_RECIPES as _EPSILON_RECIPES
from pruning.options import option, validate
from pruning.pruners import PROTOCOLS, PRUNERS
from pruning.train import TrainConfig

KINDS = ("point", "limit")
HESSIAN_MODELS = ("dense", "pruned", "both")
EIGEN_POLICIES = tuple(_POLICY_FUNCTIONS)
BACKENDS = ("serial", "ray")
DEFAULT_LIMIT_GRID = tuple(round(0.005 * i, 6) for i in range(200))  # removed fractions 0, 0.005, …, 0.995
L1_SCOPES = ("all", "prunable")
EPSILON_RECIPES = tuple(_EPSILON_RECIPES)
SWEEP_WIDE = ("name", "storage", "kind", "backend", "resources")  # one value for all grids of a sweep


@dataclass(frozen=True)
class PruneSection:
    """How pruning runs, beyond the pruner's name and the sparsity (point and limit cells)."""

    protocol: Literal[PROTOCOLS] | None = option(
        None, "after pruning: train | rewind | finetune | none; null: the pruner's default")
    finetune_epochs: int = option(1, "epochs of the `finetune` protocol (same optimizer settings)", ge=0)
    rounds: int | None = option(None, "rounds of the iterative pruners that take `rounds`; null: theirs", ge=1)
    lomp_l1: float | None = option(None, "λ of LOMP training; null: the authors' value for the model", ge=0)
    l1_scope: Literal[L1_SCOPES] = option("all", "what LOMP's L1 term sums over: every parameter "
                                          "(the authors) | the prunable weights")
    rewind_iteration: int | None = option(None, "imp: rewind survivors to the weights of this optimizer "
                                          "step; null: 1000, VGG16 2000 (0: the initialization)", ge=0)
    limit_grid: tuple[float, ...] = option(DEFAULT_LIMIT_GRID, "removed fractions of a limit curve "
                                           "(or {linspace: [start, stop, num]})", ge=0, lt=1)
    epsilon: float | None = option(None, "loss tolerance ε of the limit; null: measured by epsilon_source", gt=0)
    epsilon_source: Literal[EPSILON_RECIPES] = option("batch_loss_std_authors", "how ε is measured")
    zero_tol: float | None = option(None, "|θ| ≤ zero_tol·ρ is zero curvature; null: 64 ulps of the dtype", ge=0)
    eigen_policy: Literal[EIGEN_POLICIES] = option("abs", "negative Hessian eigenvalues in G(R)")
    limit_tolerance_pp: float = option(0.1, "tolerance (percentage points) of the `tol` actual limit", ge=0)
    limit_rounds: int = option(1, "limit cells: prune → L1-retrain under the mask → SLQ → predict, k rounds", ge=1)
    row_norm_quantiles: int = option(0, "limit cells: exact Hessian rows at this many |w| quantiles; 0: none",
                                     ge=0)
    resolution_tol: float = option(0.01, "limit cells: s* is unresolved when the spread of s*(k) over the last "
                                   "quarter of the Lanczos run, or twice its standard error over probes, exceeds "
                                   "this (and iterations: auto grows the run until the spread is below it)", gt=0)
    options: dict[str, Any] = option(default_factory=dict, help="the pruners' options: a bare option reaches "
                                     "every pruner that takes it, one under a pruner's name that pruner alone")

    def __post_init__(self) -> None:
        validate(self, where="prune")

    def given_options(self, pruner: str) -> dict[str, tuple[Any, str]]:
        """The options this section gives `pruner`, each with the spec path it was given at.

        In order of precedence: a bare option of `options` (if the pruner takes it), `rounds`,
        options scoped to the pruner it delegates to (random/snip takes `options.snip`), options
        scoped to the pruner itself. One rule, read by validation and by `expand` alike.
        """
        info = PRUNERS[pruner]
        out = {k: (v, f"prune.options.{k}") for k, v in self.options.items()
               if k not in PRUNERS and info.accepts(k)}
        if self.rounds is not None and info.accepts("rounds"):
            out["rounds"] = (self.rounds, "prune.rounds")
        for scope in (info.delegate, pruner):
            scoped = self.options.get(scope) if scope is not None else None
            if isinstance(scoped, dict):
                out.update({k: (v, f"prune.options.{scope}.{k}") for k, v in scoped.items()})
        return out


@dataclass(frozen=True)
class HessianSection:
    """Stochastic Lanczos quadrature of the training-loss Hessian (docs/algorithms.md §6)."""

    enabled: bool = option(False, "estimate the Hessian spectrum by SLQ")
    probes: int = option(4, "Rademacher probes", ge=1)
    iterations: int | Literal["auto"] | None = option(
        None, "Lanczos steps per probe, or auto (limit cells: grow from the authors' depth until s* is "
        "resolved); null: 30, limit cells auto", ge=2)
    max_iterations: int = option(512, "the cap of iterations: auto", ge=2)
    workers: int = option(1, "data-parallel HVP workers (Ray backend); never changes results", ge=1)
    models: Literal[HESSIAN_MODELS] = option("pruned", "which model's spectrum: dense | pruned | both")
    max_samples: int | None = option(None, "first N training samples; null: the whole training set", ge=1)

    def __post_init__(self) -> None:
        validate(self, where="hessian")


@dataclass(frozen=True)
class ResourcesSection:
    """What one cell asks of a machine; fractional GPUs let several cells share one (Ray)."""

    cpus: float = option(1.0, "CPUs per cell (also its torch thread count)", gt=0)
    gpus: float = option(0.0, "GPUs per cell; fractions below 1 share a GPU on Ray", ge=0)

    def __post_init__(self) -> None:
        validate(self, where="resources")


@dataclass(frozen=True)
class DataSection:
    """Where data sets live (never part of a cell id) and options of the loader (part of it)."""

    root: str | None = option(None, "data root; null: $PRUNETUNE_DATA or ./data")
    options: dict[str, Any] = option(default_factory=dict, help="the data set loader's options")

    def __post_init__(self) -> None:
        validate(self, where="data")


SECTIONS = ("train", "prune", "hessian", "resources", "data")


def section_class(name: str) -> type:
    """The dataclass of section `name`, looked up when asked (so a test can swap one in)."""
    return TrainConfig if name == "train" else globals()[f"{name.capitalize()}Section"]


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
        for name in SECTIONS:
            out[name] = _plain(dataclasses.asdict(getattr(self, name)))
        return out


def _plain(value: Any) -> Any:
    """Tuples → lists, recursively (YAML and JSON want lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
