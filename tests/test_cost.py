"""What cells cost: reserved resources × wall time in every trials row, phases that add up to at most
the whole on real cells (cached dense models included), the dense model charged once, `status`'s
cost line and `tables --cost`."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis import tables as T
from sweeps import store
from sweeps.cells import expand
from sweeps.cli import main
from sweeps.cost import Reserved, reserved_by_bundles, reserved_by_serial, sweep_cost, trial_bundles
from sweeps.dense_cache import DENSE_ITEM, DenseCache
from sweeps.spec import load_spec

OPTIONS = {"input_shape": [1, 8, 8], "num_classes": 4, "n_train": 768, "n_test": 64}


def write_spec(tmp_path: Path, **changes) -> Path:
    raw = {"name": "c", "storage": str(tmp_path / "results"), "model": "lenet300100", "dataset": "synthetic",
           "pruner": ["dense", "magnitude/global", "lamp", "random/uniform"], "sparsity": [0.5, 0.9], "seed": 0,
           "data": {"options": OPTIONS}, "train": {"epochs": 6, "batch_size": 32, "lr": 0.05},
           "prune": {"protocol": "none"},
           "hessian": {"enabled": True, "models": "both", "probes": 2, "iterations": 8, "max_samples": 64}}
    raw.update(changes)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ----------------------------------------------------------------------------- the rule


def test_reserved_times_wall_time() -> None:
    cols = Reserved(cpus=2.0, gpus=0.25).columns(5400.0)
    assert cols == {"reserved_cpus": 2.0, "reserved_gpus": 0.25, "cpu_hours": 3.0, "gpu_hours": 0.375}
    assert reserved_by_serial(3, "cpu") == Reserved(3.0, 0.0)
    assert reserved_by_serial(1, "cuda:0") == Reserved(1.0, 1.0)  # one cell at a time holds the GPU
    # a Ray trial with 2 HVP workers holds three bundles of its own size
    bundles = trial_bundles(2, 0.5, 2)
    assert bundles == [{"CPU": 2.0, "GPU": 0.5}] * 3
    assert reserved_by_bundles(bundles) == Reserved(6.0, 1.5)
    assert reserved_by_bundles(trial_bundles(1, 0, 1)) == Reserved(1.0, 0.0)


def test_sweep_cost_sums_rows_and_costs_pending_cells_like_the_most_alike() -> None:
    rows = [
        {"kind": "point", "model": "m", "dataset": "d", "pruner": "snip", "target": "direct", "status": "ok",
         "cpu_hours": 1.0, "gpu_hours": 0.5},
        {"kind": "point", "model": "m", "dataset": "d", "pruner": "snip", "target": "direct", "status": "ok",
         "cpu_hours": 3.0, "gpu_hours": 1.5},
        {"kind": "point", "model": "m", "dataset": "d", "pruner": "dense", "target": "direct", "status": "failed",
         "cpu_hours": 10.0, "gpu_hours": 0.0},                       # spent, but no basis for an estimate
        {"kind": "point", "model": "m", "dataset": "d", "pruner": "lamp", "target": "direct", "status": "ok",
         "cpu_hours": None, "gpu_hours": None},                       # an older row without cost
    ]
    pending = [{"kind": "point", "model": "m", "dataset": "d", "pruner": "snip", "target": "direct"},   # 2.0, 1.0
               {"kind": "point", "model": "m", "dataset": "d", "pruner": "snip", "target": "effective"},  # same pruner
               {"kind": "point", "model": "m", "dataset": "d", "pruner": "grasp", "target": "direct"}]    # same pair
    c = sweep_cost(rows, pending)
    assert (c.cpu_hours, c.gpu_hours, c.cells_costed) == (14.0, 2.0, 3)
    assert (c.remaining_cpu_hours, c.remaining_gpu_hours, c.remaining_cells) == (6.0, 3.0, 3)
    empty = sweep_cost([], pending)
    assert empty.cpu_hours == 0 and math.isnan(empty.remaining_cpu_hours) and empty.remaining_cells == 3


# ----------------------------------------------------------------------------- real cells


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cost")
    spec = write_spec(tmp)
    assert main(["run", str(spec)]) == 0
    rows = pd.read_parquet(tmp / "results" / "c" / "trials")
    return tmp, spec, rows


def test_phases_add_up_to_at_most_the_whole_and_cost_is_reserved_times_wall(swept) -> None:
    _, _, rows = swept
    assert len(rows) == 7 and (rows.status == "ok").all()
    parts = rows.train_seconds + rows.prune_seconds + rows.hessian_seconds
    assert (parts <= rows.total_seconds).all(), rows[["pruner", "train_seconds", "prune_seconds",
                                                      "hessian_seconds", "total_seconds"]]
    for c in ("train_seconds", "prune_seconds", "hessian_seconds"):
        assert (rows[c] >= 0).all() and (rows[c] <= rows.total_seconds).all()
    assert (rows.reserved_cpus == 1.0).all() and (rows.reserved_gpus == 0.0).all()
    assert rows.cpu_hours.tolist() == pytest.approx((rows.total_seconds / 3600).tolist(), rel=1e-12)
    assert (rows.gpu_hours == 0).all()


def test_the_dense_model_is_charged_to_the_cell_that_trained_it_once(swept) -> None:
    tmp, spec, rows = swept
    storage = str(tmp / "results")
    [key] = [p.name for p in (tmp / "results" / "_cache" / "dense").iterdir()]
    cache = DenseCache(storage)
    assert cache.computations(key) == 1
    dense_seconds = cache.load(key, DENSE_ITEM)["metrics"]["seconds"]
    first = expand(load_spec(spec))[0]
    assert first.pruner == "dense"
    by_id = rows.set_index("cell_id")
    # the dense cell trained it: its train time holds the whole training; every other cell only loaded it
    assert by_id.loc[first.cell_id, "train_seconds"] >= dense_seconds
    others = by_id.drop(index=first.cell_id)
    assert (others.train_seconds < 0.5 * dense_seconds).all(), (dense_seconds, others.train_seconds.tolist())
    assert others.train_seconds.sum() < dense_seconds  # six loads together cost less than one training


def test_status_prints_what_the_sweep_cost_and_the_remaining_estimate(swept, capsys) -> None:
    tmp, spec, rows = swept
    assert main(["status", "c", "--storage", str(tmp / "results")]) == 0
    out = capsys.readouterr().out
    assert f"cost: {rows.cpu_hours.sum():.3g} CPU-hours, 0 GPU-hours so far (7 cells); nothing pending" in out
    # one more sparsity: 3 pending cells, each costed as the mean of its pruner's finished cells
    grown = write_spec(tmp, sparsity=[0.5, 0.9, 0.95])
    grown_spec = load_spec(grown)
    store.write_spec(grown_spec.storage, "c", yaml.safe_dump(grown_spec.to_dict()))
    try:
        assert main(["status", "c", "--storage", str(tmp / "results")]) == 0
        out = capsys.readouterr().out
        means = rows[rows.pruner != "dense"].groupby("pruner").cpu_hours.mean()
        assert "10 cells — 7 done, 0 diverged, 0 failed, 3 pending" in out
        assert f"remaining 3 cells ≈ {means.sum():.3g} CPU-hours, 0 GPU-hours" in out
    finally:
        store.write_spec(grown_spec.storage, "c", yaml.safe_dump(load_spec(spec).to_dict()))


def test_tables_cost_per_pruner(swept, capsys) -> None:
    tmp, _, rows = swept
    tidy = T.build("accuracy", {"trials": rows}, levels=[2.0], cost=True)["accuracy_cost"]
    expected = rows.groupby("pruner").cpu_hours.agg(["size", "sum", "mean"])
    got = tidy.set_index("pruner")
    for pruner, e in expected.iterrows():
        assert got.loc[pruner, "n_cells"] == e["size"]
        assert got.loc[pruner, "cpu_hours"] == pytest.approx(e["sum"], rel=1e-12)
        assert got.loc[pruner, "cpu_hours_per_cell"] == pytest.approx(e["mean"], rel=1e-12)
    per_row = T.build("compression", {"trials": rows}, cost=True)["compression_cost"]
    assert len(per_row) == len(rows) and per_row.n_cells.eq(1).all()
    assert main(["tables", "c", "--storage", str(tmp / "results"), "--table", "compression", "--cost",
                 "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "### cost (reserved resources × wall time, every written cell) — lenet300100 / synthetic" in out
    assert "cpu_hours_per_cell" in out
    assert main(["tables", "c", "--storage", str(tmp / "results"), "--table", "limit", "--cost"]) == 2
    assert "--cost: only for the tables accuracy, compression" in capsys.readouterr().err
