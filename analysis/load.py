"""Read sweep results (per-cell Parquet files) into pandas with the central schema.

Why a reader of our own rather than `pandas.read_parquet(dir)`: a store is thousands of tiny files
written over weeks by different versions of the engine. A reader must (1) skip temp files and caches
(names starting with '.' or '_'), (2) give every file the central schema of `sweeps.schema` —
columns an older engine did not write become nulls, columns a newer engine added are kept, never
silently dropped — and (3) survive one truncated file from a crashed writer: it is named in a
warning and skipped, so one bad cell never hides a thousand good ones (`strict=True` raises instead).

Files are read in a thread pool, a batch per task (pyarrow releases the GIL while decoding; remote
filesystems are latency-bound); each worker concatenates its batch by schema, and the few resulting
tables are merged once with pyarrow's schema promotion. Opening a file costs about a
millisecond however small it is, so rows already read are kept in a consolidated per-sweep cache
(`analysis.read_cache`, under the hidden `<sweep>/_analysis/`) and the next read opens only new or
changed files.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from analysis import read_cache
from sweeps import paths
from sweeps.paths import Sweeps, hidden as _hidden, storage_root
from sweeps.schema import RENAMED, SCHEMAS, TABLES, schema


def resolve(name_or_path: str | os.PathLike | Sweeps, storage: str | os.PathLike | None = None) -> Sweeps:
    """The sweeps a user means: a name, a sweep directory, a storage root (all its sweeps) or a URI
    (`sweeps.paths.resolve`, the one resolver every command uses)."""
    if isinstance(name_or_path, Sweeps):
        return name_or_path
    return paths.resolve(name_or_path, storage, tables=TABLES, several=True)


def _base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts if p != "")


def _children(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))


def _result_infos(sweeps: Sweeps, sweep_dir: str, table: str) -> list[pafs.FileInfo]:
    infos = _children(sweeps.filesystem, _join(sweep_dir, table))
    return sorted((i for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                   and not _hidden(i.base_name)), key=lambda i: i.path)


def table_files(sweeps: Sweeps, table: str) -> list[tuple[str, str]]:
    """(sweep name, file path) of every result file of `table`; temp files and caches skipped."""
    schema(table)  # validates the table name
    return [(_base(d), i.path) for d in sweeps.dirs for i in _result_infos(sweeps, d, table)]


def _read_one(fs: pafs.FileSystem, path: str, columns: Sequence[str] | None) -> pa.Table:
    # pre-buffering coalesces the column-chunk reads of a file: worth it for remote latency, a
    # needless copy for a local file
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f, pre_buffer=not isinstance(fs, pafs.LocalFileSystem))
        if columns is None:
            return pf.read(use_threads=False)
        names = set(pf.schema_arrow.names)  # a property that rebuilds the schema on every access
        wanted = [*columns, *(old for old, new in RENAMED.items() if new in columns)]
        present = [c for c in wanted if c in names]
        return pf.read(columns=present, use_threads=False)


def _workers(fs: pafs.FileSystem) -> int:
    """Decoding small files is CPU-bound locally (one thread per core); remote reads wait on latency."""
    if isinstance(fs, pafs.LocalFileSystem):
        return max(1, min(8, os.cpu_count() or 1))
    return max(1, pa.io_thread_count())


Failure = tuple[str, Exception]


def _with_sweep(got: pa.Table, sweep: str) -> pa.Table:
    """Fill `sweep` from the directory name where an older writer left it empty or absent, and
    give renamed columns (`sweeps.schema.RENAMED`) their new names."""
    old = [c for c in got.column_names if c in RENAMED]
    if old:
        got = got.rename_columns([RENAMED.get(c, c) for c in got.column_names])
    if "sweep" not in got.column_names:
        return got.append_column("sweep", pa.array([sweep] * got.num_rows, pa.string()))
    if got["sweep"].null_count:
        i = got.column_names.index("sweep")
        return got.set_column(i, "sweep", pc.fill_null(got["sweep"].cast(pa.string()), sweep))
    return got


def _stack(got: list[tuple[str, pa.Table]], sweep: str, keys: dict[str, str | None] | None) -> list[pa.Table]:
    """One table per distinct file schema, with `sweep` filled and (for the cache) each row's file key.

    Why group first: the files of one engine version share a schema, and concatenating equal
    schemas is a cheap append, while schema promotion (`permissive`) and per-file column edits cost
    tens of microseconds per file. Only the few groups are promoted against each other, later.
    """
    groups: dict[pa.Schema, list[tuple[str, pa.Table]]] = {}
    for path, table in got:
        groups.setdefault(table.schema.remove_metadata(), []).append((path, table))
    parts = []
    for members in groups.values():
        part = _with_sweep(pa.concat_tables([t for _, t in members]), sweep)
        if keys is not None:
            tags = np.repeat(np.array([keys[p] for p, _ in members], dtype=object),
                             [t.num_rows for _, t in members])
            part = part.append_column(read_cache.KEY, pa.array(tags, pa.string()))
        parts.append(part.combine_chunks())
    return parts


def _read_batch(fs: pafs.FileSystem, paths: list[str], columns: Sequence[str] | None, sweep: str,
                keys: dict[str, str | None] | None) -> tuple[list[pa.Table], list[Failure]]:
    """Read and stack a batch of files in one worker; unreadable files are returned, not raised."""
    got, bad = [], []
    for path in paths:
        try:
            got.append((path, _read_one(fs, path, columns)))
        except (OSError, pa.ArrowException) as e:  # truncated / corrupt / vanished file
            bad.append((path, e))
    return _stack(got, sweep, keys), bad


def _read_many(fs: pafs.FileSystem, paths: list[str], columns: Sequence[str] | None, strict: bool,
               sweep: str, keys: dict[str, str | None] | None = None) -> tuple[list[pa.Table], set[str]]:
    """Read files in a thread pool: (stacked tables, paths that failed).

    Each worker reads a batch of files and concatenates them itself: the per-file work (decoding a
    footer and 60 tiny column chunks, then freeing them) is ~1 ms, so doing the stacking and the
    freeing in the workers as well keeps both cores busy instead of serialising it on the caller.
    An unreadable file is warned about and skipped (raised as ValueError if strict).
    """
    workers = _workers(fs)
    size = max(1, min(256, -(-len(paths) // (4 * workers))))
    batches = [paths[i:i + size] for i in range(0, len(paths), size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda batch: _read_batch(fs, batch, columns, sweep, keys), batches))
    tables = [t for parts, _ in results for t in parts]
    failed = [f for _, bad in results for f in bad]
    for path, error in failed:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if strict:
            raise ValueError(f"{path}: unreadable Parquet file ({reason})") from error
        warnings.warn(f"skipping unreadable result file {path}: {reason}", stacklevel=4)
    return tables, {path for path, _ in failed}


def _read_sweep(sweeps: Sweeps, sweep_dir: str, table: str, *, strict: bool, use_cache: bool,
                columns: Sequence[str] | None) -> list[pa.Table]:
    """The tables of one sweep's files: cached rows of unchanged files plus freshly read ones."""
    fs, sweep = sweeps.filesystem, _base(sweep_dir)
    infos = _result_infos(sweeps, sweep_dir, table)
    wanted = None if columns is None else list(dict.fromkeys([*columns, "sweep"]))
    if not use_cache:
        return _read_many(fs, [i.path for i in infos], wanted, strict, sweep)[0]
    now = time.time_ns()
    keys = {i.path: read_cache.file_key(i, now) for i in infos}
    loaded = read_cache.load(fs, sweep_dir, table)
    cached, reading = None, wanted
    if loaded is not None:
        cached, cached_columns = loaded
        reading = None if cached_columns is None else sorted(cached_columns)
        if not read_cache.covers(cached_columns, wanted):  # start over with both column sets
            cached, reading = None, read_cache.widened(cached_columns, wanted)
    parts: list[pa.Table] = []
    have: set[str] = set()
    changed = loaded is not None and cached is None
    if cached is not None:
        current = pa.array([k for k in keys.values() if k is not None], pa.string())
        kept = cached.filter(pc.is_in(cached[read_cache.KEY], value_set=current))
        changed = kept.num_rows != cached.num_rows          # files vanished or were rewritten
        have = set(pc.unique(kept[read_cache.KEY]).to_pylist())
        parts.append(kept)
    todo = [i.path for i in infos if keys[i.path] is None or keys[i.path] not in have]
    fresh, failed = _read_many(fs, todo, reading, strict, sweep, keys)
    parts += fresh
    changed = changed or any(keys[path] is not None for path in todo if path not in failed)
    if not parts:
        return []
    whole = pa.concat_tables(parts, promote_options="permissive").combine_chunks()
    if changed:
        read_cache.save(fs, sweep_dir, table, whole, reading)
    return [whole.drop_columns([read_cache.KEY])]


def conform(table: pa.Table, central: pa.Schema, columns: Sequence[str] | None = None) -> pa.Table:
    """Central columns first (cast to the central type, nulls where absent), then extra columns.

    Why columns the central schema does not know are kept, not dropped: a store is written over
    weeks by several versions of the engine, and a reader older than a file is exactly the case
    where a column is unknown; dropping it would hide results the user has, silently, while keeping
    it costs nothing (Parquet describes itself). Known columns get the central type, so readers of
    the central schema see one schema whatever wrote the files.
    """
    wanted = central if columns is None else pa.schema([f for f in central if f.name in columns])
    arrays, fields = [], []
    for f in wanted:
        if f.name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, f.type))
        else:
            column = table[f.name]
            arrays.append(column if column.type == f.type else column.cast(f.type))
        fields.append(f)
    for name in table.column_names:
        if name not in central.names and (columns is None or name in columns):
            arrays.append(table[name])
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def read_arrow(name_or_path: str | os.PathLike | Sweeps, table: str, *, strict: bool = False,
               storage: str | os.PathLike | None = None, columns: Sequence[str] | None = None,
               use_cache: bool = True) -> pa.Table:
    """`load_table` as a pyarrow Table (what the benchmark and large reads want)."""
    central = schema(table)
    sweeps = resolve(name_or_path, storage)
    parts = [t for d in sweeps.dirs
             for t in _read_sweep(sweeps, d, table, strict=strict, use_cache=use_cache, columns=columns)]
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return conform(central.empty_table(), central, columns)
    merged = pa.concat_tables(parts, promote_options="permissive").combine_chunks()
    return conform(merged, central, columns)


def load_table(name_or_path: str | os.PathLike | Sweeps, table: str, *, strict: bool = False,
               storage: str | os.PathLike | None = None, columns: Sequence[str] | None = None,
               use_cache: bool = True) -> pd.DataFrame:
    """One table (trials, layers, spectra, curves, epochs) of one or many sweeps as a DataFrame.

    Columns: the central schema in its order (nulls where a file predates a column), then any
    extra columns newer files carry. `columns` restricts the result. An unreadable file is named in
    a warning and skipped; with `strict=True` it raises ValueError. A sweep without files for
    `table` gives an empty frame with the central columns. `use_cache` keeps a consolidated copy in
    `<sweep>/_analysis/cache/` so that the next read only opens new or changed files
    (`analysis.read_cache`).
    """
    return read_arrow(name_or_path, table, strict=strict, storage=storage, columns=columns,
                      use_cache=use_cache).to_pandas()


def load_tables(name_or_path: str | os.PathLike | Sweeps, tables: Sequence[str] = TABLES, *,
                strict: bool = False, storage: str | os.PathLike | None = None,
                use_cache: bool = True) -> dict[str, pd.DataFrame]:
    """Several tables of the same sweeps, resolved once."""
    sweeps = resolve(name_or_path, storage)
    return {t: load_table(sweeps, t, strict=strict, use_cache=use_cache) for t in tables}


__all__ = ["Sweeps", "SCHEMAS", "TABLES", "conform", "load_table", "load_tables", "read_arrow", "resolve",
           "storage_root", "table_files"]
