"""`prunetune data download NAME --data-root DIR`: fetch a data set with torchvision (needs internet)."""

from __future__ import annotations

import argparse

from pruning import data
from sweeps.cli.common import Exit, add_data_root


def cmd_download(args: argparse.Namespace) -> int:
    data.download(args.name, args.data_root)
    print(f"{args.name}: downloaded into {args.data_root}")
    return Exit.OK


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("data", help="data sets")
    actions = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dl = actions.add_parser("download", help="download a data set with torchvision (needs internet)")
    dl.add_argument("name", choices=data.DOWNLOADABLE, help="the data set")
    add_data_root(dl, required=True)
    dl.set_defaults(func=cmd_download)
