"""analysis.load: resolving sweeps, reading a store that real life has made messy."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import read_cache as cache_module
from analysis import load as load_module
from analysis.load import load_table, load_tables, resolve, table_files
from sweeps.paths import Sweeps
from analysis_fixtures import GOLDEN, trial, write_file, write_store
from sweeps.schema import SCHEMAS, TRIALS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    write_store(tmp_path, "golden", GOLDEN)
    write_store(tmp_path, "other", [trial("random/erk", 0.9, 0, dc=10, ec=12, acc=0.9, sweep="other")])
    return tmp_path


def test_reads_every_cell_with_the_central_schema(store: Path) -> None:
    df = load_table(store / "golden", "trials")
    assert len(df) == len(GOLDEN)
    assert list(df.columns) == TRIALS.names               # central order, nothing added or lost
    assert set(df["sweep"]) == {"golden"}
    igq = df[(df["pruner"] == "random/igq") & (df["sparsity"] == 0.999)]
    assert igq["effective_compression"].tolist() == [math.inf, math.inf]   # inf survives the round trip
    assert igq["effective_sparsity"].tolist() == [1.0, 1.0]


def test_resolve_name_dir_root_and_uri(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_name = resolve("golden", storage=store)
    assert by_name.names == ("golden",)
    assert resolve(str(store / "golden")).names == ("golden",)
    assert resolve(str(store)).names == ("golden", "other")            # a storage root: all sweeps
    assert resolve(f"file://{store}/other").names == ("other",)
    monkeypatch.setenv("PRUNETUNE_STORAGE", str(store))
    assert resolve("other").names == ("other",)                        # the root from the environment
    both = load_table(str(store), "trials")
    assert sorted(both["sweep"].unique()) == ["golden", "other"]
    assert len(both) == len(GOLDEN) + 1


def test_unknown_sweep_lists_known_ones(store: Path) -> None:
    with pytest.raises(ValueError, match=r"'nope' not found .*choose from golden, other") as e:
        resolve("nope", storage=store)
    assert "\n" not in str(e.value)


def test_empty_store_says_so(tmp_path: Path) -> None:
    (tmp_path / "_cache").mkdir()                                     # caches are not sweeps
    with pytest.raises(ValueError, match="empty store, no sweeps"):
        resolve(str(tmp_path))
    with pytest.raises(ValueError, match="storage root .* is empty or missing"):
        resolve("demo", storage=tmp_path / "missing")


def test_hidden_files_and_caches_are_not_results(store: Path) -> None:
    trials_dir = store / "golden" / "trials"
    (trials_dir / ".tmp-abc.parquet").write_bytes(b"half written")
    (trials_dir / "_partial.parquet").write_bytes(b"half written")
    write_file(store, "_cache", "trials", [trial("x", 0.5, 0)])       # a hidden directory at the root
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                 # skipped silently, not warned
        df = load_table(store / "golden", "trials")
    assert len(df) == len(GOLDEN)
    assert len(load_table(store, "trials")) == len(GOLDEN) + 1
    assert all(not os.path.basename(p).startswith((".", "_")) for _, p in table_files(resolve(str(store)), "trials"))


def test_newer_file_keeps_its_extra_column(store: Path) -> None:
    row = trial("lamp", 0.9, 0, dc=10, ec=11, acc=0.93)
    extended = pa.schema([*TRIALS, pa.field("flops", pa.float64())])
    write_file(store, "golden", "trials", [{**row, "sweep": "golden", "flops": 123.0}], schema=extended)
    df = load_table(store / "golden", "trials")
    assert list(df.columns) == [*TRIALS.names, "flops"]
    assert df.loc[df["pruner"] == "lamp", "flops"].tolist() == [123.0]
    assert df.loc[df["pruner"] != "lamp", "flops"].isna().all()


def test_older_file_missing_columns_gets_nulls(store: Path) -> None:
    old = pa.schema([TRIALS.field(n) for n in ("cell_id", "model", "dataset", "pruner", "sparsity",
                                                "status", "test_acc")]
                    + [pa.field("seed", pa.int32())])                  # and an older, narrower type
    write_file(store, "golden", "trials", [{"cell_id": "old1", "model": "mlp", "dataset": "digits",
                                            "pruner": "snip", "sparsity": 0.5, "status": "ok",
                                            "test_acc": 0.7, "seed": 4}], schema=old)
    df = load_table(store / "golden", "trials")
    got = df[df["cell_id"] == "old1"].iloc[0]
    assert list(df.columns) == TRIALS.names
    assert got["seed"] == 4 and got["test_acc"] == 0.7
    assert got["sweep"] == "golden"                                    # filled from the directory
    assert math.isnan(got["direct_compression"])                      # absent columns are null
    assert df["kind"].isna().sum() == 1
    age(store / "golden")
    for _ in range(2):                                                 # cold, then from the cache
        narrow = load_table(store / "golden", "trials", columns=["seed", "cell_id", "direct_compression", "sweep"])
        assert list(narrow.columns) == ["cell_id", "sweep", "seed", "direct_compression"]   # central order
        pd.testing.assert_frame_equal(narrow.sort_values("cell_id").reset_index(drop=True),
                                      df[list(narrow.columns)].sort_values("cell_id").reset_index(drop=True))


def test_truncated_file_is_named_and_skipped(store: Path) -> None:
    path = Path(write_file(store, "golden", "trials", [trial("lamp", 0.9, 0, dc=10, ec=10, acc=0.9)]))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(UserWarning, match=path.name):
        df = load_table(store / "golden", "trials")
    assert len(df) == len(GOLDEN)
    with pytest.raises(ValueError, match=path.name):
        load_table(store / "golden", "trials", strict=True)


def test_missing_table_gives_empty_frame_with_columns(store: Path) -> None:
    frames = load_tables(store / "golden", ("spectra", "curves"))
    assert frames["spectra"].empty and list(frames["spectra"].columns) == SCHEMAS["spectra"].names
    assert frames["curves"].empty


def test_columns_restrict_the_read(store: Path) -> None:
    df = load_table(store / "golden", "trials", columns=["pruner", "test_acc", "sweep"])
    assert list(df.columns) == ["sweep", "pruner", "test_acc"]
    assert len(df) == len(GOLDEN)


def test_unknown_table_lists_tables(store: Path) -> None:
    with pytest.raises(ValueError, match="table 'trial': choose from"):
        load_table(store / "golden", "trial")


def test_many_files_read_in_one_pass(tmp_path: Path) -> None:
    rows = [trial("random/igq", 0.9, s, dc=10, ec=12, acc=0.9, model=f"m{s % 3}") for s in range(300)]
    write_store(tmp_path, "many", rows)
    df = load_table(tmp_path / "many", "trials")
    assert len(df) == 300 and df["seed"].sort_values().tolist() == list(range(300))


def test_analysis_imports_neither_torch_nor_ray() -> None:
    code = ("import sys, analysis, analysis.load, analysis.tables, analysis.plots, analysis.output; "
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]; "
            "assert not bad, bad; print('clean')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def test_written_schema_matches_the_central_one(store: Path) -> None:
    """The fixtures write what the engine writes: the central schema, unchanged."""
    path = table_files(resolve(str(store / "golden")), "trials")[0][1]
    assert pq.read_schema(path).remove_metadata().equals(TRIALS)


# ----------------------------------------------------------------------------- consolidated cache


def age(where: Path | str, seconds: float = 60.0) -> None:
    """Backdate a file, or every file below a directory: files younger than cache.RACY_NS are never cached."""
    past = time.time() - seconds
    where = Path(where)
    for p in where.rglob("*.parquet") if where.is_dir() else [where]:
        os.utime(p, (past, past))


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The result files actually opened by the loader."""
    opened: list[str] = []
    real = load_module._read_one

    def spy(fs, path, columns):  # noqa: ANN001, ANN202
        opened.append(os.path.basename(path))
        return real(fs, path, columns)

    monkeypatch.setattr(load_module, "_read_one", spy)
    return opened


def test_cache_reads_only_new_files_and_matches_a_cold_read(store: Path, counted: list[str]) -> None:
    sweep = store / "golden"
    age(sweep)
    first = load_table(sweep, "trials")
    assert len(counted) == len(GOLDEN)
    assert (sweep / "_analysis" / "cache" / "trials.parquet").is_file()
    counted.clear()
    again = load_table(sweep, "trials")
    assert counted == []                                               # everything from the cache
    pd.testing.assert_frame_equal(again, first)
    cold = load_table(sweep, "trials", use_cache=False)
    pd.testing.assert_frame_equal(again.sort_values("cell_id").reset_index(drop=True),
                                  cold.sort_values("cell_id").reset_index(drop=True))
    new = write_file(store, "golden", "trials", [{**trial("lamp", 0.9, 0, dc=10, ec=10, acc=0.9), "sweep": "golden"}])
    age(new)
    counted.clear()
    assert len(load_table(sweep, "trials")) == len(GOLDEN) + 1
    assert counted == [os.path.basename(new)]


def test_cache_sees_rewritten_and_deleted_files(store: Path, counted: list[str]) -> None:
    sweep = store / "golden"
    age(sweep)
    load_table(sweep, "trials")
    files = sorted((sweep / "trials").glob("*.parquet"))
    row = pq.read_table(files[0]).to_pylist()[0]
    write_file(store, "golden", "trials", [{**row, "test_acc": 0.123}], name=files[0].stem)
    age(files[0], seconds=30.0)                                        # same size, a different mtime
    files[1].unlink()
    counted.clear()
    df = load_table(sweep, "trials")
    assert counted == [files[0].name]
    assert len(df) == len(GOLDEN) - 1
    assert df.loc[df["cell_id"] == row["cell_id"], "test_acc"].tolist() == [0.123]


def test_young_files_are_read_but_not_cached(store: Path, counted: list[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "RACY_NS", 10**18)              # every file counts as just written
    sweep = store / "golden"
    load_table(sweep, "trials")
    counted.clear()
    load_table(sweep, "trials")
    assert len(counted) == len(GOLDEN)


def test_corrupt_cache_is_ignored_and_rebuilt(store: Path) -> None:
    sweep = store / "golden"
    age(sweep)
    expected = load_table(sweep, "trials")
    cache_file = sweep / "_analysis" / "cache" / "trials.parquet"
    cache_file.write_bytes(b"not parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                 # not a result file: no warning
        pd.testing.assert_frame_equal(load_table(sweep, "trials"), expected)
    assert pq.read_table(cache_file).num_rows == len(GOLDEN)


def test_a_column_read_caches_those_columns_and_a_wider_read_widens_the_cache(store: Path,
                                                                            counted: list[str]) -> None:
    sweep = store / "golden"
    age(sweep)
    narrow = load_table(sweep, "trials", columns=["pruner", "test_acc"])
    assert list(narrow.columns) == ["pruner", "test_acc"]
    cache_file = sweep / "_analysis" / "cache" / "trials.parquet"
    assert set(pq.read_schema(cache_file).names) == {"pruner", "test_acc", "sweep", cache_module.KEY}
    counted.clear()
    load_table(sweep, "trials", columns=["test_acc"])                 # covered: no file opened
    assert counted == []
    wider = load_table(sweep, "trials", columns=["pruner", "seed"])   # not covered: read the union
    assert len(counted) == len(GOLDEN)
    assert set(pq.read_schema(cache_file).names) == {"pruner", "test_acc", "seed", "sweep", cache_module.KEY}
    counted.clear()
    full = load_table(sweep, "trials")                                # everything: read all columns
    assert len(counted) == len(GOLDEN)
    pd.testing.assert_frame_equal(full, load_table(sweep, "trials", use_cache=False))
    pd.testing.assert_frame_equal(wider, full[["pruner", "seed"]])
    counted.clear()
    load_table(sweep, "trials", columns=["pruner", "epsilon"])        # a full cache covers any read
    assert counted == []


def test_a_remote_like_filesystem_reads_and_caches_like_the_local_one(store: Path, counted: list[str]) -> None:
    """pyarrow's in-memory filesystem stands in for S3/GCS: not local (pre-buffered reads, I/O
    thread count), no mmap; URIs themselves are covered through file:// above."""
    import datetime

    import pyarrow.fs as pafs

    remote_fs = pafs._MockFileSystem(datetime.datetime.now() - datetime.timedelta(minutes=5))
    pafs.copy_files(str(store), "bucket/results", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=remote_fs)
    remote = Sweeps("bucket/results", ("golden", "other"), "mock://bucket/results", fs=remote_fs)
    assert [d.rsplit("/", 1)[1] for d in remote.dirs] == ["golden", "other"]
    local = load_table(store, "trials", use_cache=False).sort_values("cell_id").reset_index(drop=True)
    got = load_table(remote, "trials")
    pd.testing.assert_frame_equal(got.sort_values("cell_id").reset_index(drop=True), local)
    assert remote_fs.get_file_info("bucket/results/golden/_analysis/cache/trials.parquet").is_file
    counted.clear()
    pd.testing.assert_frame_equal(load_table(remote, "trials"), got)
    assert counted == []                                              # the second read is the cache


def test_a_renamed_column_reads_back_under_its_new_name(tmp_path: Path) -> None:
    """Files written before `predicted_removed_frac_radau` was renamed (sweeps.schema.RENAMED) show
    their value under the new name, in full reads and in column projections alike."""
    old_schema = pa.schema([("cell_id", pa.string()), ("sweep", pa.string()), ("status", pa.string()),
                            ("predicted_removed_frac_radau", pa.float64())])
    write_file(tmp_path, "old", "trials", [{"cell_id": "a", "sweep": "old", "status": "ok",
                                            "predicted_removed_frac_radau": 0.75}], schema=old_schema)
    full = load_table(str(tmp_path / "old"), "trials", use_cache=False)
    assert full["predicted_removed_frac_radau_rule"].tolist() == [0.75]
    assert "predicted_removed_frac_radau" not in full.columns
    some = load_table(str(tmp_path / "old"), "trials", columns=["cell_id", "predicted_removed_frac_radau_rule"],
                      use_cache=False)
    assert some["predicted_removed_frac_radau_rule"].tolist() == [0.75]
