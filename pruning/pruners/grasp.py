"""GraSP (Wang et al. 2020): keep the weights whose removal least reduces gradient flow.

Score S = −w ⊙ (H g) with g the mean loss gradient and H the Hessian, both with respect to the
prunable weights; the weights with the *highest* S are pruned. H g is a Hessian-vector product
by double backward: ∂/∂w ⟨∇L(w), g⟩ with g held fixed, accumulated batch by batch so that only one
batch's graph is alive at a time.

As the reference code does it (and docs/algorithms.md §5), by default:
- the scoring loss is the cross-entropy of the logits divided by a temperature T = 200, in both the
  gradient and the Hessian pass. It flattens the softmax, so that samples whose logits saturate it
  at initialization do not dominate g and H g. S shrinks as T grows (roughly as 1/T²), which does
  not matter for a ranking; what T changes is which weights rank highest.
- each scoring batch is class-balanced: `samples_per_class` images of every class (10 each by
  default), drawn in the seeded shuffled order of the training data. A random batch of a 10-class
  set leaves classes under-represented, which biases g toward the others.
`temperature=1.0, balanced=False` is the plain loss on batches of `batch_size` (128) from the seeded
stream: this module's behaviour before the reference's choices were adopted, bit for bit.

The reference's configs also score on one draw of 10 images per class (`batches: 1`, the default
`samples_per_class: 10`) and re-initialize the Linear layers of the scoring copy with xavier_normal
first (`reinit: true`; the model itself keeps its weights). Both are options: the defaults (10
balanced batches, no re-initialization) keep what GraSP cells computed before; a row's config
records which ran.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pruning import masks as masks_lib
from pruning.masks import device_of
from pruning.options import option, rule, validate
from pruning.pruners.common import (
    Batch,
    batch_stream,
    check_count,
    current_keep,
    mean_over_batches,
    order_from_scores,
    prunable_params,
    scoring_copy,
    take,
)
from pruning.pruners.plan import Layout, OrderPlan

GRASP_TEMPERATURE = 200.0  # Wang et al.'s code: logits / T in the scoring pass
GRASP_SAMPLES_PER_CLASS = 10  # images of each class per scoring batch (their CIFAR-10 setting)
UNBALANCED_BATCH_SIZE = 128  # batch size of the plain (balanced=False) scoring batches
_SCAN_BATCH = 1024  # batch size when scanning a Split for balanced samples (does not change them)
_SCAN_LIMIT = 10_000  # batches scanned from an unsized iterable before giving up on a class


@dataclass(frozen=True)
class GraspOptions:
    """GraSP's options (see the module docstring for the reference's defaults)."""

    batches: int = option(10, "scoring batches", ge=1)
    batch_size: int | None = option(None, "images per scoring batch with balanced: false (null: "
                                    f"{UNBALANCED_BATCH_SIZE}); balanced batches are sized by samples_per_class", ge=1)
    temperature: float = option(GRASP_TEMPERATURE, "logits are divided by T in the scoring pass (1: the plain loss)",
                                gt=0)
    balanced: bool = option(True, "class-balanced scoring batches of samples_per_class images per class")
    samples_per_class: int = option(GRASP_SAMPLES_PER_CLASS, "images of each class per balanced batch", ge=1)
    reinit: bool = option(False, "re-initialize the Linear layers of the scoring copy with xavier_normal "
                          "(seeded) before scoring, as the reference's configs do")

    def __post_init__(self) -> None:
        validate(self, rule(not (self.balanced and self.batch_size is not None), "batch_size",
                            f"{self.batch_size!r}; balanced batches hold samples_per_class images of each class: "
                            "leave batch_size unset, or set balanced: false"))


def _loss(clone: nn.Module, x: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    # division by 1.0 is exact in IEEE arithmetic, forward and backward: T = 1 is the plain loss
    return F.cross_entropy(clone(x) / temperature, y)


def hessian_gradient_product(clone: nn.Module, batches: list[Batch], temperature: float = 1.0) -> list[torch.Tensor]:
    """H g for the mean loss over `batches` (H and g of the same mean loss, logits / `temperature`)."""
    g = mean_over_batches(clone, batches,
                          lambda params, x, y: torch.autograd.grad(_loss(clone, x, y, temperature), params))

    def product(params: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        grads = torch.autograd.grad(_loss(clone, x, y, temperature), params, create_graph=True)
        return torch.autograd.grad(sum((gi * fixed).sum() for gi, fixed in zip(grads, g)), params)

    return mean_over_batches(clone, batches, product)


def grasp_scores(clone: nn.Module, batches: list[Batch], *, temperature: float = 1.0) -> torch.Tensor:
    """Flat (N,) GraSP scores S = −w ⊙ (H g) of the loss of logits / `temperature`; the highest
    are pruned first. (The default 1.0 is the plain loss; `prune_grasp` passes its own T.)"""
    hg = hessian_gradient_product(clone, batches, temperature)
    return torch.cat([(-p * h).reshape(-1) for p, h in zip(prunable_params(clone), hg)])


def class_balanced_batches(data, *, num_classes: int, per_class: int, count: int, seed: int,
                           device: torch.device) -> list[Batch]:
    """`count` batches of exactly `per_class` samples of each of `num_classes` classes (class-major).

    Samples are taken in the order of the seeded stream (`batch_stream`: a Split is shuffled with
    `seed`), the first `count · per_class` of each class, without repetition; batch j holds the j-th
    `per_class` of each class. A class with too few samples in one pass over the data is refused with
    one line instead of being filled with repeats.
    """
    need = count * per_class
    if hasattr(data, "batches"):
        limit = math.ceil(len(data) / _SCAN_BATCH)
    else:
        limit = len(data) if isinstance(data, Sized) else _SCAN_LIMIT
    stream: Iterator[Batch] = batch_stream(data, batch_size=_SCAN_BATCH, seed=seed, device=device)
    pools: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]
    have = [0] * num_classes
    for _, (x, y) in zip(range(limit), stream):
        labels = y.cpu()
        for c in range(num_classes):
            if have[c] < need:
                idx = torch.nonzero(labels == c).flatten()[: need - have[c]]
                if idx.numel():
                    pools[c].append(x[idx.to(x.device)])
                    have[c] += int(idx.numel())
        if min(have) >= need:
            break
    short = [c for c in range(num_classes) if have[c] < need]
    if short:
        raise ValueError(
            f"data: class {short[0]} has {have[short[0]]} samples, class-balanced GraSP needs "
            f"batches × samples_per_class = {count} × {per_class} = {need} of each of {num_classes} "
            f"classes; lower batches or samples_per_class, or pass balanced=False")
    per = [torch.cat(p) for p in pools]
    labels = torch.arange(num_classes, device=device).repeat_interleave(per_class)
    return [(torch.cat([p[j * per_class:(j + 1) * per_class] for p in per]), labels) for j in range(count)]


def _num_classes(model: nn.Module, data) -> int:
    """The Split's class count, else the width of the model's last prunable layer (its classifier)."""
    if hasattr(data, "num_classes"):
        return int(data.num_classes)
    return int(prunable_params(model)[-1].shape[0])


def reinit_linear(clone: nn.Module, model: nn.Module, seed: int) -> None:
    """xavier_normal weights for every Linear layer of the scoring copy `clone` (from a generator
    seeded with `seed`), pruned entries of `model` kept at zero: the reference re-initializes its
    copy's Linear layers before scoring."""
    g = torch.Generator().manual_seed(seed)
    keep = masks_lib.get_masks(model)
    layers = dict(masks_lib.prunable_layers(clone))
    with torch.no_grad():
        for name, module in clone.named_modules():
            if isinstance(module, nn.Linear):
                fresh = nn.init.xavier_normal_(torch.empty(module.weight.shape, dtype=module.weight.dtype), generator=g)
                if name in layers:
                    fresh = fresh * keep[name].cpu().to(fresh.dtype)
                module.weight.copy_(fresh.to(module.weight.device))


def prune_grasp(
    model: nn.Module,
    sparsity: float,
    *,
    data=None,
    seed: int = 0,
    batches: int = GraspOptions.batches,
    batch_size: int | None = GraspOptions.batch_size,
    temperature: float = GraspOptions.temperature,
    balanced: bool = GraspOptions.balanced,
    samples_per_class: int = GraspOptions.samples_per_class,
    reinit: bool = GraspOptions.reinit,
) -> OrderPlan:
    """GraSP on `batches` scoring batches, logits divided by `temperature`.

    `balanced=True` (default): each batch holds `samples_per_class` images of every class, so its
    size is samples_per_class × classes and `batch_size` must stay unset. `balanced=False`: batches
    of `batch_size` (default 128) from the seeded stream. `temperature=1.0, balanced=False` is the
    earlier behaviour of this pruner exactly. `reinit=True` scores a copy whose Linear layers were
    re-initialized (`reinit_linear`); the model keeps its weights.
    """
    clone = scoring_copy(model)
    if reinit:
        reinit_linear(clone, model, seed)
    check_count("batches", batches)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature {temperature!r}: must be a positive number (1.0: the plain loss)")
    if not balanced:
        size = UNBALANCED_BATCH_SIZE if batch_size is None else batch_size

        check_count("batches", batches)
        check_count("batch_size", size)
        scoring = take(batch_stream(data, batch_size=size, seed=seed, device=device_of(model)), batches)
        scores = grasp_scores(clone, scoring, temperature=float(temperature))
    else:
        if batch_size is not None:
            raise ValueError("batch_size: balanced GraSP batches hold samples_per_class images of each class; "
                             "set samples_per_class, or pass balanced=False to use batch_size")
        check_count("samples_per_class", samples_per_class)
        scoring = class_balanced_batches(data, num_classes=_num_classes(model, data), per_class=samples_per_class,
                                         count=batches, seed=seed, device=device_of(model))
        scores = grasp_scores(clone, scoring, temperature=float(temperature))
    return order_from_scores(Layout.of(model), -scores, current_keep(model), seed)  # highest S first
