"""Helpers shared by the pruner families: orders from scores, iterative schedules, data streams.

Why here: every score-based pruner ends the same way (scores -> a global removal order with fair
tie-breaking, weights already pruned first), every iterative pruner uses the same exponential
schedule, and every data-driven pruner accepts the same `data` (a Split or an iterable of batches).
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from pruning import masks as masks_lib
from pruning.pruners.plan import Layout, OrderPlan, flatten
from pruning.quotas import n_kept

Batch = tuple[torch.Tensor, torch.Tensor]


def check_count(field: str, value: int) -> int:
    """Refuse a non-positive count option (rounds, batches, batch_size) with one clear line."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} {value!r}: must be an integer ≥ 1")
    return value


def own_options(fn: Callable) -> tuple[str, ...]:
    """A pruner function's own keyword options (beyond model, sparsity, data, seed and **options)."""
    params = inspect.signature(fn).parameters.values()
    return tuple(p.name for p in params if p.name not in ("model", "sparsity", "data", "seed")
                 and p.kind is not inspect.Parameter.VAR_KEYWORD)


def check_options(pruner: str, fn: Callable, options: dict) -> None:
    """Refuse options `fn` does not take, naming the allowed ones; a `**options` pruner passes them
    through to one that checks them (random/snip, random/synflow)."""
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()):
        return
    unknown = sorted(set(options) - set(own_options(fn)))
    if unknown:
        allowed = ", ".join(own_options(fn)) or "none"
        raise ValueError(f"pruner {pruner!r}: unknown option(s) {unknown}; allowed: {allowed}")


def current_keep(model: nn.Module) -> torch.Tensor:
    """(N,) bool: the model's current mask, flat.

    Score and iterative pruners rank already-pruned weights first, so they are never revived by a
    larger removal; a quota pruner re-keeps one only if its quota gives a layer more survivors than
    the layer still has.
    """
    return flatten(masks_lib.get_masks(model)).cpu()


def ascending(scores: torch.Tensor, seed: int) -> torch.Tensor:
    """Indices of `scores` in ascending order, ties broken by a seeded random permutation.

    Why random ties: equal scores are common (zeros of pruned weights, SynFlow at extreme
    sparsity); breaking them by index would always prune the first layers first.
    """
    perm = torch.randperm(scores.numel(), generator=torch.Generator().manual_seed(seed))
    return perm[torch.argsort(scores[perm], stable=True)]


def lowest(scores: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """The `count` lowest entries, ascending, ties broken at random: `ascending(...)[:count]` in law.

    Why not a full sort: iterative pruners take a few percent of N per round; a partial selection
    (top-k for the cut value, then a sort of the chosen ones) is ~10× cheaper on 10⁷ weights.
    """
    if count >= scores.numel():
        return ascending(scores, seed)
    if count <= 0:
        return torch.empty(0, dtype=torch.long)
    cut = torch.topk(scores, count, largest=False, sorted=False).values.max()
    below = torch.nonzero(scores < cut).flatten()
    at_cut = torch.nonzero(scores == cut).flatten()
    pick = torch.randperm(at_cut.numel(), generator=torch.Generator().manual_seed(seed))
    chosen = torch.cat([below, at_cut[pick[: count - below.numel()]]])
    return chosen[ascending(scores[chosen], seed)]


def order_from_scores(layout: Layout, scores: torch.Tensor, keep: torch.Tensor, seed: int) -> OrderPlan:
    """Global plan: already-pruned weights first, then the rest by ascending score."""
    scores = scores.detach().to("cpu", torch.float64).clone()
    scores[~keep] = -torch.inf
    return OrderPlan(layout, ascending(scores, seed))


def kept_after_round(t: int, rounds: int, n: int, sparsity: float) -> int:
    """Exponential schedule: round(N (1 − s)^(t/T)) weights survive round t (of T)."""
    if t >= rounds:
        return n_kept(n, sparsity)
    return int(round(n * (1.0 - sparsity) ** (t / rounds)))


def iterative_order(
    layout: Layout,
    keep: torch.Tensor,
    schedule: Iterable[int],
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    seed: int,
) -> OrderPlan:
    """Run an iterative pruner and turn its removal sequence into one global order (§3).

    `schedule` yields the number of survivors after each round; `score_fn(keep)` scores every
    weight under the current flat mask. Weights removed in round t rank before everything removed
    later (by their round-t score inside the round); survivors come last, by their last scores.
    """
    keep = keep.clone()
    removed: list[torch.Tensor] = [torch.nonzero(~keep).flatten()]  # pruned before we started
    scores = torch.zeros(layout.n, dtype=torch.float64)
    for t, survivors in enumerate(schedule):
        scores = score_fn(keep).detach().to("cpu", torch.float64)
        alive = torch.nonzero(keep).flatten()
        drop = int(alive.numel()) - survivors
        if drop <= 0:
            continue
        chosen = alive[lowest(scores[alive], drop, seed + t)]
        keep[chosen] = False
        removed.append(chosen)
    alive = torch.nonzero(keep).flatten()
    removed.append(alive[ascending(scores[alive], seed)])
    return OrderPlan(layout, torch.cat(removed))


def batch_stream(data, *, batch_size: int, seed: int, device: torch.device) -> Iterator[Batch]:
    """An endless stream of (x, y) batches on `device`.

    A `Split` is reshuffled every pass (seeded); any other iterable of (x, y) is cycled.
    """
    if data is None:
        raise ValueError("data: this pruner needs data (a Split or an iterable of (x, y) batches)")
    if hasattr(data, "batches"):
        def passes() -> Iterator[Batch]:
            for epoch in itertools.count():
                yield from data.batches(batch_size, shuffle=True, seed=seed + epoch, device=device)
        stream: Iterator[Batch] = passes()
    else:
        stream = itertools.cycle(data)
    first = next(stream, None)
    if first is None:
        raise ValueError("data: no batches")
    for x, y in itertools.chain([first], stream):
        yield x.to(device), y.to(device)


def take(stream: Iterator[Batch], count: int) -> list[Batch]:
    return list(itertools.islice(stream, count))


def scoring_copy(model: nn.Module) -> nn.Module:
    """A copy to score on: masks baked in (pruned weights are plain zeros), dropout off.

    Why a copy: scoring must not touch the model's BatchNorm statistics, masks or gradients. Train
    mode keeps BatchNorm on batch statistics (as at initialization); dropout is switched off so that
    a score is a deterministic function of the weights and the batch.
    """
    clone = copy.deepcopy(model)
    masks_lib.remove_masks(clone)
    clone.train()
    for m in clone.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def prunable_params(clone: nn.Module) -> list[nn.Parameter]:
    """The weight parameters of the prunable layers (of an unmasked copy), in model order."""
    return [m.weight for _, m in masks_lib.prunable_layers(clone)]


def mean_over_batches(clone: nn.Module, batches: list[Batch],
                      per_batch: Callable[[list[nn.Parameter], torch.Tensor, torch.Tensor], Iterable[torch.Tensor]]
                      ) -> list[torch.Tensor]:
    """Mean over `batches` of `per_batch(params, x, y)`, one tensor per prunable weight of `clone`.

    Gradients are enabled on the prunable weights only while it runs: a scoring copy otherwise
    keeps them frozen, so that nothing else in it accumulates a graph.
    """
    params = prunable_params(clone)
    for p in params:
        p.requires_grad_(True)
    total = [torch.zeros_like(p) for p in params]
    try:
        for x, y in batches:
            for acc, part in zip(total, per_batch(params, x, y)):
                acc += part
    finally:
        for p in params:
            p.requires_grad_(False)
    return [t / len(batches) for t in total]


def scores_on_batches(model: nn.Module, data, score: Callable[[nn.Module, list[Batch]], torch.Tensor], *,
                      seed: int, batches: int, batch_size: int) -> torch.Tensor:
    """Flat (N,) scores of a one-shot data-driven pruner: `score` applied to a scoring copy of
    `model` and the first `batches` batches of the seeded stream."""
    check_count("batches", batches)
    check_count("batch_size", batch_size)
    stream = batch_stream(data, batch_size=batch_size, seed=seed, device=masks_lib.device_of(model))
    return score(scoring_copy(model), take(stream, batches))


def set_keep(clone: nn.Module, originals: list[torch.Tensor], layout: Layout, keep: torch.Tensor) -> None:
    """Write original ⊙ keep into the copy's prunable weights (iterative pruners, in place)."""
    parts = layout.split(keep)
    with torch.no_grad():
        for p, w, k in zip(prunable_params(clone), originals, parts.values()):
            p.copy_(w * k.to(w.device, w.dtype))
