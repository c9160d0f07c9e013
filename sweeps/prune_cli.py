"""`prunetune prune`: prune one model once and print its direct and effective sparsity.

Why a command beside `run`: to try a pruner or check a target without writing a spec. It does what
one cell of a sweep does up to the sparsity report — seed, data, model, dense training first for a
pruner that runs after training, prune to the direct or effective target — and prints the overall
and per-layer sparsities; nothing is stored. Optionally `--save FILE` keeps the pruned state_dict
(masks included, loadable with `pruning.masks.load_state_dict`).
"""

from __future__ import annotations

import argparse
import math

TARGETS = ("direct", "effective")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("prune", help="prune one model to a direct or effective target and "
                              "print its sparsity report (nothing is stored)")
    p.add_argument("--model", default="lenet300100", help="registry name (default lenet300100)")
    p.add_argument("--dataset", default="digits", help="registry name (default digits)")
    p.add_argument("--pruner", required=True, help="registry name, e.g. random/igq, snip, magnitude/global")
    p.add_argument("--sparsity", type=float, required=True, help="target sparsity in [0, 1)")
    p.add_argument("--target", choices=TARGETS, default="direct", help="which sparsity the target is")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=5,
                   help="dense training epochs before a post-training pruner (default 5)")
    p.add_argument("--rounds", type=int, default=None, help="rounds of an iterative pruner")
    p.add_argument("--data-root", default=None, help="data root (default $PRUNETUNE_DATA or ./data)")
    p.add_argument("--save", default=None, help="write the pruned state_dict (with masks) here")
    p.set_defaults(func=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    import torch

    from pruning import data, masks, models
    from pruning import train as train_lib
    from pruning.lomp import LOMP_L1, lomp_config
    from pruning.pruners import PRUNERS, prune

    if args.pruner not in PRUNERS:
        raise ValueError(f"pruner {args.pruner!r}: choose from {', '.join(sorted(PRUNERS))}")
    masks.check_sparsity(args.sparsity)
    if args.seed < 0:
        raise ValueError(f"seed {args.seed}: must be ≥ 0")
    info = PRUNERS[args.pruner]
    train_split, test_split = data.load(args.dataset, root=args.data_root, seed=args.seed)
    train_lib.seed_everything(args.seed)
    model = models.build(args.model, input_shape=train_split.input_shape,
                         num_classes=train_split.num_classes)
    options = {} if args.rounds is None else {"rounds": args.rounds}
    cfg = train_lib.TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05, eval_every=0)
    if info.when == "after" or args.pruner == "imp":
        print(f"training {args.model} on {args.dataset} for {args.epochs} epochs (dense) ...")
        if info.needs_l1_training:
            cfg = lomp_config(cfg, LOMP_L1.get(args.model, 5e-5))  # the authors' λ, else FC5's
        init = {k: v.clone() for k, v in model.state_dict().items()}
        train_lib.train(model, train_split, test_split, cfg, seed=args.seed)
        if args.pruner == "imp":
            options.update(rewind_state=init,
                           train_fn=lambda m: train_lib.train(m, train_split, None, cfg, seed=args.seed))
    result = prune(model, args.pruner, args.sparsity, target=args.target,
                   data=train_split if info.needs_data else None, seed=args.seed, **options)
    _, acc = train_lib.evaluate(model, test_split)
    print(f"{args.pruner} on {args.model}/{args.dataset}, {args.target} target {args.sparsity}"
          f"{'' if result.target_met else ' (not met: the dense net is already sparser)'}:")
    print(f"  direct    sparsity {result.direct_sparsity:.6f}  compression {_fmt(result.direct_compression)}")
    print(f"  effective sparsity {result.effective_sparsity:.6f}  compression "
          f"{_fmt(result.effective_compression)}")
    print(f"  removed {result.removed_count:,} of {result.n_prunable:,} weights; test accuracy without "
          f"retraining {acc:.4f}; {result.seconds:.2f}s")
    print(f"  {'layer':<24} {'weights':>10} {'direct':>9} {'effective':>9}")
    for row in result.report.layers:
        print(f"  {row.layer:<24} {row.n_weights:>10,} {row.direct_sparsity:>9.4f} "
              f"{row.effective_sparsity:>9.4f}")
    if args.save:
        torch.save(model.state_dict(), args.save)
        print(f"pruned state_dict (with masks) written to {args.save}")
    return 0


def _fmt(c: float) -> str:
    return "∞" if math.isinf(c) else f"{c:,.2f}×"
