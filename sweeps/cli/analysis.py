"""`prunetune tables | plot | limit-report`: the analysis commands (what they write: `analysis.output`)."""

from __future__ import annotations

import argparse
import os
import sys

from analysis import tables as T
from analysis.load import resolve
from analysis.output import (PLOT_TABLES, default_out, load_frames, parse_floats, write_limit_report,
                             write_tables)
from sweeps.cli.common import Exit, add_storage, add_sweep


def cmd_tables(args: argparse.Namespace) -> int:
    names = T.table_names(args.table)
    sweeps = resolve(args.sweep, args.storage)
    write_tables(sweeps, names, args.format, out=args.out, strict=args.strict,
                 levels=parse_floats(args.levels, "levels"), sparsities=parse_floats(args.sparsities, "sparsities"),
                 stream=sys.stdout, use_cache=not args.no_cache, auto_levels=args.levels == "auto",
                 wide=args.wide)
    return Exit.OK


def cmd_plot(args: argparse.Namespace) -> int:
    from analysis.plots import plot_all

    sweeps = resolve(args.sweep, args.storage)
    frames = load_frames(sweeps, PLOT_TABLES, strict=args.strict, use_cache=not args.no_cache)
    out = args.out or default_out(sweeps)
    try:
        paths = plot_all(frames, out)
    except OSError as e:  # a read-only store, a full disk: the user picks another --out
        raise ValueError(f"--out {out}: cannot write plots ({e.strerror or e}); choose another --out") from e
    for p in paths:
        print(f"wrote {p}")
    if not paths:
        print(f"{sweeps.label}: nothing to plot yet (no finished cells)")
    return Exit.OK


def cmd_limit_report(args: argparse.Namespace) -> int:
    from analysis.limit_report import REPORT_TABLES

    sweeps = resolve(args.sweep, args.storage)
    frames = load_frames(sweeps, REPORT_TABLES, strict=args.strict, use_cache=not args.no_cache)
    out = args.out or os.path.join(default_out(sweeps), "limit_report")
    try:
        write_limit_report(frames, out, sys.stdout)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write the report ({e.strerror or e}); choose another --out") from e
    return Exit.OK


def _common(p: argparse.ArgumentParser, out_help: str) -> None:
    add_sweep(p, several=True)
    add_storage(p)
    p.add_argument("--out", default=None, metavar="DIR", help=out_help)
    p.add_argument("--strict", action="store_true", help="fail on an unreadable result file")
    p.add_argument("--no-cache", action="store_true",
                   help="read every result file; neither use nor write <sweep>/_analysis/cache")


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tables", help="comparison tables of one or more sweeps")
    _common(t, "write one file per table into DIR (default: print)")
    t.add_argument("--table", default="all", choices=(*T.TABLE_SPECS, "all"), help="which table (default all)")
    t.add_argument("--format", default="md", choices=T.FORMATS, help="output format (default md)")
    t.add_argument("--levels", default=None, metavar="10,100,...|auto",
                   help="compression levels of the accuracy table (default 10,100,1000,10000; "
                        "auto: the sweep's requested compressions and the decades it spans)")
    t.add_argument("--sparsities", default=None, metavar="0.9,0.99,...",
                   help="sparsities of the lomp table (default: the requested sparsities)")
    t.add_argument("--wide", action="store_true",
                   help="limit table: every column (bands, bounds, resolution numbers, ε), not only what a "
                        "reader decides from")
    t.set_defaults(func=cmd_tables)

    p = sub.add_parser("plot", help="PNG figures of one or more sweeps")
    _common(p, "output directory (default <sweep>/_analysis)")
    p.set_defaults(func=cmd_plot)

    r = sub.add_parser("limit-report", help="every analysis of the limit cells: tables and figures")
    _common(r, "output directory (default <sweep>/_analysis/limit_report)")
    r.set_defaults(func=cmd_limit_report)
