"""The Parquet store: central schema, atomic files, trials last, damaged files ignored, three readers."""

from __future__ import annotations

import datetime as dt
import math
import os

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from sweeps import schema, store
from analysis.load import read_arrow


def trials_row(cell_id: str, status: str = "ok", **extra) -> dict:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    return {"cell_id": cell_id, "sweep": "s", "pruner": "magnitude/global", "sparsity": 0.9,
            "seed": 0, "status": status, "test_acc": 0.5, "effective_compression": math.inf,
            "started_at": now, "finished_at": now, **extra}


def write(root, cell_id, status="ok", layers=2):
    store.write_cell(str(root), "s", cell_id, {
        "trials": [trials_row(cell_id, status)],
        "layers": [{"cell_id": cell_id, "sweep": "s", "layer_index": i, "layer": f"l{i}",
                    "n_weights": 10, "direct_sparsity": 0.5, "effective_sparsity": 0.6}
                   for i in range(layers)],
    })


def test_rows_are_cast_to_the_schema_and_missing_columns_are_null(tmp_path):
    write(tmp_path, "a")
    t = pq.read_table(tmp_path / "s" / "trials" / "a.parquet")
    assert t.schema == schema.TRIALS
    row = t.to_pylist()[0]
    assert row["effective_compression"] == math.inf  # inf survives, never dropped
    assert row["hessian_trace"] is None and row["error"] is None
    assert row["schema_version"] == schema.SCHEMA_VERSION


def test_unknown_column_is_refused():
    with pytest.raises(ValueError, match=r"trials: unknown column\(s\) \['acc'\]"):
        store.to_table("trials", [{"cell_id": "a", "acc": 1.0}])


def test_trials_is_written_last(tmp_path, monkeypatch):
    order = []
    real = store.write_table
    monkeypatch.setattr(store, "write_table", lambda *a: order.append(a[2]) or real(*a))
    write(tmp_path, "a")
    assert order == ["layers", "trials"]


def test_done_means_trials_reads_back_with_a_finished_status(tmp_path):
    write(tmp_path, "ok")
    write(tmp_path, "bad", status="failed")
    write(tmp_path, "div", status="diverged")
    assert store.is_done(str(tmp_path), "s", "ok") and store.is_done(str(tmp_path), "s", "div")
    assert not store.is_done(str(tmp_path), "s", "bad")  # failed cells are retried
    assert not store.is_done(str(tmp_path), "s", "missing")


def test_truncated_file_counts_as_absent(tmp_path):
    write(tmp_path, "a")
    write(tmp_path, "b")
    path = tmp_path / "s" / "trials" / "b.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert store.is_done(str(tmp_path), "s", "a") and not store.is_done(str(tmp_path), "s", "b")
    assert read_arrow("s", "trials", storage=str(tmp_path), use_cache=False).column("cell_id").to_pylist() == ["a"]


def test_no_temp_files_remain_and_temp_files_are_invisible(tmp_path):
    write(tmp_path, "a")
    names = os.listdir(tmp_path / "s" / "trials")
    assert names == ["a.parquet"]
    # a writer killed mid-file leaves a hidden temp file: no reader may see it
    (tmp_path / "s" / "trials" / ".b.1234abcd.tmp").write_bytes(b"PAR1 partial")
    assert len(pd.read_parquet(tmp_path / "s" / "trials")) == 1
    assert pads.dataset(tmp_path / "s" / "trials", format="parquet").count_rows() == 1
    glob = str(tmp_path / "s" / "trials" / "*.parquet")
    assert duckdb.sql(f"select count(*) from read_parquet('{glob}', union_by_name=true)").fetchall()[0][0] == 1
    assert store.stored_ids(str(tmp_path), "s") == ["a"]


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write(tmp_path, "a")
    assert [n for n in os.listdir(tmp_path / "s" / "layers")] == []


def test_rewrite_of_a_retried_cell_drops_its_stale_tables(tmp_path):
    write(tmp_path, "a", layers=3)
    write(tmp_path, "a", layers=0)
    assert not (tmp_path / "s" / "layers" / "a.parquet").exists()


def test_three_readers_see_every_column(tmp_path):
    for cid in ("a", "b", "c"):
        write(tmp_path, cid)
    d = tmp_path / "s" / "trials"
    names = schema.TRIALS.names
    df = pd.read_parquet(d)
    assert list(df.columns) == names and len(df) == 3
    ds = pads.dataset(d, format="parquet")
    assert ds.schema.names == names and ds.to_table().num_rows == 3
    rel = duckdb.sql(f"select * from read_parquet('{d}/*.parquet', union_by_name=true)")
    # fetched as Arrow: fetchall() would need pytz for the UTC timestamps
    got = rel.arrow()
    got = got.read_all() if hasattr(got, "read_all") else got
    assert rel.columns == names and got.num_rows == 3 and got.column_names == names
    assert duckdb.sql(f"select max(effective_compression) from read_parquet('{d}/*.parquet')"
                      ).fetchall()[0][0] == math.inf


def test_object_store_uri(tmp_path):
    root = "mock:///bucket/results"
    write(root, "a")
    assert store.is_done(root, "s", "a")
    t = read_arrow("s", "trials", storage=root, use_cache=False)
    assert t.num_rows == 1 and t.schema == schema.TRIALS
    store.write_spec(root, "s", "name: s\n")
    assert store.read_spec_text(root, "s") == "name: s\n"


def test_a_table_no_cell_wrote_reads_empty_with_its_schema(tmp_path):
    write(tmp_path, "a", layers=0)  # a trials row, no layers
    t = read_arrow("s", "layers", storage=str(tmp_path), use_cache=False)
    assert t.num_rows == 0 and t.schema == schema.LAYERS
    assert isinstance(t, pa.Table)


def test_old_temp_files_are_cleaned_new_ones_kept(tmp_path):
    write(tmp_path, "a")
    d = tmp_path / "s" / "trials"
    old, new = d / ".b.0001.tmp", d / ".c.0002.tmp"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    os.utime(old, (1, 1))
    assert store.clean_temp_files(str(tmp_path), "s") == 1
    assert sorted(os.listdir(d)) == [".c.0002.tmp", "a.parquet"]


def test_the_reader_conforms_files_of_an_older_and_a_newer_schema(tmp_path):
    """A file written before columns were added (or renamed) reads back in the central schema:
    new columns null, the renamed Radau column under its new name; a column the central schema does
    not know (a newer engine's) is kept after the central ones, never dropped."""
    old = pa.schema([("cell_id", pa.string()), ("sweep", pa.string()), ("status", pa.string()),
                     ("test_acc", pa.float64()), ("predicted_removed_frac_radau", pa.float64())])
    path = tmp_path / "s" / "trials" / "a.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"cell_id": "a", "sweep": "s", "status": "ok", "test_acc": 0.5,
                                          "predicted_removed_frac_radau": 0.75}], schema=old), path)
    store.write_cell(str(tmp_path), "s", "b", {"trials": [{"cell_id": "b", "sweep": "s", "status": "ok"}]})
    t = read_arrow("s", "trials", storage=str(tmp_path), use_cache=False)
    assert t.schema == schema.schema("trials") and t.num_rows == 2
    rows = {r["cell_id"]: r for r in t.to_pylist()}
    assert rows["a"]["test_acc"] == 0.5 and rows["a"]["predicted_removed_frac_radau_rule"] == 0.75
    assert rows["a"]["predicted_unresolved"] is None and rows["b"]["test_acc"] is None
    newer = pa.table({"cell_id": ["c"], "sweep": ["s"], "status": ["ok"], "from_a_newer_engine": [7]})
    pq.write_table(newer, tmp_path / "s" / "trials" / "c.parquet")
    t = read_arrow("s", "trials", storage=str(tmp_path), use_cache=False)
    assert t.schema.names == [*schema.schema("trials").names, "from_a_newer_engine"]
    assert {r["cell_id"]: r["from_a_newer_engine"] for r in t.to_pylist()} == {"a": None, "b": None, "c": 7}
