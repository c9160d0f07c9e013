"""`prunetune`: run, inspect and validate sweeps; prune one model; tables and plots; data downloads.

    prunetune validate SPEC [--backend serial|ray] [Ray options]   every problem, one line each (exit 2)
    prunetune run SPEC [--backend serial|ray] [--storage ROOT] [Ray options]
    prunetune resume NAME_OR_PATH [--storage ROOT] [Ray options]
    prunetune status NAME_OR_PATH [--storage ROOT]                 exit 1 when cells failed
    prunetune demo [--storage ROOT]                    the packaged demo sweep on digits, CPU, minutes
    prunetune prune --pruner P --sparsity S [--option K=V ...]    one model pruned once; nothing stored
    prunetune tables | plot | limit-report NAME_OR_PATH [...]     analysis of stored sweeps
    prunetune data download NAME --data-root DIR       torchvision download (needs internet)

This package is the only code that sees both `sweeps` and `analysis`: the layers meet here. Every
command is a module with `register(subparsers)`; shared arguments and exit codes are in `common`.
Why errors are one line and exit 2: a user's mistake (a bad spec, a missing data set, a bad flag) is
not a bug, so it gets the sentence that says what to fix, never a traceback. Failed *cells* are
different: they are recorded in the store, listed, and make `run`, `resume`, `demo` and `status`
exit 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sweeps.cli import analysis, data, prune, run, status
from sweeps.cli.common import Exit, Parser, UserError
from sweeps.parse import SpecError

COMMANDS = (run, status, prune, analysis, data)  # each registers its subcommands, in help order


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="prunetune", description="Pruning sweeps: direct and effective sparsity, Hessian spectra "
               "by SLQ, pruning limits.")
    p.add_argument("-v", "--verbose", action="store_true", help="log details (tracebacks of failed cells)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad flag (Parser.error: one line, 2)
        return int(e.code or 0)
    return dispatch(args)


def dispatch(args: argparse.Namespace) -> int:
    """Run a parsed command: user errors become one line on stderr and exit 2, never a traceback."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or Exit.OK)
    except SpecError as e:
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        return Exit.USAGE
    except (UserError, ValueError, FileNotFoundError) as e:
        if args.verbose and not isinstance(e, UserError):
            raise
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}",
              file=sys.stderr)
        return Exit.USAGE
    except KeyboardInterrupt:
        print("interrupted: finished cells are kept; run again to continue", file=sys.stderr)
        return Exit.INTERRUPTED


__all__ = ["Exit", "UserError", "build_parser", "dispatch", "main"]
