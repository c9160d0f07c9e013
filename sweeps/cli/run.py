"""`prunetune run | resume | validate | demo`: the sweep commands, all through `sweeps.runner`."""

from __future__ import annotations

import argparse
import os
from importlib import resources
from pathlib import Path

from analysis import cli as analysis_cli
from sweeps import store
from sweeps.cells import expand
from sweeps.cli.common import add_backend_arguments, add_storage_argument, ray_options
from sweeps.paths import locate_sweep
from sweeps.runner import closing_lines, run_spec, stored_spec
from sweeps.spec import Spec, load_spec

DEMO_STORAGE = "./results"


def demo_spec_path() -> Path:
    """The packaged demo spec (sweeps/configs/demo.yaml), also inside an installed wheel."""
    return Path(str(resources.files("sweeps") / "configs" / "demo.yaml"))


def cmd_validate(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, storage=args.storage)
    cells = expand(spec)
    grids = [_shape(g) for g in spec.grids or (spec,)]
    shape = grids[0] if len(grids) == 1 else f"{len(grids)} grids: " + "; ".join(grids)
    print(f"{args.spec}: OK — sweep {spec.name!r}, {len(cells)} cells ({shape}), storage {spec.storage}")
    return 0


def _shape(spec: Spec) -> str:
    return (f"{len(spec.pairs)} model/dataset pairs × {len(spec.pruner)} pruners × "
            f"{max(len(spec.sparsity), 1)} sparsities × {len(spec.target)} targets × {len(spec.seed)} seeds")


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, storage=args.storage, backend=args.backend, check_local_resources=True)
    summary = run_spec(spec, options=ray_options(args, spec.backend))
    return closing_lines(spec, summary)


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a stored sweep: on Ray, restore its Tune experiment first; on serial, run what is missing."""
    spec = stored_spec(locate_sweep(args.sweep, args.storage), backend=args.backend)
    options = ray_options(args, spec.backend)
    if spec.backend == "ray":
        from sweeps.resume import resume  # imports Ray: only when a Ray sweep is resumed

        summary = resume(spec, options=options)
    else:
        summary = run_spec(spec)
    return closing_lines(spec, summary)


def demo_summary(spec: Spec) -> str:
    """Mean over seeds per pruner and sparsity: test accuracy, direct and effective compression."""
    df = store.read_table(spec.storage, spec.name, "trials").to_pandas()
    df = df[df["status"] != "failed"]
    if df.empty:
        return "no finished cells"
    g = (df.groupby(["model", "pruner", "sparsity"], dropna=False)
         .agg(test_acc=("test_acc", "mean"), direct_compression=("direct_compression", "mean"),
              effective_compression=("effective_compression", "mean"), seeds=("seed", "nunique"))
         .reset_index())
    return g.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def cmd_demo(args: argparse.Namespace) -> int:
    storage = os.path.abspath(args.storage or DEMO_STORAGE)
    spec = load_spec(demo_spec_path(), storage=storage, backend="serial", check_local_resources=True)
    code = closing_lines(spec, run_spec(spec))
    print(demo_summary(spec))
    analysis_cli.summary(storage=spec.storage, sweep=spec.name)
    return code


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="run (or continue) a sweep")
    r.add_argument("spec", help="the sweep's YAML spec")
    add_storage_argument(r)
    add_backend_arguments(r)
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("resume", help="continue a stored sweep after a crash or Ctrl-C (failed and "
                                      "missing cells run again)")
    c.add_argument("sweep", metavar="NAME_OR_PATH", help="sweep name (with --storage), sweep directory or URI")
    c.add_argument("--storage", default=None, metavar="ROOT",
                   help="results root of a sweep name (default: $PRUNETUNE_STORAGE or ./results)")
    add_backend_arguments(c)
    c.set_defaults(func=cmd_resume)

    v = sub.add_parser("validate", help="check a spec completely; start nothing")
    v.add_argument("spec")
    add_storage_argument(v)
    v.set_defaults(func=cmd_validate)

    d = sub.add_parser("demo", help="run the packaged demo sweep (digits, CPU) into ./results")
    d.add_argument("--storage", default=None, help=f"results root (default {DEMO_STORAGE})")
    d.set_defaults(func=cmd_demo)


__all__ = ["cmd_demo", "cmd_resume", "cmd_run", "cmd_validate", "demo_spec_path", "register"]
