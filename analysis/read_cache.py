"""The read cache of `analysis.load`: a consolidated copy of a sweep's many small result files, so that re-analysis reads one file.

Why: opening a Parquet file costs about a millisecond (footer, schema) however small it is, so a
sweep of 5,000 cells costs seconds to read cold, every time a table is rebuilt while the sweep runs.
The cache keeps every row already read, tagged with its source file's path, size and mtime; the next
read takes those rows for unchanged files and reads only new or rewritten ones. A file that vanished
or changed drops its old rows. A read of a few columns (what `prunetune tables` needs: about a
third of them) caches just those columns, and the cache records which: a later read it does not
cover reads the files again for the union of both column sets, so the cache only ever widens. The
cache lives at `<sweep>/_analysis/cache/<table>.parquet`: a
hidden name, which the store contract says is never a result. Writing it is best effort (a
read-only store just stays uncached), and is atomic (temp file, then rename), so a reader never
sees half a cache.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sweeps.schema import SCHEMA_VERSION

log = logging.getLogger(__name__)

KEY = "_cache_key"            # column tagging each cached row with its source file's identity
CACHE_DIR = "_analysis/cache"
FORMAT = b"prunetune-analysis-cache-2"
ALL = b"*"                    # the `columns` metadata of a cache holding every column of its files
RACY_NS = 2_000_000_000       # files younger than this are not cached yet (see file_key)


def file_key(info: pafs.FileInfo, now_ns: int | None = None) -> str | None:
    """path, size and mtime of a result file, or None: such a file is read every time, never cached.

    None when the filesystem gives no mtime, and for a file modified in the last RACY_NS: file
    clocks tick coarsely (often milliseconds), so a rewrite within one tick could keep size and
    mtime; waiting until a file is older than that makes any later rewrite visible ("racy git").
    """
    if info.mtime_ns is None or info.size is None:
        return None
    if (time.time_ns() if now_ns is None else now_ns) - info.mtime_ns < RACY_NS:
        return None
    return f"{info.path}\x00{info.size}\x00{info.mtime_ns}"


def cache_path(sweep_dir: str, table: str) -> str:
    return f"{sweep_dir.rstrip('/')}/{CACHE_DIR}/{table}.parquet"


def covers(cached: frozenset[str] | None, wanted: Sequence[str] | None) -> bool:
    """Whether a cache of columns `cached` (None: all) can answer a read of `wanted` (None: all)."""
    return cached is None or (wanted is not None and set(wanted) <= cached)


def widened(cached: frozenset[str] | None, wanted: Sequence[str] | None) -> list[str] | None:
    """The columns to read when a cache does not cover a read: both sets (None: all columns)."""
    if cached is None or wanted is None:
        return None
    return sorted(cached | set(wanted))


def load(fs: pafs.FileSystem, sweep_dir: str, table: str) -> tuple[pa.Table, frozenset[str] | None] | None:
    """The cached rows (with the KEY column) and the columns they hold (None: every column of
    their files), or None if there is no usable cache."""
    path = cache_path(sweep_dir, table)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    try:
        with fs.open_input_file(path) as f:
            data = pq.read_table(f)
    except (OSError, pa.ArrowException) as e:
        log.info("ignoring unreadable analysis cache %s: %s", path, e)
        return None
    meta = data.schema.metadata or {}
    if meta.get(b"format") != FORMAT or meta.get(b"schema_version") != str(SCHEMA_VERSION).encode() \
            or KEY not in data.column_names or b"columns" not in meta:
        return None
    columns = None if meta[b"columns"] == ALL else frozenset(json.loads(meta[b"columns"]))
    return data, columns


def save(fs: pafs.FileSystem, sweep_dir: str, table: str, data: pa.Table,
         columns: Sequence[str] | None = None) -> None:
    """Replace the cache atomically; a store we cannot write to is left uncached.

    `columns`: the columns that were read into `data` (None: all of them).
    """
    path = cache_path(sweep_dir, table)
    directory = path.rsplit("/", 1)[0]
    tmp = f"{directory}/.{table}.{uuid.uuid4().hex}.tmp"
    listed = ALL if columns is None else json.dumps(sorted(set(columns))).encode()
    data = data.replace_schema_metadata({**(data.schema.metadata or {}), b"format": FORMAT,
                                         b"schema_version": str(SCHEMA_VERSION).encode(), b"columns": listed})
    try:
        fs.create_dir(directory, recursive=True)
        with fs.open_output_stream(tmp) as f:
            pq.write_table(data, f)
        fs.move(tmp, path)
    except (OSError, pa.ArrowException) as e:
        log.info("analysis cache not written at %s: %s", path, e)
        try:
            fs.delete_file(tmp)
        except (OSError, pa.ArrowException):
            pass  # the temp file was never created
