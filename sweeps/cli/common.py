"""What every `prunetune` command shares: the exit codes, the user-error type, the parser class, and
each argument that more than one command takes — declared once, with one help text.

Why one module: `--storage` meant slightly different things in five places, the data root had two
names, and `status` exited 0 with failed cells while `run` exited 1. A command now takes its shared
arguments from here, so a new command (or a plugin's) gets the same names, help and exit codes.
"""

from __future__ import annotations

import argparse
import enum
import sys
from collections.abc import Sequence
from typing import NoReturn

from pruning.options import parse
from sweeps.backends import BACKENDS, RayOptions
from sweeps.parse import SpecError


class Exit(enum.IntEnum):
    """The exit codes of every command."""

    OK = 0
    FAILED_CELLS = 1    # the sweep ran (or is stored), some cells failed: they are recorded and named
    USAGE = 2           # a problem the user can fix: one line each, nothing started
    INTERRUPTED = 130   # Ctrl-C: finished cells are kept


def cells_exit(all_done: bool) -> Exit:
    """`run`, `resume`, `demo` and `status` alike: non-zero when a cell failed."""
    return Exit.OK if all_done else Exit.FAILED_CELLS


class UserError(Exception):
    """A one-line problem the user can fix; printed without a traceback, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse with our one-line errors: a bad flag or an unknown choice is `error: …` and exit 2
    (argparse's default prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(Exit.USAGE)


def choices_metavar(choices: Sequence[str]) -> str:
    return "{" + ",".join(choices) + "}"


STORAGE_HELP = ("results root: a path or a pyarrow.fs URI such as s3://bucket/prefix (default: the spec's "
                "storage, else $PRUNETUNE_STORAGE, else ./results)")
SWEEP_HELP = ("a sweep: its name under --storage, its directory (<storage>/<name>), its URI, its stored "
              "spec.yaml, or the spec file it was run from")
DATA_ROOT_HELP = "where data sets live (default: the spec's data.root, else $PRUNETUNE_DATA, else ./data)"


def add_storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", default=None, metavar="ROOT", help=STORAGE_HELP)


def add_sweep(parser: argparse.ArgumentParser, *, several: bool = False) -> None:
    """The positional sweep argument (`several`: a storage root of many sweeps is accepted too)."""
    extra = "; or a storage root, for every sweep in it" if several else ""
    parser.add_argument("sweep", metavar="NAME_OR_PATH", help=SWEEP_HELP + extra)


def add_data_root(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument("--data-root", default=None, required=required, metavar="DIR", help=DATA_ROOT_HELP)


# flag → RayOptions field; only for sweeps on the Ray backend
RAY_FLAGS = {"address": "--address", "max_concurrent": "--max-concurrent", "num_cpus": "--num-cpus",
             "num_gpus": "--num-gpus", "dashboard": "--dashboard", "max_failures": "--max-failures"}


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend and the Ray backend's options (`run`, `resume`, `validate`: validate asks the same
    backend checks that run would)."""
    parser.add_argument("--backend", choices=tuple(BACKENDS), default=None,
                        help="where cells run (default: the spec's backend, else serial)")
    g = parser.add_argument_group("ray backend (with --backend ray or a spec's backend: ray)")
    g.add_argument("--address", default=None,
                   help="join this Ray cluster ('auto', 'ray://head:10001'); default: $RAY_ADDRESS, else a "
                        "local Ray on 127.0.0.1")
    g.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                   help="run at most N trials at once (default: as many as resources allow)")
    g.add_argument("--num-cpus", type=float, default=None, help="local Ray only: CPUs it may use (default: all)")
    g.add_argument("--num-gpus", type=float, default=None, help="local Ray only: GPUs it may use (default: detected)")
    g.add_argument("--dashboard", action="store_true", default=None,
                   help="local Ray only: start the dashboard on 127.0.0.1")
    g.add_argument("--max-failures", type=int, default=None, metavar="N",
                   help="retries of a trial whose process, node or HVP worker died (default 2)")


def ray_options(args: argparse.Namespace, backend: str) -> RayOptions | None:
    """RayOptions from the flags given (checked like any option; problems name the flags); None for
    the serial backend, which refuses Ray's flags."""
    given = {field: getattr(args, field) for field in RAY_FLAGS if getattr(args, field, None) is not None}
    if backend != "ray":
        if given:
            flags = ", ".join(RAY_FLAGS[f] for f in given)
            raise UserError(f"{flags}: only for the Ray backend; this sweep runs on {backend!r} "
                            "(add --backend ray)")
        return None
    options, problems = parse(RayOptions, given)
    if problems:
        raise SpecError([_flag_line(p) for p in problems])
    return options


def _flag_line(problem: str) -> str:
    field, _, text = problem.partition(": ")
    return f"{RAY_FLAGS.get(field, field)}: {text}"
