"""IMP: iterative magnitude pruning with rewinding (Frankle & Carbin; Frankle et al. 2020).

Round t prunes the smallest-|w| survivors globally (20% of the remaining weights by default),
rewinds the survivors (and every other parameter and buffer) to `rewind_state` — the weights at
initialization or an early iteration — and retrains with `train_fn`. The given model is already
trained (IMP runs after training), so round 1 prunes it directly; after the last round the model
keeps its trained weights and the trial's post-pruning protocol (rewind by default) takes over.

Late rewinding (Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket
Hypothesis"): `rewind_state` is the dense run's state after `rewind_iteration` optimizer steps,
`pruning.train.train(..., snapshot_at=k).snapshot`; k = 0 is the initialization (the original
lottery ticket). As the Rare Gems baselines (`imp_rewind_iter` in their code), each retraining is a
fresh run (new optimizer, schedule from its start) from the rewound weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from pruning import masks as masks_lib
from pruning.options import option, validate
from pruning.pruners.common import check_count, current_keep, iterative_order, kept_after_round
from pruning.pruners.plan import Layout, OrderPlan, flatten


REWIND_ITERATION = 1000  # the Rare Gems baselines' default rewinding point (optimizer steps)
_REWIND_BY_MODEL = {"vgg16": 2000}  # theirs for VGG-16


@dataclass(frozen=True)
class ImpOptions:
    """IMP's options (`train_fn` and `rewind_state` are supplied by the trial, never by a spec)."""

    rounds: int | None = option(None, "rounds on the exponential schedule; null: prune `rate` of the "
                                "survivors per round until the target", ge=1)
    rate: float = option(0.2, "fraction of the surviving weights pruned per round", gt=0, lt=1)

    def __post_init__(self) -> None:
        validate(self)


def rewind_iteration_for(model: str) -> int:
    """The default late-rewinding step k for a model name of `pruning.models` (docs/algorithms.md §5)."""
    return _REWIND_BY_MODEL.get(model, REWIND_ITERATION)


def imp_schedule(n: int, sparsity: float, rate: float, rounds: int | None) -> list[int]:
    """Survivors after each round: ×(1 − rate) per round until the target (the last round lands
    exactly on round((1 − s)·N)); with `rounds` given, the exponential schedule over that many."""
    if rounds is None:
        if sparsity <= 0:
            return []
        rounds = max(1, math.ceil(math.log(1.0 - sparsity) / math.log(1.0 - rate) - 1e-9))
        geometric = [int(round(n * (1.0 - rate) ** t)) for t in range(1, rounds)]
        return geometric + [kept_after_round(rounds, rounds, n, sparsity)]
    return [kept_after_round(t, rounds, n, sparsity) for t in range(1, rounds + 1)]


def prune_imp(
    model: nn.Module,
    sparsity: float,
    *,
    data=None,
    seed: int = 0,
    train_fn: Callable[[nn.Module], object] | None = None,
    rewind_state: Mapping[str, torch.Tensor] | None = None,
    rounds: int | None = ImpOptions.rounds,
    rate: float = ImpOptions.rate,
) -> OrderPlan:
    if train_fn is None or rewind_state is None:
        raise ValueError("imp: needs train_fn=<callable training the model in place> and rewind_state=<state_dict>")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate {rate}: imp's per-round pruning rate must be in (0, 1)")
    if rounds is not None:
        check_count("rounds", rounds)
    layout = Layout.of(model)
    started = [False]

    def score(keep: torch.Tensor) -> torch.Tensor:
        if started[0]:  # between rounds: apply the new mask, rewind the survivors, retrain
            masks_lib.apply_masks(model, layout.split(keep))
            masks_lib.copy_weights(model, rewind_state)
            train_fn(model)
        started[0] = True
        return flatten(masks_lib.weights(model)).abs()

    schedule = imp_schedule(layout.n, sparsity, rate, rounds)
    return iterative_order(layout, current_keep(model), schedule, score, seed)
