"""`prunetune data download NAME --root DIR`: fetch a data set with torchvision (needs internet)."""

from __future__ import annotations

import argparse

from pruning import data


def cmd_download(args: argparse.Namespace) -> int:
    data.download(args.name, args.root)
    print(f"{args.name}: downloaded into {args.root}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("data", help="data sets")
    actions = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dl = actions.add_parser("download", help="download a data set with torchvision (needs internet)")
    dl.add_argument("name")
    dl.add_argument("--root", required=True, help="directory to download into")
    dl.set_defaults(func=cmd_download)
