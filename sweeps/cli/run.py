"""`prunetune run | resume | validate | demo`: the sweep commands, all through `sweeps.runner`.

`validate` and `run` share `checked_spec`: the spec's sections and rules (`build_spec`) and the
backend's own checks (`preflight`, with the same --backend and Ray flags), so whatever `run` would
refuse before its first cell, `validate` refuses, with the same lines.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from analysis.load import load_table
from analysis.output import summary
from sweeps.backends import RayOptions
from sweeps.cells import expand
from sweeps.cli.common import Exit, add_backend_arguments, add_storage, add_sweep, cells_exit, ray_options
from sweeps.paths import default_storage, locate_sweep
from sweeps.runner import closing_lines, preflight, run_spec, stored_spec
from sweeps.spec import Spec, load_spec

def demo_spec_path() -> Path:
    """The packaged demo spec (sweeps/configs/demo.yaml), also inside an installed wheel."""
    return Path(str(resources.files("sweeps") / "configs" / "demo.yaml"))


def checked_spec(args: argparse.Namespace) -> tuple[Spec, RayOptions | None]:
    """The spec at `args.spec` with the flags' storage and backend, and everything checked that
    `run` checks before its first cell."""
    spec = load_spec(args.spec, storage=args.storage, backend=args.backend)
    options = ray_options(args, spec.backend)
    preflight(spec, options)
    return spec, options


def cmd_validate(args: argparse.Namespace) -> int:
    spec, _ = checked_spec(args)
    cells = expand(spec)
    grids = [_shape(g) for g in spec.grids or (spec,)]
    shape = grids[0] if len(grids) == 1 else f"{len(grids)} grids: " + "; ".join(grids)
    print(f"{args.spec}: OK — sweep {spec.name!r}, {len(cells)} cells ({shape}), backend {spec.backend}, "
          f"storage {spec.storage}")
    return Exit.OK


def _shape(spec: Spec) -> str:
    return (f"{len(spec.pairs)} model/dataset pairs × {len(spec.pruner)} pruners × "
            f"{max(len(spec.sparsity), 1)} sparsities × {len(spec.target)} targets × {len(spec.seed)} seeds")


def cmd_run(args: argparse.Namespace) -> int:
    spec, options = checked_spec(args)
    return cells_exit(closing_lines(spec, run_spec(spec, options=options)))


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a stored sweep: on Ray, restore its Tune experiment first; on serial, run what is missing."""
    spec = stored_spec(locate_sweep(args.sweep, args.storage), backend=args.backend)
    options = ray_options(args, spec.backend)
    if spec.backend == "ray":
        from sweeps.resume import resume  # imports Ray: only when a Ray sweep is resumed

        preflight(spec, options)
        summary_ = resume(spec, options=options)
    else:
        summary_ = run_spec(spec)
    return cells_exit(closing_lines(spec, summary_))


def demo_summary(spec: Spec) -> str:
    """Mean over seeds per pruner and sparsity: test accuracy, direct and effective compression."""
    df = load_table(spec.name, "trials", storage=spec.storage, use_cache=False)
    df = df[df["status"] != "failed"]
    if df.empty:
        return "no finished cells"
    g = (df.groupby(["model", "pruner", "sparsity"], dropna=False)
         .agg(test_acc=("test_acc", "mean"), direct_compression=("direct_compression", "mean"),
              effective_compression=("effective_compression", "mean"), seeds=("seed", "nunique"))
         .reset_index())
    return g.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def cmd_demo(args: argparse.Namespace) -> int:
    storage = args.storage or default_storage()  # the demo spec names none
    spec = load_spec(demo_spec_path(), storage=storage, backend="serial")
    code = cells_exit(closing_lines(spec, run_spec(spec)))
    print(demo_summary(spec))
    summary(storage=spec.storage, sweep=spec.name)
    return code


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="run (or continue) a sweep")
    r.add_argument("spec", help="the sweep's YAML spec")
    add_storage(r)
    add_backend_arguments(r)
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("resume", help="continue a stored sweep after a crash or Ctrl-C (failed and "
                                      "missing cells run again)")
    add_sweep(c)
    add_storage(c)
    add_backend_arguments(c)
    c.set_defaults(func=cmd_resume)

    v = sub.add_parser("validate", help="check a spec completely, as run would (same flags); start nothing")
    v.add_argument("spec", help="the sweep's YAML spec")
    add_storage(v)
    add_backend_arguments(v)
    v.set_defaults(func=cmd_validate)

    d = sub.add_parser("demo", help="run the packaged demo sweep (digits, CPU) into --storage (default ./results)")
    add_storage(d)
    d.set_defaults(func=cmd_demo)


__all__ = ["checked_spec", "cmd_demo", "cmd_resume", "cmd_run", "cmd_validate", "demo_spec_path", "register"]
