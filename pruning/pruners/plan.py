"""A pruner's output: a *nested* family of masks indexed by the number k of removed weights.

Why not a single mask: targeting an effective sparsity (docs/algorithms.md §3) bisects on k, and that
is only sound if removing more weights never revives one. Every pruner therefore returns a `Plan`
whose `masks_at(k)` is nested in k by construction:
- `OrderPlan`: one global removal order (global scores ascending, or an iterative pruner's
  removal sequence); masks_at(k) removes its first k entries.
- `QuotaPlan`: per-layer removal orders (a fixed random permutation or ascending |w|) and a quota
  function giving each layer's kept count for a total of k removed; a mask keeps the last kept_l
  entries of each layer's order. `masks_at` uses counts that never grow with k (nested);
  `direct_masks` uses the quota's exact rounding at s = k/N (for a direct target; the two differ
  by at most a weight or so per layer).
A direct target s is simply k = N − round((1 − s)·N); `prune` applies `direct_masks(k)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pruning import masks as masks_lib
from pruning.quotas import n_kept

Masks = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Layout:
    """Names and shapes of the prunable layers, and the flat index ranges they occupy."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, model: torch.nn.Module) -> "Layout":
        w = masks_lib.weights(model)
        return cls(tuple(w), tuple(t.shape for t in w.values()))

    @property
    def counts(self) -> list[int]:
        return [s.numel() for s in self.shapes]

    @property
    def n(self) -> int:
        return sum(self.counts)

    def split(self, flat: torch.Tensor) -> Masks:
        """A flat (N,) tensor cut back into per-layer tensors of the right shapes."""
        parts = torch.split(flat, self.counts)
        return {name: p.reshape(shape) for name, p, shape in zip(self.names, parts, self.shapes)}

    def layer_of(self) -> torch.Tensor:
        """(N,) layer index of every flat position."""
        return torch.repeat_interleave(torch.arange(len(self.names)), torch.tensor(self.counts))


def flatten(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors.values()])


class _Plan:
    """What both plans share: the weights they order, and how many of them they can remove."""

    layout: Layout
    max_removal: int | None

    @property
    def n(self) -> int:
        return self.layout.n

    @property
    def limit(self) -> int:
        return self.n if self.max_removal is None else self.max_removal


@dataclass(frozen=True)
class OrderPlan(_Plan):
    layout: Layout
    order: torch.Tensor  # (N,) flat indices, first removed first
    max_removal: int | None = None  # the largest k that is a valid point (None: N)

    def masks_at(self, k: int) -> Masks:
        keep = torch.ones(self.n, dtype=torch.bool)
        keep[self.order[:k]] = False
        return self.layout.split(keep)

    def direct_masks(self, k: int) -> Masks:
        return self.masks_at(k)


@dataclass(frozen=True)
class QuotaPlan(_Plan):
    layout: Layout
    layer_orders: tuple[torch.Tensor, ...]  # per layer: flat indices within the layer, first removed first
    kept_for: Callable[[int], Sequence[int]]  # k removed -> kept per layer, exactly the quota's rounding
    nested_for: Callable[[int], Sequence[int]]  # k removed -> kept per layer, non-increasing in k
    max_removal: int | None = None  # the largest k the quota can reach (None: N)

    def _masks(self, kept: Sequence[int]) -> Masks:
        out = {}
        for name, shape, order, kl in zip(self.layout.names, self.layout.shapes, self.layer_orders, kept):
            keep = torch.zeros(shape.numel(), dtype=torch.bool)
            keep[order[shape.numel() - kl :]] = True
            out[name] = keep.reshape(shape)
        return out

    def masks_at(self, k: int) -> Masks:
        """The nested family the effective-target bisection walks (see quotas.nested_kept_counts)."""
        return self._masks(self.nested_for(k))

    def direct_masks(self, k: int) -> Masks:
        """The mask of a direct target: layer counts exactly as `quotas.kept_counts` rounds them."""
        return self._masks(self.kept_for(k))


Plan = OrderPlan | QuotaPlan


def removal_for(n: int, sparsity: float) -> int:
    """k for a direct target: the complement of round((1 − s)·N) kept weights."""
    return n - n_kept(n, sparsity)
