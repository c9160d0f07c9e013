"""Ray-specific command-line pieces: run options and `resume`, ready to be wired into `prunetune`.

    add_run_arguments(parser)   --address, --max-concurrent, --num-cpus, --num-gpus, --dashboard, --max-failures
    options_from_args(args)     → RayOptions
    register(subparsers)        adds `resume NAME_OR_PATH [--storage ROOT] [run options]`

Standalone until `sweeps/cli.py` wires them in:

    python -m sweeps.ray_cli run SPEC [--storage ROOT] [run options]
    python -m sweeps.ray_cli resume NAME_OR_PATH [--storage ROOT] [run options]

Exit codes as `prunetune`: 0 all cells done, 1 some cell failed or is missing (after Ctrl-C too:
finished cells are kept, `resume` continues), 2 a usage error (one line, nothing started).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from sweeps.backends.base import RunSummary

EXIT_FAILED_CELLS = 1


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the Ray backend for `run` and `resume`."""
    g = parser.add_argument_group("ray backend")
    g.add_argument("--address", default=None,
                   help="join this Ray cluster ('auto', 'ray://head:10001'); default: $RAY_ADDRESS, else a "
                        "local Ray on 127.0.0.1")
    g.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                   help="run at most N trials at once (default: as many as resources allow)")
    g.add_argument("--num-cpus", type=float, default=None, help="local Ray only: CPUs it may use (default: all)")
    g.add_argument("--num-gpus", type=float, default=None,
                   help="local Ray only: GPUs it may use (default: detected)")
    g.add_argument("--dashboard", action="store_true", help="local Ray only: start the dashboard on 127.0.0.1")
    g.add_argument("--max-failures", type=int, default=2, metavar="N",
                   help="retries of a trial whose process, node or HVP worker died (default 2)")


def options_from_args(args: argparse.Namespace) -> Any:
    """RayOptions from parsed arguments (ValueError naming the flag for a bad value)."""
    from sweeps.backends.ray_tune import RayOptions

    return RayOptions(address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                      max_concurrent=args.max_concurrent, dashboard=args.dashboard,
                      max_failures=args.max_failures)


def print_summary(sweep: str, summary: RunSummary, *, storage: str | None = None) -> int:
    """The closing lines of a run: counts, each failed/missing cell with its error; the exit code."""
    print(f"sweep {sweep!r}: {len(summary.done)} done, {len(summary.failed)} failed or missing, "
          f"{len(summary.skipped)} already done", file=sys.stderr)
    for cid in summary.failed:
        print(f"  failed {cid}: {summary.errors.get(cid)}", file=sys.stderr)
    if summary.failed:
        where = f" --storage {storage}" if storage else ""
        print(f"continue with: prunetune resume {sweep}{where} (failed and missing cells run again)",
              file=sys.stderr)
    return EXIT_FAILED_CELLS if summary.failed else 0


def run_spec(spec_file: str | os.PathLike, *, storage: str | None, options: Any) -> int:
    """`prunetune run SPEC --backend ray` with Ray options: validate, store spec.yaml, run, summarize."""
    from sweeps import store
    from sweeps.backends.ray_tune import RayBackend
    from sweeps.cells import expand
    from sweeps.progress import Progress
    from sweeps.spec import build_spec, dump_yaml, read_yaml
    from sweeps.trial import Where

    spec = build_spec(read_yaml(spec_file), source=str(spec_file), storage=storage, backend="ray")
    cells = expand(spec)
    backend = RayBackend.from_spec(spec, options)
    store.write_spec(spec.storage, spec.name, dump_yaml(spec))
    print(f"sweep {spec.name!r}: {len(cells)} cells on backend 'ray', results in {spec.storage}/{spec.name}",
          file=sys.stderr)
    progress = Progress(len(cells))
    summary = backend.run(cells, Where(storage=spec.storage, data_root=spec.data.root), progress=progress)
    progress.close()
    return print_summary(spec.name, summary, storage=spec.storage)


def cmd_run(args: argparse.Namespace) -> int:
    return run_spec(args.spec, storage=args.storage, options=options_from_args(args))


def cmd_resume(args: argparse.Namespace) -> int:
    from sweeps.resume import locate, resume

    summary = resume(args.sweep, storage=args.storage, options=options_from_args(args))
    located = locate(args.sweep, args.storage)
    return print_summary(located.sweep, summary, storage=located.storage)


def register(subparsers: Any) -> None:
    """Add `resume` to a `prunetune`-style subparsers object."""
    r = subparsers.add_parser("resume", help="continue a Ray sweep after a crash or Ctrl-C")
    r.add_argument("sweep", metavar="NAME_OR_PATH", help="sweep name (with --storage) or sweep directory")
    r.add_argument("--storage", default=None, help="results root (default: $PRUNETUNE_STORAGE or ./results)")
    add_run_arguments(r)
    r.set_defaults(func=cmd_resume)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sweeps.ray_cli", description="Ray sweeps: run and resume")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("run", help="run (or continue) a sweep on Ray")
    r.add_argument("spec")
    r.add_argument("--storage", default=None)
    add_run_arguments(r)
    r.set_defaults(func=cmd_run)
    register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from sweeps.cli import dispatch  # lazily: sweeps.cli imports this module

    return dispatch(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
