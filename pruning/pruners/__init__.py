"""The pruner registry (docs/algorithms.md §5) and `prune`, the one entry point.

Every pruner is a function `(model, sparsity, *, data, seed, **options) -> Plan`: a nested family
of masks indexed by the number k of removed weights (see `plan.py`). `prune` picks k — the direct
target k = N − round((1 − s)N), or the largest k whose *effective* sparsity stays ≤ the target
(bisection, §3) — applies that mask through `pruning.masks.apply_masks`, and reports both
sparsities. Keeping "score" and "choose k" apart is what lets all 20 pruners target either kind of
sparsity with one code path.

    from pruning.pruners import prune
    result = prune(model, "random/igq", 0.99, target="effective", seed=0)
    result.direct_sparsity, result.effective_sparsity, result.removed_count
"""

from __future__ import annotations

import dataclasses
import inspect
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pruning import masks as masks_lib
from pruning import quotas as quotas_lib
from pruning import sparsity as sparsity_lib
from pruning.options import defaults, parse
from pruning.pruners import dense, grasp, imp, lamp, magnitude, random, rare_gems, snip, synflow
from pruning.pruners.plan import Plan, removal_for
from pruning.pruners.target import largest_removal

WHEN = ("init", "after")  # prune at initialization, or after training the dense model
PROTOCOLS = ("train", "rewind", "finetune", "none")  # what happens to the pruned net next
TARGETS = ("direct", "effective")
# arguments a Python caller supplies (the trial gives imp its training and rewinding point; synflow
# takes the input shape of a model that carries none), never a spec: they are not options
RUNTIME_ARGS = ("train_fn", "rewind_state", "input_shape")


@dataclass(frozen=True)
class NoOptions:
    """The options of a pruner that has none."""


@dataclass(frozen=True)
class PrunerInfo:
    """A registry entry: what the pruner is, when it runs, what the trial does around it, and its
    options — a frozen dataclass of `pruning.options` fields (type, range, help, default), the one
    declaration that the Python call, the trial, `prunetune prune` and spec validation all read."""

    name: str
    doc: str
    when: str  # "init" | "after"
    needs_data: bool  # False: data-free (dense, random, synflow, magnitude, lamp, lomp, imp's own)
    protocol: str  # default post-pruning protocol: "train" | "rewind" | "finetune" | "none"
    needs_l1_training: bool  # the dense model is trained with the L1 term first (lomp)
    fn: Callable[..., Plan] = field(repr=False)
    options: type = NoOptions  # the options dataclass; its field defaults are the pruner's defaults
    delegate: str | None = None  # whose scoped spec options it takes too (random/snip: `prune.options.snip`)

    def __post_init__(self) -> None:
        if self.when not in WHEN:
            raise ValueError(f"{self.name}: when {self.when!r}: choose from {', '.join(WHEN)}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"{self.name}: protocol {self.protocol!r}: choose from {', '.join(PROTOCOLS)}")

    @property
    def option_defaults(self) -> dict[str, Any]:
        """The options a user may set (spec `prune.options`, `prune.rounds`) with their defaults."""
        return defaults(self.options)

    def accepts(self, option: str) -> bool:
        """Whether a user may set `option` for this pruner (a sweep-wide option reaches only these)."""
        return option in self.option_defaults

    def make_options(self, given: Mapping[str, Any]) -> Any:
        """The typed options from `given` (defaults for the rest); a bad one is a one-line ValueError
        naming the pruner, the option, the value and what is allowed."""
        typed, problems = parse(self.options, given)
        if problems:
            raise ValueError(f"pruner {self.name!r}: {'; '.join(problems)}")
        return typed


def _init(name: str, doc: str, fn: Callable[..., Plan], needs_data: bool = False, options: type = NoOptions,
          delegate: str | None = None) -> PrunerInfo:
    return PrunerInfo(name, doc, "init", needs_data, "train", False, fn, options, delegate)


def _after(name: str, doc: str, fn: Callable[..., Plan], protocol: str = "rewind", l1: bool = False,
           options: type = NoOptions) -> PrunerInfo:
    return PrunerInfo(name, doc, "after", False, protocol, l1, fn, options)


_MASK_QUOTA_OPTIONS = {"snip": snip.SnipOptions, "synflow": synflow.SynflowOptions}  # random/snip, random/synflow


_QUOTA_DOCS = {
    "uniform": "every layer at the same sparsity",
    "uniform_plus": "uniform, first layer dense, last layer at most 80% sparse (Gale et al.)",
    "erk": "Erdős–Rényi-Kernel densities with RigL-style redistribution (Evci et al.)",
    "igq": "Ideal Gas Quotas d_l = 1/(1 + F n_l) (Vysogorets & Kempe)",
    "smart_ratio": "smart-ratio keep ratios, classifier at 30% (Su et al.)",
    "snip": "the per-layer sparsities of a SNIP mask at the same target",
    "synflow": "the per-layer sparsities of a SynFlow mask at the same target",
}

_ENTRIES: list[PrunerInfo] = [
    _init("dense", "no pruning (sparsity 0): the dense reference", dense.prune_dense),
    *[
        _init(f"random/{q}", f"random survivors per layer; quota: {_QUOTA_DOCS[q]}", random.make(q),
              needs_data=(q == "snip"), options=_MASK_QUOTA_OPTIONS.get(q, NoOptions),
              delegate=q if q in _MASK_QUOTA_OPTIONS else None)
        for q in quotas_lib.SCHEMES
    ],
    _after("magnitude/global", "smallest |w| of the trained weights, over all layers", magnitude.prune_global),
    *[
        _after(f"magnitude/{q}", f"smallest |w| per layer; quota: {_QUOTA_DOCS[q]}", magnitude.make(q))
        for q in ("uniform", "uniform_plus", "erk", "igq")
    ],
    _after("lamp", "LAMP scores w_u² / Σ_{v≥u} w_v² per layer, pruned globally (Lee et al.)", lamp.prune_lamp),
    _init("snip", "SNIP |ḡ ⊙ w| at initialization, ḡ averaged over batches", snip.prune_snip, needs_data=True,
          options=snip.SnipOptions),
    _init("snip/iterative", "SNIP re-scored on a fresh batch for 300 rounds, exponential schedule",
          snip.prune_snip_iterative, needs_data=True, options=snip.IterativeSnipOptions),
    _init("grasp", "GraSP: prune the highest −w ⊙ (H g) (Wang et al.)", grasp.prune_grasp, needs_data=True,
          options=grasp.GraspOptions),
    _init("synflow", "SynFlow: 100 data-free rounds of ∂R/∂w ⊙ w on |w| (Tanaka et al.)", synflow.prune_synflow,
          options=synflow.SynflowOptions),
    _after("imp", "iterative magnitude pruning, 20% per round, rewind and retrain (needs train_fn, rewind_state)",
           imp.prune_imp, options=imp.ImpOptions),
    _after("lomp", "global magnitude on a model trained with the L1 term; no retraining (Zhang et al.)",
           magnitude.prune_global, protocol="none", l1=True),
    _init("rare_gems", "Rare Gems: scores on frozen signed-constant weights, L2 on scores, bottom-k every "
          "iter_period epochs (Sreenivasan et al.)", rare_gems.prune_rare_gems, needs_data=True,
          options=rare_gems.GemMinerOptions),
]
PRUNERS: dict[str, PrunerInfo] = {info.name: info for info in _ENTRIES}


def get(name: str) -> PrunerInfo:
    if name not in PRUNERS:
        raise ValueError(f"pruner {name!r}: choose from {', '.join(PRUNERS)}")
    return PRUNERS[name]


@dataclass(frozen=True)
class PruneResult:
    """What `prune` did: the target, the mask it chose, and both sparsities of the pruned model."""

    pruner: str
    target: str  # "direct" | "effective"
    requested_sparsity: float  # the target value
    direct_sparsity: float  # of the applied mask
    effective_sparsity: float  # achieved
    removed_count: int  # k: weights removed by the applied mask
    n_prunable: int
    evaluations: int  # effective-mask evaluations of the bisection (0 for a direct target)
    target_met: bool  # False only when the unpruned net already exceeds an effective target
    seconds: float
    report: Any = field(repr=False)  # pruning.sparsity.SparsityReport of the pruned model

    @property
    def direct_compression(self) -> float:
        return masks_lib.compression(self.direct_sparsity)

    @property
    def effective_compression(self) -> float:
        return masks_lib.compression(self.effective_sparsity)


def plan_for(model: nn.Module, pruner: str, sparsity: float, *, data=None, seed: int = 0, **options) -> Plan:
    """Validate the request and build the pruner's nested plan (nothing is applied to the model)."""
    info = get(pruner)
    s = masks_lib.check_sparsity(sparsity)
    if info.needs_data and data is None:
        raise ValueError(f"data: pruner {pruner!r} needs data (a Split or an iterable of (x, y) batches)")
    typed = info.make_options({k: v for k, v in options.items() if k not in RUNTIME_ARGS})
    runtime = {k: v for k, v in options.items() if k in RUNTIME_ARGS}
    params = inspect.signature(info.fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if unexpected := sorted(k for k in runtime if k not in params and not takes_any):
        raise ValueError(f"pruner {pruner!r}: takes no argument {unexpected[0]!r}")
    return info.fn(model, s, data=data, seed=seed, **dataclasses.asdict(typed), **runtime)


def prune(
    model: nn.Module,
    pruner: str,
    sparsity: float,
    *,
    target: str = "direct",
    data=None,
    seed: int = 0,
    **options,
) -> PruneResult:
    """Prune `model` in place with `pruner` to `sparsity`, direct or effective (§3).

    `data`: a `pruning.data.Split` or an iterable of (x, y) batches (snip, snip/iterative, grasp,
    random/snip). `options` go to the pruner: `rounds=` (synflow, snip/iterative, imp),
    `batches=`/`batch_size=` (snip, grasp), `temperature=`/`balanced=`/`samples_per_class=` (grasp),
    `train_fn=`/`rewind_state=` (imp, required).
    """
    if target not in TARGETS:
        raise ValueError(f"target {target!r}: choose from {', '.join(TARGETS)}")
    start = time.perf_counter()
    plan = plan_for(model, pruner, sparsity, data=data, seed=seed, **options)
    n = plan.n
    # float32 is exact here: the evaluator's per-element 0/1 guard keeps every value a small integer,
    # and masks equal float64's bit for bit (tests/test_sparsity.py) at under half the cost.
    evaluate = sparsity_lib.EffectiveMaskEvaluator(model, dtype=torch.float32)
    evaluations, met = 0, True
    if target == "direct":
        k = removal_for(n, sparsity)
        if k > plan.limit:
            raise ValueError(f"sparsity {sparsity}: pruner {pruner!r} reaches at most {plan.limit / n:.6f}")
    else:
        found = largest_removal(lambda k: evaluate.effective_sparsity(plan.masks_at(k)), n, float(sparsity), plan.limit)
        k, evaluations, met = found.removed, found.evaluations, found.met
    chosen = plan.direct_masks(k) if target == "direct" else plan.masks_at(k)
    masks_lib.apply_masks(model, chosen)
    report = sparsity_lib.report_from_masks(chosen, evaluate(chosen))
    _warn_if_disconnected(pruner, sparsity, report)
    return PruneResult(
        pruner=pruner,
        target=target,
        requested_sparsity=float(sparsity),
        direct_sparsity=float(report.direct_sparsity),
        effective_sparsity=float(report.effective_sparsity),
        removed_count=k,
        n_prunable=n,
        evaluations=evaluations,
        target_met=met,
        seconds=time.perf_counter() - start,
        report=report,
    )


def _warn_if_disconnected(pruner: str, sparsity: float, report: sparsity_lib.SparsityReport) -> None:
    """Say so when a mask that keeps weights leaves no input→output path (effective sparsity 1).

    Why a warning and not an error: it is a legitimate outcome that sweeps must record (layer
    collapse of a global score ranking at extreme sparsity; uniform_plus on an MLP whose dense first
    layer holds most weights empties the next layer early, by its definition in docs/algorithms.md §4).
    But a cell whose network predicts a constant is easy to misread as merely a weak pruner.
    """
    if report.direct_sparsity < 1.0 and report.effective_sparsity == 1.0:
        empty = [layer.layer for layer in report.layers if layer.direct_sparsity == 1.0]
        where = f"; fully pruned layer(s): {', '.join(empty)}" if empty else ""
        warnings.warn(f"pruner {pruner!r} at sparsity {sparsity:g} leaves no input→output path "
                      f"(effective sparsity 1: the network predicts a constant){where}",
                      RuntimeWarning, stacklevel=3)


__all__ = ["PRUNERS", "NoOptions", "PrunerInfo", "PruneResult", "get", "plan_for", "prune"]
