"""The `tables` and `plot` subcommands, and the summary the demo prints.

    prunetune tables NAME_OR_PATH [--table accuracy|compression|limit|lomp|all] [--format md|csv|latex]
                     [--out DIR] [--storage ROOT] [--strict] [--levels 10,100,1000,10000|auto]
                     [--sparsities 0.9,0.99] [--no-cache]
    prunetune plot NAME_OR_PATH [--out DIR] [--storage ROOT] [--strict] [--no-cache]
    prunetune limit-report NAME_OR_PATH [--out DIR] [--storage ROOT] [--strict] [--no-cache]

`sweeps.cli` calls `register(subparsers)`; `python -m analysis.cli ...` runs the same commands alone.
Why errors are one line and exit 2: a wrong name or flag is the user's to fix, not a bug to trace.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO

import pandas as pd
import pyarrow.fs as pafs

from analysis import tables as T
from analysis.load import Store, load_table, resolve

EXIT_USAGE = 2
EXTENSIONS = {"md": "md", "csv": "csv", "latex": "tex"}
PLOT_TABLES = ("trials", "spectra", "curves")


def parse_floats(text: str | None, field: str) -> list[float] | None:
    """'10,100,1e3' → [10.0, 100.0, 1000.0]; a bad item names the flag and the expected form."""
    if text is None or text == "auto":
        return None
    values = []
    for item in (t.strip() for t in text.split(",")):
        try:
            values.append(float(item))
        except ValueError:
            raise ValueError(f"--{field}: {item!r} is not a number; give comma-separated numbers "
                             f"like {'10,100,1000' if field == 'levels' else '0.9,0.99'}") from None
    return values


def load_frames(store: Store, names: Sequence[str] | dict[str, Sequence[str]], *, strict: bool,
                use_cache: bool = True) -> dict[str, pd.DataFrame]:
    """The stored tables `names`, all columns; or, given {table: columns}, only those columns."""
    wanted = names if isinstance(names, dict) else {t: None for t in names}
    frames = {t: load_table(store, t, strict=strict, use_cache=use_cache, columns=c) for t, c in wanted.items()}
    if "trials" in frames and frames["trials"].empty:
        raise ValueError(f"{store.label}: no trials yet (no cell of {', '.join(store.names)} has finished)")
    return frames


def default_out(store: Store) -> str:
    """`<sweep>/_analysis` for one local sweep ('_' marks it as no result), else ./prunetune_analysis."""
    if isinstance(store.filesystem, pafs.LocalFileSystem) and len(store.sweeps) == 1:
        return os.path.join(store.sweeps[0], "_analysis")
    return os.path.join("prunetune_analysis", "_".join(store.names)[:80] or "sweeps")


def write_tables(store: Store, names: Sequence[str], fmt: str, *, out: str | None, strict: bool,
                 levels: Sequence[float] | None, sparsities: Sequence[float] | None,
                 stream: TextIO, use_cache: bool = True, auto_levels: bool = False,
                 wide: bool = False) -> list[str]:
    """Build and render each table; print to `stream`, or write files into `out` and say where."""
    if fmt not in T.FORMATS:
        raise ValueError(f"--format: {fmt!r}; choose from {', '.join(T.FORMATS)}")
    frames = load_frames(store, T.columns_needed(names, auto_levels=auto_levels), strict=strict,
                         use_cache=use_cache)
    written = []
    if auto_levels:
        levels = T.auto_levels(frames["trials"])
    for name in names:
        tidy = T.build(name, frames, levels=levels, sparsities=sparsities)
        if out is None:
            print(T.render(name, tidy, fmt, wide=wide), file=stream)
            continue
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--out {out}: cannot create the directory ({e.strerror or e})") from e
        parts = {key: {key: frame} for key, frame in tidy.items()} if fmt == "csv" else {name: tidy}
        for key, part in parts.items():
            path = os.path.join(out, f"{key}.{EXTENSIONS[fmt]}")
            with open(path, "w", encoding="utf-8") as f:
                f.write(T.render(name, part, fmt, wide=wide) if fmt != "csv" else T.csv(part[key]))
            written.append(path)
            print(f"wrote {path}", file=stream)
    return written


def cmd_tables(args: argparse.Namespace) -> int:
    names = T.table_names(args.table)
    store = resolve(args.sweep, args.storage)
    write_tables(store, names, args.format, out=args.out, strict=args.strict,
                 levels=parse_floats(args.levels, "levels"), sparsities=parse_floats(args.sparsities, "sparsities"),
                 stream=sys.stdout, use_cache=not args.no_cache, auto_levels=args.levels == "auto",
                 wide=args.wide)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from analysis.plots import plot_all

    store = resolve(args.sweep, args.storage)
    frames = load_frames(store, PLOT_TABLES, strict=args.strict, use_cache=not args.no_cache)
    out = args.out or default_out(store)
    try:
        paths = plot_all(frames, out)
    except OSError as e:  # a read-only store, a full disk: the user picks another --out
        raise ValueError(f"--out {out}: cannot write plots ({e.strerror or e}); choose another --out") from e
    for p in paths:
        print(f"wrote {p}")
    if not paths:
        print(f"{store.label}: nothing to plot yet (no finished cells)")
    return 0


def write_limit_report(frames: dict[str, pd.DataFrame], out: str, stream: TextIO) -> list[str]:
    """Every table of `analysis.limit_report` (one CSV each, and all of them in Markdown in
    `limit_report.md`) and every figure of `analysis.limit_plots` the frames support, into `out`;
    print and return the paths."""
    from analysis import limit_plots, limit_report

    if T.ok_rows(frames["trials"], kind="limit").empty:
        raise ValueError("no finished limit cells (kind: limit) in this sweep; limit-report reads those")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create the directory ({e.strerror or e})") from e
    tidy = limit_report.build(frames)
    written = []
    for name, frame in tidy.items():
        if not frame.empty:
            written.append(os.path.join(out, f"{name}.csv"))
            with open(written[-1], "w", encoding="utf-8") as f:
                f.write(T.csv(frame))
    figures = limit_plots.plot_report(frames, out)
    text = ["# pruning-limit report", ""]
    text += [f"## {s.title}\n\n{T.markdown(s.frame)}\n" for s in limit_report.sections(tidy)]
    text += ["## figures", "", *(f"- [{os.path.basename(p)}]({os.path.basename(p)})" for p in figures), ""]
    written += [*figures, os.path.join(out, "limit_report.md")]
    with open(written[-1], "w", encoding="utf-8") as f:
        f.write("\n".join(text))
    for p in written:
        print(f"wrote {p}", file=stream)
    return written


def cmd_limit_report(args: argparse.Namespace) -> int:
    from analysis.limit_report import REPORT_TABLES

    store = resolve(args.sweep, args.storage)
    frames = load_frames(store, REPORT_TABLES, strict=args.strict, use_cache=not args.no_cache)
    out = args.out or os.path.join(default_out(store), "limit_report")
    try:
        write_limit_report(frames, out, sys.stdout)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write the report ({e.strerror or e}); choose another --out") from e
    return 0


def _has_values(tidy: dict[str, pd.DataFrame]) -> bool:
    """False for a table with no rows, or whose every cell is blank (no supported level)."""
    return any(not f.empty and ("mean" not in f or f["mean"].notna().any()) for f in tidy.values())


def summary(storage: str | None = None, sweep: str | None = None, *, out: str | None = None,
            stream: TextIO | None = None, strict: bool = False) -> list[str]:
    """What the demo prints after a sweep: the main tables (Markdown) and where the plots went.

    `sweep` is a name under `storage` (or a path/URI); the tables with no rows of their kind (no
    limit cells, no LOMP cells) are left out; accuracy uses `--levels auto`, so that a small sweep
    is not all blank. Returns the plot paths.
    """
    from analysis.plots import plot_all

    stream = stream or sys.stdout
    store = resolve(sweep if sweep is not None else (storage or "."), storage)
    frames = load_frames(store, PLOT_TABLES, strict=strict)
    levels = T.auto_levels(frames["trials"])
    for name in T.TABLE_SPECS:
        tidy = T.build(name, frames, levels=levels)
        if not _has_values(tidy) or (name == "lomp" and not (tidy["lomp"]["pruner"] == "lomp").any()):
            continue  # nothing of this kind in the sweep (a LOMP table without LOMP says nothing)
        print(T.render(name, tidy, "md"), file=stream)
    target = out or default_out(store)
    paths = plot_all(frames, target)
    print(f"plots: {len(paths)} PNG file(s) in {target}", file=stream)
    where = f"{store.label} --storage {storage}" if sweep is not None and storage is not None else store.label
    print(f"more: prunetune tables {where} --format latex|csv --out DIR; prunetune plot {where}", file=stream)
    return paths


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `tables`, `plot` and `limit-report` to a parent parser's subcommands (each sets `func`)."""
    t = subparsers.add_parser("tables", help="comparison tables of one or more sweeps")
    t.add_argument("sweep", metavar="NAME_OR_PATH", help="sweep name, sweep directory, storage root or URI")
    t.add_argument("--table", default="all", metavar="|".join([*T.TABLE_SPECS, "all"]),
                   help="which table (default all)")
    t.add_argument("--format", default="md", metavar="|".join(T.FORMATS), help="output format (default md)")
    t.add_argument("--out", default=None, metavar="DIR", help="write one file per table into DIR")
    t.add_argument("--storage", default=None, metavar="ROOT",
                   help="storage root for a sweep name (default $PRUNETUNE_STORAGE or ./results)")
    t.add_argument("--strict", action="store_true", help="fail on an unreadable result file")
    t.add_argument("--no-cache", action="store_true",
                   help="read every result file; neither use nor write <sweep>/_analysis/cache")
    t.add_argument("--levels", default=None, metavar="10,100,...|auto",
                   help="compression levels of the accuracy table (default 10,100,1000,10000; "
                        "auto: the sweep's requested compressions and the decades it spans)")
    t.add_argument("--wide", action="store_true",
                   help="limit table: every column (bands, bounds, resolution numbers, ε), not only "
                        "what a reader decides from")
    t.add_argument("--sparsities", default=None, metavar="0.9,0.99,...",
                   help="sparsities of the lomp table (default: the requested sparsities)")
    t.set_defaults(func=cmd_tables)

    p = subparsers.add_parser("plot", help="PNG figures of one or more sweeps")
    p.add_argument("sweep", metavar="NAME_OR_PATH", help="sweep name, sweep directory, storage root or URI")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default <sweep>/_analysis)")
    p.add_argument("--storage", default=None, metavar="ROOT", help="storage root for a sweep name")
    p.add_argument("--strict", action="store_true", help="fail on an unreadable result file")
    p.add_argument("--no-cache", action="store_true", help="read every result file (no consolidated cache)")
    p.set_defaults(func=cmd_plot)

    r = subparsers.add_parser("limit-report", help="every analysis of the limit cells: tables and figures")
    r.add_argument("sweep", metavar="NAME_OR_PATH", help="sweep name, sweep directory, storage root or URI")
    r.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default <sweep>/_analysis/limit_report)")
    r.add_argument("--storage", default=None, metavar="ROOT", help="storage root for a sweep name")
    r.add_argument("--strict", action="store_true", help="fail on an unreadable result file")
    r.add_argument("--no-cache", action="store_true", help="read every result file (no consolidated cache)")
    r.set_defaults(func=cmd_limit_report)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.cli", description="prunetune analysis")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        text = str(e).strip()
        print(f"error: {text.splitlines()[0] if text else type(e).__name__}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
