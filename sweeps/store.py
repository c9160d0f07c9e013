"""The Parquet store: one file per cell and table, each committed whole, `trials` last.

Layout (see `sweeps.paths`): `<storage>/<sweep>/<table>/<cell_id>.parquet` and
`<storage>/<sweep>/spec.yaml`. Why one file per cell: backends on many machines write without
coordination, a crashed cell can never corrupt another, and re-running a cell replaces exactly its
own files. Why `trials` last: its presence is the commit record — a cell is done iff its trials file
reads back with a finished status, so a crash between tables leaves a cell that is simply redone.

The commit protocol, the same promise on both kinds of storage (a reader sees a key whole or not
at all, and only a `trials` file that parses counts):

- Local files are written under a hidden temp name `.<cell_id>.<random>.tmp` in the target
  directory, fsynced and moved into place with `os.replace` (atomic on POSIX); readers (pandas,
  `pyarrow.dataset`, DuckDB globs of `*.parquet`) never see the temp names.
- Object stores (S3 and other pyarrow.fs URIs) have no rename (a "rename" is copy + delete, two
  requests a crash can separate), so a table is serialized in memory first and uploaded in one go
  to its *final* key: a single PUT, or for objects above pyarrow's part size a multipart upload,
  which S3 makes visible only when it is completed. A writer killed mid-upload therefore leaves no
  object at all (only an incomplete multipart upload, invisible to readers; a bucket lifecycle rule
  `AbortIncompleteMultipartUpload` reclaims it — see docs/cluster.md). After the upload the writer
  checks the stored size; a short object (an upload closed early by an error) is deleted and the
  write raises.
- Readers parse before they trust: a missing file is "not done"; a file that exists but does not
  parse (a truncated copy, a torn upload through some other tool) is skipped with a warning naming
  it, and its cell counts as not done, so `run`/`resume` redo it. Parquet's footer is at the end,
  so no prefix of a file parses.

No Hive partitioning: the cell's axes are columns. This module reads one cell's file at a time (is a
cell done?); a whole table of one or many sweeps is read by `analysis.load`, the one reader.
"""

from __future__ import annotations

import io
import os
import secrets
import time
import warnings
from collections.abc import Iterable, Mapping

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sweeps import paths
from sweeps import schema as schemas
from sweeps.paths import Location

DONE_STATUSES = ("ok", "diverged")  # "failed" cells are retried


def locate(storage: str) -> Location:
    """The filesystem and base path of a storage root (see `sweeps.paths`)."""
    return paths.filesystem(storage)


def table_path(storage: str, sweep: str, table: str, cell_id: str) -> str:
    """Where a cell's table lives (a path inside the storage's filesystem)."""
    schemas.schema(table)  # validates the name
    return locate(storage).join(*paths.cell_parts(sweep, table, cell_id))


def to_table(table: str, rows: list[Mapping[str, object]]) -> pa.Table:
    """`rows` cast to the central schema of `table`; missing columns become nulls.

    A key that is not a column raises: a misspelt column would otherwise vanish silently.
    """
    schema = schemas.schema(table)
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise ValueError(f"{table}: unknown column(s) {sorted(extra)}; see sweeps/schema.py")
    rows = [{"schema_version": schemas.SCHEMA_VERSION, **row} for row in rows]
    return pa.Table.from_pylist(rows, schema=schema)


def write_bytes(storage: str, path: str, data: bytes) -> None:
    """Commit `data` at `path` whole or not at all (see the module docstring for the protocol)."""
    loc = locate(storage)
    if not loc.local:
        _put_object(loc, path, data)
        return
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    stem = name[: -len(".parquet")] if name.endswith(".parquet") else name
    tmp = os.path.join(directory, f".{stem}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _put_object(loc: Location, path: str, data: bytes) -> None:
    """One upload of the final key, then a size check (no temp key: object stores cannot rename).

    The bytes go to the stream in one `write` call, so an interrupt between Python bytecodes cannot
    split them; a stream closed by an error after a partial upload would commit a short object
    (pyarrow completes the upload on close), which the size check finds and deletes.
    """
    loc.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with loc.fs.open_output_stream(path, compression=None) as f:
        f.write(data)
    size = loc.fs.get_file_info(path).size
    if size != len(data):
        _remove_path(loc, path)
        raise OSError(f"{path}: stored {size} of {len(data)} bytes; the upload was cut short and removed")


def write_table(storage: str, sweep: str, table: str, cell_id: str,
                rows: list[Mapping[str, object]]) -> str:
    """Write one cell's rows of `table` (cast to the schema) atomically; returns the path."""
    buf = io.BytesIO()
    pq.write_table(to_table(table, rows), buf)
    path = table_path(storage, sweep, table, cell_id)
    write_bytes(storage, path, buf.getvalue())
    return path


def write_cell(storage: str, sweep: str, cell_id: str,
               tables: Mapping[str, list[Mapping[str, object]]]) -> None:
    """Write every table of a cell; `trials` (required, one row) strictly last.

    Empty tables are skipped, but a stale file from an earlier attempt of the same cell is removed
    first, so a retried cell never mixes its rows with an earlier run's.
    """
    if len(tables.get("trials", [])) != 1:
        raise ValueError("trials: a cell writes exactly one trials row")
    for table in schemas.TABLES:
        if table == "trials":
            continue
        rows = tables.get(table) or []
        if rows:
            write_table(storage, sweep, table, cell_id, rows)
        else:
            _remove(storage, table_path(storage, sweep, table, cell_id))
    write_table(storage, sweep, "trials", cell_id, tables["trials"])


def _remove(storage: str, path: str) -> None:
    _remove_path(locate(storage), path)


def _remove_path(loc: Location, path: str) -> None:
    try:
        loc.fs.delete_file(path)
    except (FileNotFoundError, OSError):
        pass


def read_cell_table(storage: str, sweep: str, table: str, cell_id: str) -> pa.Table | None:
    """One cell's table; None when it is absent, or present but unreadable (warned about: a
    truncated or torn file counts as absent, so its cell is redone).

    Only a file that cannot be *parsed* counts as absent: an error opening an existing file (an
    unreachable object store, a permission problem) is raised, because treating it as "not done"
    would run finished cells again.
    """
    loc = locate(storage)
    path = table_path(storage, sweep, table, cell_id)
    try:
        f = loc.fs.open_input_file(path)
    except FileNotFoundError:
        return None
    try:
        with f:
            return pq.read_table(f)
    except (OSError, pa.ArrowException) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warnings.warn(f"skipping unreadable result file {path}: {reason}; its cell counts as not done "
                      "and runs again", stacklevel=2)
        return None


def trial_row(storage: str, sweep: str, cell_id: str) -> dict[str, object] | None:
    """The cell's trials row, or None when the cell has not finished (or its file is damaged)."""
    t = read_cell_table(storage, sweep, "trials", cell_id)
    if t is None or t.num_rows != 1:
        return None
    return t.to_pylist()[0]


def is_done(storage: str, sweep: str, cell_id: str) -> bool:
    """Finished cells are skipped: the trials file reads back and its status is not `failed`."""
    row = trial_row(storage, sweep, cell_id)
    return row is not None and row.get("status") in DONE_STATUSES


def stored_ids(storage: str, sweep: str, table: str = "trials") -> list[str]:
    """Cell ids with a (visible) file of `table`, temp files excluded."""
    loc = locate(storage)
    selector = pafs.FileSelector(loc.join(*paths.table_parts(sweep, table)), allow_not_found=True)
    ids = [(info.type, paths.cell_id_of(info.base_name)) for info in loc.fs.get_file_info(selector)]
    return sorted(cid for kind, cid in ids if kind == pafs.FileType.File and cid is not None)


def clean_temp_files(storage: str, sweep: str, *, older_than: float = 3600.0) -> int:
    """Remove hidden temp files (`.<cell_id>.<random>.tmp`) left by writers killed mid-write.

    Only local stores have them (object uploads leave no visible key), and only files older than
    `older_than` seconds are removed, so writers still running elsewhere are never disturbed.
    Readers ignore these files anyway; this only reclaims space. Returns how many were removed.
    """
    loc = locate(storage)
    if not loc.local:
        return 0
    now, removed = time.time(), 0
    for table in schemas.TABLES:
        directory = loc.join(*paths.table_parts(sweep, table))
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if name.startswith(".") and name.endswith(".tmp") and now - os.path.getmtime(path) > older_than:
                try:
                    os.unlink(path)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def spec_path(storage: str, sweep: str) -> str:
    return locate(storage).join(*paths.spec_parts(sweep))


def write_spec(storage: str, sweep: str, text: str) -> None:
    """Store the resolved spec beside the results (atomically), for `status` and provenance."""
    write_bytes(storage, spec_path(storage, sweep), text.encode())


def read_spec_text(storage: str, sweep: str) -> str | None:
    loc = locate(storage)
    try:
        with loc.fs.open_input_stream(spec_path(storage, sweep)) as f:
            return f.read().decode()
    except (FileNotFoundError, OSError):
        return None
