"""What the analysis commands write: tables (Markdown, CSV, LaTeX), the limit report, the demo's summary.

`prunetune tables | plot | limit-report` (`sweeps.cli.analysis`) parse their flags and call these;
a problem the user can fix (an empty sweep, an unwritable --out) is a one-line ValueError.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

import pandas as pd
import pyarrow.fs as pafs

from analysis import tables as T
from analysis.load import load_table, resolve
from sweeps.paths import Sweeps

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


def load_frames(sweeps: Sweeps, names: Sequence[str] | dict[str, Sequence[str]], *, strict: bool,
                use_cache: bool = True) -> dict[str, pd.DataFrame]:
    """The stored tables `names`, all columns; or, given {table: columns}, only those columns."""
    wanted = names if isinstance(names, dict) else {t: None for t in names}
    frames = {t: load_table(sweeps, t, strict=strict, use_cache=use_cache, columns=c) for t, c in wanted.items()}
    if "trials" in frames and frames["trials"].empty:
        raise ValueError(f"{sweeps.label}: no trials yet (no cell of {', '.join(sweeps.names)} has finished)")
    return frames


def default_out(sweeps: Sweeps) -> str:
    """`<sweep>/_analysis` for one local sweep ('_' marks it as no result), else ./prunetune_analysis."""
    if isinstance(sweeps.filesystem, pafs.LocalFileSystem) and len(sweeps.dirs) == 1:
        return os.path.join(sweeps.dirs[0], "_analysis")
    return os.path.join("prunetune_analysis", "_".join(sweeps.names)[:80] or "sweeps")


def write_tables(sweeps: Sweeps, names: Sequence[str], fmt: str, *, out: str | None, strict: bool,
                 levels: Sequence[float] | None, sparsities: Sequence[float] | None,
                 stream: TextIO, use_cache: bool = True, auto_levels: bool = False,
                 wide: bool = False) -> list[str]:
    """Build and render each table; print to `stream`, or write files into `out` and say where
    (`wide`: every column of the limit table, not only what a reader decides from)."""
    if fmt not in T.FORMATS:
        raise ValueError(f"--format: {fmt!r}; choose from {', '.join(T.FORMATS)}")
    frames = load_frames(sweeps, T.columns_needed(names, auto_levels=auto_levels), strict=strict,
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
    sweeps = resolve(sweep if sweep is not None else (storage or "."), storage)
    frames = load_frames(sweeps, PLOT_TABLES, strict=strict)
    levels = T.auto_levels(frames["trials"])
    for name in T.TABLE_SPECS:
        tidy = T.build(name, frames, levels=levels)
        if not _has_values(tidy) or (name == "lomp" and not (tidy["lomp"]["pruner"] == "lomp").any()):
            continue  # nothing of this kind in the sweep (a LOMP table without LOMP says nothing)
        print(T.render(name, tidy, "md"), file=stream)
    target = out or default_out(sweeps)
    paths = plot_all(frames, target)
    print(f"plots: {len(paths)} PNG file(s) in {target}", file=stream)
    where = f"{sweeps.label} --storage {storage}" if sweep is not None and storage is not None else sweeps.label
    print(f"more: prunetune tables {where} --format latex|csv --out DIR; prunetune plot {where}", file=stream)
    return paths
