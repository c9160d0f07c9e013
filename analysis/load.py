"""Read sweep results (per-cell Parquet files) into pandas with the central schema.

Why a reader of our own rather than `pandas.read_parquet(dir)`: a store is thousands of tiny files
written over weeks by different versions of the engine. A reader must (1) skip temp files and caches
(names starting with '.' or '_'), (2) give every file the central schema of `sweeps.schema` —
columns an older engine did not write become nulls, columns a newer engine added are kept, never
silently dropped — and (3) survive one truncated file from a crashed writer: it is named in a
warning and skipped, so one bad cell never hides a thousand good ones (`strict=True` raises instead).

Files are read in a thread pool (pyarrow releases the GIL while decoding; remote filesystems are
latency-bound), then concatenated once with pyarrow's schema promotion.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sweeps.schema import SCHEMAS, TABLES, schema

STORAGE_ENV = "PRUNETUNE_STORAGE"
DEFAULT_STORAGE = "./results"
SPEC_FILE = "spec.yaml"


@dataclass(frozen=True)
class Store:
    """Where the sweeps to read live: one filesystem and the directory of each sweep on it."""

    filesystem: pafs.FileSystem
    sweeps: tuple[str, ...]       # sweep directories (filesystem paths), sorted
    label: str                    # what the user named, for messages

    @property
    def names(self) -> list[str]:
        return [_base(p) for p in self.sweeps]


def storage_root(storage: str | os.PathLike | None = None) -> str:
    """The storage root: the argument, else $PRUNETUNE_STORAGE, else ./results (as in `sweeps`)."""
    if storage is not None:
        return str(storage)
    return os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts if p != "")


def _filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path on it, for a URI (s3://, file://, ...) or a local path."""
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location).replace(os.sep, "/")


def _children(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))


def _is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def _is_sweep(fs: pafs.FileSystem, path: str) -> bool:
    """A sweep directory holds spec.yaml or at least one table directory."""
    names = {c.base_name for c in _children(fs, path)}
    return SPEC_FILE in names or any(t in names for t in TABLES)


def _sweeps_under(fs: pafs.FileSystem, root: str) -> list[str]:
    """The sweep directories directly under a storage root (hidden names skipped)."""
    dirs = [c.path for c in _children(fs, root)
            if c.type == pafs.FileType.Directory and not _hidden(c.base_name)]
    return sorted(d for d in dirs if _is_sweep(fs, d))


def _classify(fs: pafs.FileSystem, path: str, label: str) -> Store:
    """A sweep directory is one sweep; any other directory is a storage root of several."""
    if not _is_dir(fs, path):
        raise ValueError(f"{label}: not a directory (give a sweep name, a sweep directory, "
                         f"a storage root or a pyarrow.fs URI)")
    if _is_sweep(fs, path):
        return Store(fs, (path,), label)
    sweeps = _sweeps_under(fs, path)
    if not sweeps:
        raise ValueError(f"{label}: empty store, no sweeps in it (a sweep directory holds "
                         f"{SPEC_FILE} or one of {', '.join(TABLES)})")
    return Store(fs, tuple(sweeps), label)


def resolve(name_or_path: str | os.PathLike | Store, storage: str | os.PathLike | None = None) -> Store:
    """Find the sweeps a user means.

    Accepted, in this order: a `pyarrow.fs` URI (``s3://bucket/results/demo``, ``file:///...``) of a
    sweep or a storage root; a sweep name under the storage root (`storage`, else
    $PRUNETUNE_STORAGE, else ./results); a local sweep directory or storage root.
    An unknown name raises ValueError listing the sweeps that do exist.
    """
    if isinstance(name_or_path, Store):
        return name_or_path
    text = str(name_or_path)
    if not text:
        raise ValueError("name_or_path: empty; give a sweep name, a sweep directory, a storage root or a URI")
    if "://" in text:
        fs, path = _filesystem(text)
        return _classify(fs, path, text)
    root = storage_root(storage)
    fs, root_path = _filesystem(root)
    plain_name = "/" not in text and os.sep not in text and text not in (".", "..")
    if plain_name and not _hidden(text) and _is_dir(fs, _join(root_path, text)) \
            and _is_sweep(fs, _join(root_path, text)):
        return Store(fs, (_join(root_path, text),), text)
    if os.path.isdir(text):
        local, path = _filesystem(text)
        return _classify(local, path, text)
    known = _sweeps_under(fs, root_path) if _is_dir(fs, root_path) else []
    if known:
        choices = ", ".join(_base(k) for k in known)
        raise ValueError(f"sweep {text!r} not found under storage root {root}: choose from {choices}")
    raise ValueError(f"sweep {text!r} not found: storage root {root} is empty or missing "
                     f"(set --storage or ${STORAGE_ENV})")


def table_files(store: Store, table: str) -> list[tuple[str, str]]:
    """(sweep name, file path) of every result file of `table`; temp files and caches skipped."""
    schema(table)  # validates the table name
    out: list[tuple[str, str]] = []
    for sweep_dir in store.sweeps:
        for info in _children(store.filesystem, _join(sweep_dir, table)):
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet") \
                    and not _hidden(info.base_name):
                out.append((_base(sweep_dir), info.path))
    return sorted(out)


def _read_one(fs: pafs.FileSystem, path: str, columns: Sequence[str] | None) -> pa.Table:
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        present = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
        return pf.read(columns=present, use_threads=False)


def _conform(table: pa.Table, central: pa.Schema, columns: Sequence[str] | None) -> pa.Table:
    """Central columns first (cast to the central type, nulls where absent), then extra columns."""
    wanted = central if columns is None else pa.schema([f for f in central if f.name in columns])
    arrays, fields = [], []
    for f in wanted:
        if f.name in table.column_names:
            arrays.append(table[f.name].cast(f.type))
        else:
            arrays.append(pa.nulls(table.num_rows, f.type))
        fields.append(f)
    for name in table.column_names:
        if name not in central.names and (columns is None or name in columns):
            arrays.append(table[name])
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def read_arrow(name_or_path: str | os.PathLike | Store, table: str, *, strict: bool = False,
               storage: str | os.PathLike | None = None,
               columns: Sequence[str] | None = None) -> pa.Table:
    """`load_table` as a pyarrow Table (what the benchmark and large reads want)."""
    central = schema(table)
    store = resolve(name_or_path, storage)
    files = table_files(store, table)
    fs = store.filesystem

    def read(item: tuple[str, str]) -> tuple[str, str, pa.Table | Exception]:
        sweep, path = item
        try:
            return sweep, path, _read_one(fs, path, columns)
        except (OSError, pa.ArrowException) as e:  # truncated / corrupt / vanished file
            return sweep, path, e

    with ThreadPoolExecutor(max_workers=max(1, min(16, pa.io_thread_count()))) as pool:
        results = list(pool.map(read, files))

    parts: list[pa.Table] = []
    for sweep, path, got in results:
        if isinstance(got, Exception):
            if strict:
                raise ValueError(f"{path}: unreadable Parquet file ({type(got).__name__}: "
                                 f"{str(got).splitlines()[0] if str(got) else ''})") from got
            warnings.warn(f"skipping unreadable result file {path}: {type(got).__name__}: "
                          f"{str(got).splitlines()[0] if str(got) else ''}", stacklevel=2)
            continue
        if "sweep" in got.column_names and got["sweep"].null_count:
            # an old writer left `sweep` empty: the directory says which sweep it is
            i = got.column_names.index("sweep")
            got = got.set_column(i, "sweep", pc.fill_null(got["sweep"].cast(pa.string()), sweep))
        elif "sweep" not in got.column_names and (columns is None or "sweep" in columns):
            got = got.append_column("sweep", pa.array([sweep] * got.num_rows, pa.string()))
        parts.append(got)
    if not parts:
        return _conform(central.empty_table(), central, columns)
    merged = pa.concat_tables(parts, promote_options="permissive")
    return _conform(merged, central, columns).combine_chunks()


def load_table(name_or_path: str | os.PathLike | Store, table: str, *, strict: bool = False,
               storage: str | os.PathLike | None = None,
               columns: Sequence[str] | None = None) -> pd.DataFrame:
    """One table (trials, layers, spectra, curves, epochs) of one or many sweeps as a DataFrame.

    Columns: the central schema in its order (nulls where a file predates a column), then any
    extra columns newer files carry. `columns` restricts the read (faster on large stores).
    An unreadable file is named in a warning and skipped; with `strict=True` it raises ValueError.
    A sweep without files for `table` gives an empty frame with the central columns.
    """
    return read_arrow(name_or_path, table, strict=strict, storage=storage, columns=columns).to_pandas()


def load_tables(name_or_path: str | os.PathLike | Store, tables: Sequence[str] = TABLES, *,
                strict: bool = False, storage: str | os.PathLike | None = None) -> dict[str, pd.DataFrame]:
    """Several tables of the same sweeps, resolved once."""
    store = resolve(name_or_path, storage)
    return {t: load_table(store, t, strict=strict) for t in tables}


__all__ = ["Store", "SCHEMAS", "TABLES", "load_table", "load_tables", "read_arrow", "resolve",
           "storage_root", "table_files"]
