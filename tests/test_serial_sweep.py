"""End to end through the serial backend: one trials row per cell, three readers, resume, growth,
damaged files, failures, and a `prunetune run` killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from sweeps import schema, store
from sweeps import trial as trial_mod
from sweeps.dense_cache import DenseCache
from sweeps.cells import expand
from sweeps.cli import main
from sweeps.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {"input_shape": [1, 4, 4], "num_classes": 3, "n_train": 96, "n_test": 48}


def write_spec(tmp_path: Path, name: str = "e2e", **changes) -> Path:
    raw = {"name": name, "storage": str(tmp_path / "results"), "model": "lenet300100",
           "dataset": "synthetic", "pruner": ["dense", "magnitude/global", "random/uniform"],
           "sparsity": [0.5, 0.9], "seed": 0, "data": {"options": OPTIONS},
           "train": {"epochs": 1, "batch_size": 32, "lr": 0.05}, "prune": {"protocol": "none"}}
    raw.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def files(tmp_path: Path, sweep: str = "e2e", table: str = "trials") -> dict[str, float]:
    """Visible result files (hidden `.<cell_id>.<random>.tmp` files of interrupted writes excluded)."""
    d = tmp_path / "results" / sweep / table
    return {p.name: p.stat().st_mtime_ns for p in d.glob("*.parquet") if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One finished sweep (5 cells), shared by the read-only tests below."""
    tmp = tmp_path_factory.mktemp("swept")
    spec = write_spec(tmp)
    assert main(["run", str(spec)]) == 0
    return tmp, spec


def test_one_trials_row_per_cell_with_the_central_schema(swept):
    tmp, spec = swept
    cells = expand(load_spec(spec))
    assert len(cells) == 5  # dense once + 2 pruners × 2 sparsities
    names = files(tmp)
    assert sorted(names) == sorted(f"{c.cell_id}.parquet" for c in cells)
    for c in cells:
        t = pq.read_table(tmp / "results" / "e2e" / "trials" / f"{c.cell_id}.parquet")
        assert t.num_rows == 1 and t.schema == schema.TRIALS
        row = t.to_pylist()[0]
        assert row["status"] == "ok" and row["cell_id"] == c.cell_id and row["pruner"] == c.pruner
        assert row["sparsity"] == c.sparsity and row["sweep"] == "e2e"
    spec_text = (tmp / "results" / "e2e" / "spec.yaml").read_text()
    assert yaml.safe_load(spec_text)["sparsity"] == [0.5, 0.9]


def test_pandas_pyarrow_and_duckdb_read_every_column(swept):
    tmp, _ = swept
    for table, sch in (("trials", schema.TRIALS), ("layers", schema.LAYERS), ("epochs", schema.EPOCHS)):
        d = tmp / "results" / "e2e" / table
        df = pd.read_parquet(d)
        assert list(df.columns) == sch.names
        ds = pads.dataset(d, format="parquet")
        assert ds.schema.names == sch.names
        rel = duckdb.sql(f"select * from read_parquet('{d}/*.parquet', union_by_name=true)")
        assert rel.columns == sch.names
        assert duckdb.sql(f"select count(*) from read_parquet('{d}/*.parquet', union_by_name=true)"
                          ).fetchall()[0][0] == len(df) == ds.count_rows()
    trials = pd.read_parquet(tmp / "results" / "e2e" / "trials")
    assert len(trials) == 5
    layers = pd.read_parquet(tmp / "results" / "e2e" / "layers")
    assert len(layers) == 5 * 3  # three prunable layers per cell


def test_post_training_pruner_trained_the_dense_model_once(swept):
    tmp, _ = swept
    [key] = os.listdir(tmp / "results" / "_cache" / "dense")
    assert DenseCache(str(tmp / "results")).computations(key) == 1


def test_rerun_finishes_instantly_and_writes_nothing(swept, capsys):
    tmp, spec = swept
    before = {t: files(tmp, table=t) for t in schema.TABLES}
    t0 = time.monotonic()
    assert main(["run", str(spec)]) == 0
    assert time.monotonic() - t0 < 10
    assert "0 done, 0 failed, 5 already done" in capsys.readouterr().err
    assert {t: files(tmp, table=t) for t in schema.TABLES} == before


def test_status_counts(swept, capsys):
    tmp, _ = swept
    assert main(["status", "e2e", "--storage", str(tmp / "results")]) == 0
    assert "5 cells — 5 done, 0 diverged, 0 failed, 0 pending" in capsys.readouterr().out
    assert main(["status", str(tmp / "results" / "e2e")]) == 0
    assert "5 done" in capsys.readouterr().out


def test_adding_a_sparsity_runs_only_the_new_cells(tmp_path, capsys):
    spec = write_spec(tmp_path, pruner=["dense", "magnitude/global"])
    assert main(["run", str(spec)]) == 0
    before = files(tmp_path)
    assert len(before) == 3
    spec = write_spec(tmp_path, pruner=["dense", "magnitude/global"], sparsity=[0.5, 0.9, 0.95])
    assert main(["run", str(spec)]) == 0
    assert "1 done, 0 failed, 3 already done" in capsys.readouterr().err
    after = files(tmp_path)
    assert len(after) == 4 and {k: after[k] for k in before} == before
    [key] = os.listdir(tmp_path / "results" / "_cache" / "dense")
    assert DenseCache(str(tmp_path / "results")).computations(key) == 1


def test_truncated_file_is_ignored_and_redone(tmp_path, capsys):
    spec = write_spec(tmp_path, pruner="dense")
    assert main(["run", str(spec)]) == 0
    [name] = files(tmp_path)
    path = tmp_path / "results" / "e2e" / "trials" / name
    path.write_bytes(path.read_bytes()[:100])
    assert not store.is_done(str(tmp_path / "results"), "e2e", name.removesuffix(".parquet"))
    assert main(["status", str(spec)]) == 0
    assert "0 done, 0 diverged, 0 failed, 1 pending" in capsys.readouterr().out
    assert main(["run", str(spec)]) == 0
    assert "1 done, 0 failed, 0 already done" in capsys.readouterr().err
    assert pq.read_table(path).num_rows == 1


def test_failed_cells_are_listed_kept_and_retried(tmp_path, monkeypatch, capsys):
    spec = write_spec(tmp_path, pruner=["dense", "random/uniform"], sparsity=[0.5])
    real = trial_mod.STEPS["obtain"]

    def flaky(st):
        if st.cell.pruner == "random/uniform":
            raise RuntimeError("simulated crash")
        real(st)

    monkeypatch.setitem(trial_mod.STEPS, "obtain", flaky)
    assert main(["run", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "1 done, 1 failed" in err and "RuntimeError: simulated crash" in err
    assert main(["status", str(spec)]) == 1  # as `run`: failed cells make the exit code non-zero
    out = capsys.readouterr().out
    assert "1 done, 0 diverged, 1 failed, 0 pending" in out and "RuntimeError: simulated crash" in out
    monkeypatch.setitem(trial_mod.STEPS, "obtain", real)
    assert main(["run", str(spec)]) == 0
    assert "1 done, 0 failed, 1 already done" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_mid_run_leaves_nothing_partial_and_is_redone(tmp_path):
    # cells slow enough (a few seconds of single-thread training each) that the kill lands inside one
    spec = write_spec(tmp_path, pruner=["dense", "random/uniform"], sparsity=[0.5, 0.8, 0.9],
                      seed=[0, 1], train={"epochs": 80, "batch_size": 8, "lr": 0.05})
    n_cells = len(expand(load_spec(spec)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.cli", "run", str(spec)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trials = tmp_path / "results" / "e2e" / "trials"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(files(tmp_path)) < 2:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # now: inside the third cell
    proc.wait()
    done = files(tmp_path)
    assert 2 <= len(done) < n_cells
    # a write cut short leaves at most a hidden temp file, never a partial .parquet
    assert all(p.name.endswith(".parquet") or (p.name.startswith(".") and p.name.endswith(".tmp"))
               for p in trials.iterdir())
    # readers see only complete files: every visible file reads back, temp files are hidden
    for name in done:
        assert pq.read_table(trials / name).num_rows == 1
    assert len(pd.read_parquet(trials)) == len(done)
    assert pads.dataset(trials, format="parquet").count_rows() == len(done)
    assert main(["run", str(spec)]) == 0
    final = files(tmp_path)
    assert len(final) == n_cells and {k: final[k] for k in done} == done  # finished cells kept as they were
    assert len(pd.read_parquet(trials)) == n_cells
