"""What every `prunetune` command shares: the user-error type, exit codes, Ray's flags."""

from __future__ import annotations

import argparse

from sweeps.backends import RayOptions

EXIT_USAGE = 2          # a problem the user can fix: one line, nothing started
EXIT_FAILED_CELLS = 1   # the sweep ran, some cells failed (they are recorded and named)

# flag → RayOptions field; only for sweeps on the Ray backend
RAY_FLAGS = {"address": "--address", "max_concurrent": "--max-concurrent", "num_cpus": "--num-cpus",
             "num_gpus": "--num-gpus", "dashboard": "--dashboard", "max_failures": "--max-failures"}


class UserError(Exception):
    """A one-line problem the user can fix; printed without a traceback, exit 2."""


def add_storage_argument(parser: argparse.ArgumentParser, what: str = "results root") -> None:
    parser.add_argument("--storage", default=None, metavar="ROOT",
                        help=f"{what}: path or pyarrow.fs URI (default: the spec's, else "
                             "$PRUNETUNE_STORAGE or ./results)")


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend and the Ray backend's options (for `run` and `resume`)."""
    parser.add_argument("--backend", choices=("serial", "ray"), default=None,
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
    """RayOptions from the flags given; None for the serial backend, which refuses Ray's flags."""
    given = {field: getattr(args, field) for field in RAY_FLAGS if getattr(args, field, None) is not None}
    if backend != "ray":
        if given:
            flags = ", ".join(RAY_FLAGS[f] for f in given)
            raise UserError(f"{flags}: only for the Ray backend; this sweep runs on {backend!r} "
                            "(add --backend ray)")
        return None
    return RayOptions(**given)
