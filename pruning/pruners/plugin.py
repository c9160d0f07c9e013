"""A pruner from a user's score function: scores → the same nested plan as a built-in's.

Why this is all a plugin needs: every pruner is "scores → a nested family of masks" (plan.py), and
`prune` turns any plan into a direct or an effective target (docs/algorithms.md §3). A plugin gives
one tensor of scores per prunable layer, in model order (higher = keep); with no quota they are
ranked over all layers at once (ties broken by a seeded permutation, weights pruned already first),
as `magnitude/global` or `snip` rank theirs; with a quota (`erk`, `igq`, … of `pruning.quotas`) the
quota gives each layer's count and the scores choose the survivors inside it, as `magnitude/<quota>`.

The score function sees a copy of the model — masks baked in (pruned weights are zeros), train
mode, dropout off, gradients enabled — so it may run forward and backward passes freely: the
model being pruned, its BatchNorm statistics and its gradients stay untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from pruning.pruners.common import current_keep, order_from_scores, scoring_copy
from pruning.pruners.plan import Layout, Plan
from pruning.pruners.quota import quota_plan

Scores = Callable[..., Sequence[torch.Tensor]]


def scoring_model(model: nn.Module) -> nn.Module:
    """A copy for a plugin's score function: the built-ins' scoring copy (masks baked in, train mode,
    dropout off) with gradients on, since a plugin's score may differentiate."""
    clone = scoring_copy(model)
    for p in clone.parameters():
        p.requires_grad_(True)
        p.grad = None
    return clone


def checked_scores(pruner: str, got: Any, layout: Layout) -> list[torch.Tensor]:
    """The plugin's scores as one float64 CPU tensor per layer, or a one-line ValueError saying what
    came back and what was expected (count, shapes, no NaN)."""
    n_layers = len(layout.names)
    if isinstance(got, torch.Tensor) or not isinstance(got, (list, tuple)):
        raise ValueError(f"pruner {pruner!r}: scores returned {type(got).__name__}; expected a list of "
                         f"{n_layers} tensors, one per prunable layer in model order ({', '.join(layout.names)})")
    if len(got) != n_layers:
        raise ValueError(f"pruner {pruner!r}: scores returned {len(got)} tensors; the model has {n_layers} "
                         f"prunable layers ({', '.join(layout.names)})")
    out = []
    for name, shape, s in zip(layout.names, layout.shapes, got):
        if not isinstance(s, torch.Tensor) or s.numel() != shape.numel():
            what = f"shape {tuple(s.shape)}" if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"pruner {pruner!r}: scores of layer {name!r} have {what}; expected {tuple(shape)}")
        s = s.detach().to("cpu", torch.float64).reshape(-1)
        if torch.isnan(s).any():
            raise ValueError(f"pruner {pruner!r}: scores of layer {name!r} contain NaN; every weight needs a "
                             "comparable score (use -inf to remove a weight first)")
        out.append(s)
    return out


def make(pruner: str, scores: Scores, quota: str | None) -> Callable[..., Plan]:
    """The registry function `(model, sparsity, *, data, seed, **options) -> Plan` of a plugin."""

    def prune_plugin(model: nn.Module, sparsity: float, *, data=None, seed: int = 0, **options: Any) -> Plan:
        layout = Layout.of(model)
        with torch.enable_grad():
            got = scores(scoring_model(model), data=data, seed=seed, **options)
        layer_scores = checked_scores(pruner, got, layout)
        if quota is None:
            return order_from_scores(layout, torch.cat(layer_scores), current_keep(model), seed)
        return quota_plan(model, quota, layer_scores, sparsity, data=data, seed=seed)

    prune_plugin.__doc__ = f"Plugin pruner {pruner!r}: {getattr(scores, '__qualname__', scores)!s} scores, " + (
        "ranked globally" if quota is None else f"layer counts from the {quota!r} quota")
    return prune_plugin
