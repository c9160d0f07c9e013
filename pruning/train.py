"""Training and evaluation: SGD with momentum, weight decay, an L1 term (LOMP), LR schedules.

The loop is deliberately plain (the shape of a minimal PyTorch loop) so that its throughput stays
within a few percent of one (`bench/train_throughput.py`). Things that cost a device sync — checking
the loss for NaN/inf, evaluating — happen once per epoch, not per batch.

Schedules are pure functions of the step (`lr_at`), with the stepping unit explicit: with
`step_unit="epoch"` milestones, warm-up and the cosine horizon count epochs; with "iteration" they
count optimizer steps. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from pruning import masks as masks_lib
from pruning.data import Split
from pruning.options import option, rule, validate

SCHEDULES = ("constant", "multistep", "cosine")
# What the L1 term λ·Σ|θ| sums over: "prunable" the Conv/Linear weights (prunetune's original
# term), "all" every parameter, biases and BatchNorm's affine ones included (the authors' LOMP
# regulariser, Global-One-shot-Pruning utils.get_regularization_loss_my).
L1_SCOPES = ("prunable", "all")
STEP_UNITS = ("epoch", "iteration")
DECAY = ("all", "kernels")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (with the seed and the initial weights)."""

    epochs: int = option(10, "passes over the training split (ignored if `iterations` is set)", ge=0)
    iterations: int | None = option(None, "exact number of optimizer steps instead of epochs", ge=0)
    batch_size: int = option(128, "training batch size", ge=1)
    lr: float = option(0.1, "peak SGD learning rate", ge=0)
    momentum: float = option(0.9, "SGD momentum", ge=0)
    nesterov: bool = option(False, "Nesterov momentum (needs momentum > 0)")
    weight_decay: float = option(5e-4, "PyTorch decay; Keras l2(λ) equals weight_decay = 2λ", ge=0)
    decay: Literal[DECAY] = option("all", "decay every parameter, or conv/linear kernels only (Keras' l2)")
    l1: float = option(0.0, "λ of the L1 term λ·Σ|θ| (LOMP); 0 disables it", ge=0)
    l1_scope: Literal[L1_SCOPES] = option("prunable", "the parameters the L1 term sums over")
    schedule: Literal[SCHEDULES] = option("cosine", "learning-rate schedule")
    milestones: tuple[int, ...] = option((), "multistep: steps (in step_unit) where lr *= gamma", ge=0)
    gamma: float = option(0.1, "multistep: the factor at each milestone", ge=0)
    warmup: int = option(0, "linear warm-up length in step_unit; 0 disables it", ge=0)
    step_unit: Literal[STEP_UNITS] = option("epoch", "the unit of milestones, warmup and the cosine horizon")
    bf16: bool = option(False, "bf16 autocast (CUDA only; ignored on CPU)")
    augment: bool | None = option(None, "the split's augmentation (crop+flip, rotation); null: its default")
    eval_every: int = option(1, "evaluate on the test split every k epochs (0: only at the end)", ge=0)
    eval_batch_size: int = option(1024, "evaluation batch size", ge=1)

    def __post_init__(self) -> None:
        validate(self, rule(not self.nesterov or self.momentum > 0, "nesterov",
                            "true; Nesterov momentum needs momentum > 0"), where="train")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def describe(self) -> str:
        """The recipe in one line (`SGD lr 0.01 constant, momentum 0.9, weight decay 0, batch 128,
        200 epochs`): what a row names when the training matters to reading it."""
        length = f"{self.iterations} steps" if self.iterations is not None else f"{self.epochs} epochs"
        schedule = self.schedule
        if self.schedule == "multistep":
            schedule += f" ×{self.gamma:g} at {', '.join(str(m) for m in self.milestones)} {self.step_unit}s"
        if self.warmup:
            schedule += f" after {self.warmup} {self.step_unit}s of warm-up"
        decay = f"{self.weight_decay:g}" + (" on kernels" if self.decay == "kernels" else "")
        l1 = f", L1 {self.l1:g} over {self.l1_scope}" if self.l1 else ""
        return (f"SGD lr {self.lr:g} {schedule}, momentum {self.momentum:g}{' nesterov' if self.nesterov else ''}, "
                f"weight decay {decay}{l1}, batch {self.batch_size}, {length}")


@dataclass
class TrainResult:
    status: str                       # "ok" | "diverged"
    epochs: list[dict] = field(default_factory=list)   # per-epoch metrics
    iterations: int = 0
    seconds: float = 0.0
    train_loss: float = math.nan      # mean training loss of the last epoch
    train_acc: float = math.nan       # training accuracy of the last epoch (on augmented batches)
    test_loss: float = math.nan
    test_acc: float = math.nan
    batch_losses: list[float] = field(default_factory=list)  # last epoch, per batch
    snapshot: dict[str, torch.Tensor] | None = None  # state_dict after `snapshot_at` steps (late rewinding)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate at `step` (in cfg.step_unit) of a run of `total` steps."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** sum(step >= m for m in cfg.milestones)
    span = max(total - cfg.warmup, 1)  # cosine
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step - cfg.warmup, span) / span))


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, *, device: str | torch.device = "cpu",
             batch_size: int = 1024) -> tuple[float, float]:
    """(mean cross-entropy loss, top-1 accuracy) on `split` in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for xb, yb in split.batches(batch_size, device=device):
        out = model(xb)
        loss_sum += nn.functional.cross_entropy(out.float(), yb, reduction="sum").double()
        correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    n = max(len(split), 1)
    return float(loss_sum) / n, float(correct) / n


def l1_penalty(model: nn.Module, scope: str = "prunable") -> torch.Tensor:
    """Σ|θ| over the parameters of `scope` (L1_SCOPES); masked entries contribute 0 and get no
    gradient: a masked parameter enters as its masked value (`weight`, not `weight_orig`)."""
    if scope == "prunable":
        return sum(m.weight.abs().sum() for _, m in masks_lib.prunable_layers(model))  # type: ignore[return-value]
    if scope != "all":
        raise ValueError(f"l1_scope {scope!r}: choose from {', '.join(L1_SCOPES)}")
    total = torch.zeros((), device=next(model.parameters()).device)
    for module in model.modules():
        for name, _ in module.named_parameters(recurse=False):
            masked = name.endswith("_orig") and hasattr(module, name.removesuffix("_orig") + "_mask")
            total = total + getattr(module, name.removesuffix("_orig") if masked else name).abs().sum()
    return total


def param_groups(model: nn.Module, weight_decay: float, decay: str = "all") -> list[dict]:
    """SGD parameter groups: `decay="all"` decays every trainable parameter (one group, as before);
    `"kernels"` decays only the weights of the prunable conv/linear layers, not biases or BatchNorm.

    Why "kernels": the effective-sparsity authors put Keras' `kernel_regularizer=l2(λ)` on kernels
    only, so biases and BatchNorm's scale and shift are not pulled toward zero there.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if decay == "all":
        return [{"params": params, "weight_decay": weight_decay}]
    if decay != "kernels":
        raise ValueError(f"train.decay {decay!r}: choose from {', '.join(DECAY)}")
    # a masked layer's trainable tensor is `weight_orig` (torch.nn.utils.prune): the kernel all the same
    kernel_ids = {id(m.weight_orig if masks_lib.is_masked(m) else m.weight)
                  for _, m in masks_lib.prunable_layers(model)}
    kernels = [p for p in params if id(p) in kernel_ids]
    others = [p for p in params if id(p) not in kernel_ids]
    return [g for g in ({"params": kernels, "weight_decay": weight_decay},
                        {"params": others, "weight_decay": 0.0}) if g["params"]]


def train(
    model: nn.Module,
    train_split: Split,
    test_split: Split | None,
    cfg: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    on_epoch: Callable[[dict], None] | None = None,
    snapshot_at: int | None = None,
) -> TrainResult:
    """Train `model` in place with SGD; stop early with status "diverged" on a NaN/inf loss.

    `snapshot_at` = k: `result.snapshot` is a copy of the model's state_dict (every parameter and
    buffer, masks included) right after optimizer step k (k = 0: before the first step), the weights
    IMP with late rewinding rewinds to (Frankle et al. 2020). A diverged run gets None (its state
    may already be non-finite). Unused (None), the loop is unchanged.
    """
    device = torch.device(device)
    model.to(device).train()
    opt = torch.optim.SGD(param_groups(model, cfg.weight_decay, cfg.decay), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train_split) / cfg.batch_size)
    total_iters = cfg.iterations if cfg.iterations is not None else cfg.epochs * steps_per_epoch
    n_epochs = math.ceil(total_iters / steps_per_epoch) if steps_per_epoch else 0
    per_iter = cfg.step_unit == "iteration"
    total_steps = total_iters if per_iter else n_epochs
    augment = train_split.augmentable if cfg.augment is None else cfg.augment
    autocast = cfg.bf16 and device.type == "cuda"
    if snapshot_at is not None and (isinstance(snapshot_at, bool) or not isinstance(snapshot_at, int)
                                    or not 0 <= snapshot_at <= total_iters):
        raise ValueError(f"snapshot_at {snapshot_at!r}: must be an integer in [0, {total_iters}] "
                         "(the optimizer steps of this run)")
    result = TrainResult(status="ok")
    if snapshot_at == 0:
        result.snapshot = _state_copy(model)
    start = time.perf_counter()
    it = 0
    for epoch in range(n_epochs):
        t0 = time.perf_counter()
        if not per_iter:
            _set_lr(opt, lr_at(epoch, total_steps, cfg))
        losses, correct, seen = [], torch.zeros((), dtype=torch.int64, device=device), 0
        for xb, yb in train_split.batches(cfg.batch_size, shuffle=True, generator=g,
                                          device=device, augment=augment):
            if it >= total_iters:
                break
            if per_iter:
                _set_lr(opt, lr_at(it, total_steps, cfg))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = model(xb)
                loss = nn.functional.cross_entropy(out.float(), yb)
            objective = loss + cfg.l1 * l1_penalty(model, cfg.l1_scope) if cfg.l1 else loss
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
            losses.append(loss.detach())
            correct += (out.detach().argmax(1) == yb).sum()
            seen += yb.shape[0]
            it += 1
            if it == snapshot_at:
                result.snapshot = _state_copy(model)
        batch_losses = torch.stack(losses).double().cpu() if losses else torch.zeros(0)
        result.iterations = it
        if not torch.isfinite(batch_losses).all():
            result.status = "diverged"
            result.snapshot = None
            result.epochs.append({"epoch": epoch, "lr": opt.param_groups[0]["lr"], "train_loss": math.nan,
                                  "diverged": True})
            break
        result.batch_losses = batch_losses.tolist()
        result.train_loss = float(batch_losses.mean()) if losses else math.nan
        result.train_acc = float(correct) / max(seen, 1)
        record = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "train_loss": result.train_loss,
                  "train_acc": result.train_acc, "test_loss": math.nan, "test_acc": math.nan}
        last = epoch == n_epochs - 1
        if test_split is not None and (last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)):
            record["test_loss"], record["test_acc"] = evaluate(
                model, test_split, device=device, batch_size=cfg.eval_batch_size)
            model.train()
        record["seconds"] = time.perf_counter() - t0
        result.epochs.append(record)
        if on_epoch is not None:
            on_epoch(record)
    if result.status == "ok" and test_split is not None:
        if result.epochs and not math.isnan(result.epochs[-1].get("test_acc", math.nan)):
            result.test_loss, result.test_acc = result.epochs[-1]["test_loss"], result.epochs[-1]["test_acc"]
        else:
            result.test_loss, result.test_acc = evaluate(model, test_split, device=device,
                                                         batch_size=cfg.eval_batch_size)
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr
