"""`prunetune prune`: prune one model once, as one cell of a sweep would, and print its sparsities.

Why a command beside `run`: to try a pruner or check a target without writing a spec. It builds a
one-cell spec from the flags and runs the trial's own steps (seed → data → model → obtain →
sparsity) with protocol `none`: a pruner at initialization prunes the untrained model; a pruner
after training (magnitude, LAMP, IMP, LOMP) first trains the dense model for `--epochs`. The
dense model is trained in a temporary store and discarded: nothing is kept. `--save FILE` writes
the pruned state_dict (masks included, loadable with `pruning.masks.load_state_dict`).

A pruner's options (`--option batches=4`, values read as YAML) are checked by the same declaration
as a spec's `prune.options.<pruner>` (`PrunerInfo.options`); `--help` lists them per pruner.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile

import torch
import yaml

from pruning.data import DATASETS
from pruning.models import MODELS
from pruning.options import describe, field_help, hints
from pruning.pruners import PRUNERS, TARGETS
from sweeps.cells import expand
from sweeps.cli.common import Exit, UserError, add_data_root, choices_metavar
from sweeps.spec import build_spec
from sweeps.trial import Where, run_steps

STEPS = ("seed", "data", "model", "obtain", "sparsity")
# the command's short training before a post-training pruner (a spec's `train` section otherwise)
TRAIN = {"batch_size": 64, "lr": 0.05, "eval_every": 0}


def options_help() -> str:
    """Every pruner's options, from their declarations: `name  allowed (default): help`."""
    lines = ["pruner options (--option NAME=VALUE):"]
    for name, info in PRUNERS.items():
        if info.delegate is not None or not dataclasses.fields(info.options):
            continue
        tps = hints(info.options)
        for f in dataclasses.fields(info.options):
            lines.append(f"  {name} {f.name}: {describe(tps[f.name], f.metadata.get('bounds'))} "
                         f"(default {f.default!r}); {field_help(f)}")
    return "\n".join(lines)


def parse_option(text: str) -> tuple[str, object]:
    """`NAME=VALUE` with VALUE read as YAML (4, 0.5, true, null, [1, 8, 8])."""
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise UserError(f"--option {text!r}: expected NAME=VALUE, e.g. --option batches=4")
    try:
        return name.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise UserError(f"--option {text!r}: the value is not valid YAML") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune one model to a direct or effective target and "
                       "print its sparsity report (nothing is stored)",
                       epilog=options_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lenet300100", choices=tuple(MODELS), metavar="MODEL",
                   help=f"{choices_metavar(tuple(MODELS))} (default lenet300100)")
    p.add_argument("--dataset", default="digits", choices=tuple(DATASETS), metavar="DATASET",
                   help=f"{choices_metavar(tuple(DATASETS))} (default digits)")
    p.add_argument("--pruner", required=True, choices=tuple(PRUNERS), metavar="PRUNER",
                   help=choices_metavar(tuple(PRUNERS)))
    p.add_argument("--sparsity", type=float, required=True, help="target sparsity in [0, 1)")
    p.add_argument("--target", choices=TARGETS, default="direct", help="which sparsity the target is")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=5,
                   help="dense training epochs before a post-training pruner (default 5)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="an option of the pruner (repeatable; listed below)")
    p.add_argument("--lomp-l1", type=float, default=None,
                   help="λ of LOMP's L1 training (default: the authors' value for the model)")
    add_data_root(p)
    p.add_argument("--save", default=None, help="write the pruned state_dict (with masks) here")
    p.set_defaults(func=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    options = dict(parse_option(o) for o in args.option)
    with tempfile.TemporaryDirectory(prefix="prunetune-prune-") as tmp:
        spec = build_spec({
            "name": "prune", "model": args.model, "dataset": args.dataset, "pruner": args.pruner,
            "sparsity": args.sparsity, "seed": args.seed, "target": args.target,
            "train": {**TRAIN, "epochs": args.epochs},
            "prune": {"protocol": "none", "lomp_l1": args.lomp_l1, "options": {args.pruner: options}},
            "data": {"root": args.data_root},
        }, storage=tmp)
        (cell,) = expand(spec)
        st = run_steps(cell, Where(storage=tmp, data_root=spec.data.root), STEPS)
    row, result = st.row, st.prune_result  # `dense` prunes nothing: no PruneResult
    met = result is None or result.target_met
    removed = 0 if result is None else result.removed_count
    print(f"{args.pruner} on {args.model}/{args.dataset}, {args.target} target {args.sparsity}"
          f"{'' if met else ' (not met: the dense net is already sparser)'}:")
    if cell.train.l1:
        print(f"  dense model trained with LOMP's L1 term: lomp_l1 = {cell.train.l1:g} over "
              f"{cell.train.l1_scope} parameters")
    for kind in ("direct", "effective"):
        print(f"  {kind:<9} sparsity {row[f'{kind}_sparsity']:.6f}  compression "
              f"{_fmt(row[f'{kind}_compression'])}")
    seconds = st.clock.seconds.get("prune", 0.0)
    print(f"  removed {removed:,} of {row['n_prunable']:,} weights; test accuracy without "
          f"retraining {row['test_acc']:.4f}; {seconds:.2f}s")
    print(f"  {'layer':<24} {'weights':>10} {'direct':>9} {'effective':>9}")
    for layer in st.tables["layers"]:
        print(f"  {layer['layer']:<24} {layer['n_weights']:>10,} {layer['direct_sparsity']:>9.4f} "
              f"{layer['effective_sparsity']:>9.4f}")
    if args.save:
        torch.save(st.model.state_dict(), args.save)
        print(f"pruned state_dict (with masks) written to {args.save}")
    return Exit.OK


def _fmt(c: float) -> str:
    return "∞" if math.isinf(c) else f"{c:,.2f}×"
