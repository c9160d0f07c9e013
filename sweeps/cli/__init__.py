"""`prunetune`: run, inspect and validate sweeps; prune one model; tables and plots; data downloads.

    prunetune validate SPEC                            all problems of a spec, one line each (exit 2)
    prunetune run SPEC [--backend serial|ray] [--storage ROOT] [Ray options]
    prunetune resume NAME_OR_PATH [--storage ROOT] [Ray options]
    prunetune status NAME_OR_PATH [--storage ROOT]
    prunetune demo [--storage ROOT]                    the packaged demo sweep on digits, CPU, minutes
    prunetune prune --pruner P --sparsity S [...]      one model pruned once; nothing stored
    prunetune tables | plot NAME_OR_PATH [...]         analysis of stored sweeps
    prunetune data download NAME --root DIR            torchvision download (needs internet)

This package is the only code that sees both `sweeps` and `analysis`: the layers meet here.
Why errors are one line and exit 2: a user's mistake (a bad spec, a missing data set) is not a bug,
so it gets the sentence that says what to fix, never a traceback. Failed *cells* are different:
they are recorded in the store, listed at the end, and make `run` exit 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from analysis import cli as analysis_cli
from sweeps.cli import data, prune, run, status
from sweeps.cli.common import EXIT_FAILED_CELLS, EXIT_USAGE, UserError
from sweeps.spec import SpecError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prunetune", description="Pruning sweeps: direct and effective "
                                "sparsity, Hessian spectra by SLQ, pruning limits.")
    p.add_argument("-v", "--verbose", action="store_true", help="log details (tracebacks of failed cells)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.register(sub)          # run, resume, validate, demo
    status.register(sub)
    prune.register(sub)
    analysis_cli.register(sub)  # tables, plot, limit-report
    data.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run a parsed command: user errors become one line on stderr and exit 2, never a traceback."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except SpecError as e:
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except (UserError, ValueError, FileNotFoundError) as e:
        if args.verbose and not isinstance(e, UserError):
            raise
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished cells are kept; run again to continue", file=sys.stderr)
        return 130


__all__ = ["EXIT_FAILED_CELLS", "EXIT_USAGE", "UserError", "build_parser", "dispatch", "main"]
