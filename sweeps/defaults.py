"""The original default of every field a `cell_id` hashes: an append-only table.

Why: a cell id must name exactly one computation, so that `run` and `resume` can trust a stored
result. open_lth keeps old ids valid by hashing only fields that differ from their default and by
never changing a default. We do change defaults (e.g. to match a paper's recipe), so the hash omits a
field only when its value equals the default it had when the field was *introduced*, recorded here
once and never edited. When a current default later moves away from its original, every cell that
uses the field hashes the new value and gets a new id by itself, while every old id keeps its
meaning; nothing stored is ever reused for a different computation.

Rules (tests/test_cell_ids.py enforces them against a frozen copy of this table):
- append only: never remove or alter an entry, even when the current default changes;
- a new hashed field gets its entry in the same commit that introduces it (hashing a field without
  an entry raises);
- values are the JSON form the hash sees (lists, not tuples).

Keys are `section.field` (`train.lr`, `hessian.probes`, `prune.limit_grid`), `prune.<pruner>.<option>`
for a pruner's own options (its `rounds` included), `data.<dataset>.<option>` for loader options, and
`model_variant`.
The axes (model, dataset, pruner, sparsity, target, seed, kind, protocol) are always hashed.
"""

from __future__ import annotations

from typing import Any

# removed fractions 0.5, 0.505, …, 0.995: the limit grid that a spec without `prune.limit_grid` meant
_LIMIT_GRID_V1 = [round(0.5 + 0.005 * i, 6) for i in range(100)]

ORIGINAL_DEFAULTS: dict[str, Any] = {
    # train: pruning.train.TrainConfig
    "train.epochs": 10,
    "train.iterations": None,
    "train.batch_size": 128,
    "train.lr": 0.1,
    "train.momentum": 0.9,
    "train.nesterov": False,
    "train.weight_decay": 0.0005,
    "train.l1": 0.0,
    "train.schedule": "cosine",
    "train.milestones": [],
    "train.gamma": 0.1,
    "train.warmup": 0,
    "train.step_unit": "epoch",
    "train.bf16": False,
    "train.augment": None,
    "train.eval_every": 1,
    "train.eval_batch_size": 1024,
    "train.decay": "all",
    "train.l1_scope": "prunable",
    # hessian: SLQ settings of a cell with `hessian.enabled` (a cell without SLQ hashes nothing here)
    "hessian.enabled": False,
    "hessian.probes": 4,
    "hessian.iterations": 30,
    "hessian.models": "pruned",
    "hessian.max_samples": None,
    # prune: point cells
    "prune.finetune_epochs": 1,
    "prune.lomp_l1": None,
    # prune: limit cells
    "prune.limit_grid": _LIMIT_GRID_V1,
    "prune.epsilon": None,
    "prune.eigen_policy": "abs",
    "prune.limit_tolerance_pp": 0.1,
    "prune.epsilon_source": "batch_loss_std",
    "prune.zero_tol": 0.0,
    "prune.limit_rounds": 1,            # one round: the limit as it was computed before the option
    "prune.row_norm_quantiles": 0,      # no Hessian rows: what a limit cell computed before the option
    "prune.rewind_iteration": 0,
    # prune: each pruner's own options
    "prune.random/snip.batches": 10,
    "prune.random/snip.batch_size": 128,
    "prune.random/synflow.rounds": 100,
    "prune.random/synflow.input_shape": None,
    "prune.snip.batches": 10,
    "prune.snip.batch_size": 128,
    "prune.snip/iterative.rounds": 300,
    "prune.snip/iterative.batch_size": 128,
    "prune.grasp.batches": 10,
    "prune.grasp.batch_size": 128,
    "prune.synflow.rounds": 100,
    "prune.synflow.input_shape": None,
    "prune.imp.rounds": None,
    "prune.imp.rate": 0.2,
    "prune.rare_gems.epochs": 150,
    "prune.rare_gems.iter_period": 5,
    "prune.rare_gems.lr": 0.1,
    "prune.rare_gems.momentum": 0.9,
    "prune.rare_gems.score_l2": 0.0001,
    "prune.rare_gems.batch_size": 128,
    "prune.grasp.temperature": 1.0,
    "prune.grasp.balanced": False,
    "prune.grasp.samples_per_class": 10,
    # data: loader options
    "data.digits.seed": 0,
    "data.digits.test_size": 360,
    "data.synthetic.seed": 0,
    "data.synthetic.input_shape": [1, 8, 8],
    "data.synthetic.num_classes": 10,
    "data.synthetic.n_train": 512,
    "data.synthetic.n_test": 256,
    "data.synthetic.noise": 1.0,
    "data.mnist.seed": 0,
    "data.cifar10.seed": 0,
    "data.cifar100.seed": 0,
    "data.tinyimagenet.seed": 0,
    "data.fashion_mnist.seed": 0,
    "data.fashion_mnist.augment": False,
    # the model's build
    "model_variant": "default",
    # limit cells: the resolution signal and adaptive Lanczos depth
    "prune.resolution_tol": 0.01,       # the flag's tolerance before the option (RESOLUTION_TOL)
    "hessian.max_iterations": 512,      # the cap of `iterations: auto` (a fixed depth has none)
    # fidelity options of GraSP and Rare Gems (their reference code's choices, off by default)
    "prune.grasp.reinit": False,
    "prune.rare_gems.bias": True,
}


class MissingDefault(KeyError):
    """A hashed field without an original default: the table must grow with the field."""

    def __str__(self) -> str:
        return (f"cell field {self.args[0]!r} has no original default; append its default at the "
                "time it was introduced to sweeps/defaults.py (ORIGINAL_DEFAULTS)")


def original(key: str) -> Any:
    """The original default of hashed field `key` (raises MissingDefault when there is none)."""
    if key not in ORIGINAL_DEFAULTS:
        raise MissingDefault(key)
    return ORIGINAL_DEFAULTS[key]
