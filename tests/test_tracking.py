"""`--tracker mlflow|wandb|tensorboard`: every cell one run, read back from each tool's own store with no
network — MLflow from a local sqlite URI, W&B from its offline run files, TensorBoard from its event
files — against the trials and epochs tables the same sweep wrote; a resumed sweep adds no run for a
finished cell; a missing package is one line; the Ray backend feeds the same runs (slow)."""

from __future__ import annotations

import glob
import os
import struct
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from tensorboardX.proto import event_pb2
from wandb.proto import wandb_internal_pb2

from sweeps import store
from sweeps.cells import expand
from sweeps.cli import main
from sweeps.paths import tensorboard_root
from sweeps.schema import TABLES
from sweeps.spec import load_spec
from sweeps.trackers import make_trackers, run_id

OPTIONS = {"input_shape": [1, 6, 6], "num_classes": 3, "n_train": 192, "n_test": 48}
TRACKERS = ["--tracker", "mlflow", "--tracker", "wandb", "--tracker", "tensorboard"]


def write_spec(tmp: Path, **changes) -> Path:
    raw = {"name": "tr", "storage": str(tmp / "results"), "model": "lenet300100", "dataset": "synthetic",
           "pruner": ["dense", "magnitude/global"], "sparsity": [0.5, 0.9], "seed": 0,
           "data": {"options": OPTIONS}, "train": {"epochs": 2, "batch_size": 32, "lr": 0.05},
           "prune": {"protocol": "none"}}
    raw.update(changes)
    path = tmp / "tr.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ----------------------------------------------------------------------------- readers of each tool's files


def tfrecords(path: str):
    """The records of a TFRecord file (TensorBoard's event files): u64 length, u32 crc, data, u32 crc."""
    data = Path(path).read_bytes()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        yield data[pos + 12:pos + 12 + length]
        pos += 12 + length + 4


def tensorboard_scalars(directory: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"), recursive=True)):
        for raw in tfrecords(f):
            ev = event_pb2.Event.FromString(raw)
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def wandb_records(path: str) -> list:
    """The records of a W&B run file (`run-<id>.wandb`: a LevelDB-style log of 32 KiB blocks, a
    7-byte header `:W&B` + magic + version, each record crc u32, length u16, type u8)."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, parts, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk  # full/first start a record, middle/last extend it
        if kind in (1, 4):
            out.append(wandb_internal_pb2.Record.FromString(parts))
            parts = b""
    return out


def wandb_runs(wandb_dir: Path) -> list[dict]:
    """Each offline attempt, in the order they started: run id, name, group, config, history rows,
    summary, exit code (folder names hold only the second an attempt started)."""
    runs = []
    for f in sorted(glob.glob(str(wandb_dir / "wandb" / "offline-run-*" / "run-*.wandb"))):
        run: dict = {"history": [], "summary": {}, "config": {}}
        for r in wandb_records(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run.update(id=r.run.run_id, name=r.run.display_name, group=r.run.run_group,
                           started=r.run.start_time.ToNanoseconds(),
                           project=r.run.project, config={i.key: yaml.safe_load(i.value_json) for i in r.run.config.update})
            elif kind == "history":
                run["history"].append({i.key or "/".join(i.nested_key): yaml.safe_load(i.value_json)
                                       for i in r.history.item})
            elif kind == "summary":
                run["summary"].update({i.key: yaml.safe_load(i.value_json) for i in r.summary.update if i.key})
            elif kind == "exit":
                run["exit"] = r.exit.exit_code
        runs.append(run)
    return sorted(runs, key=lambda run: run["started"])  # attempts in the order they started


# ----------------------------------------------------------------------------- a serial sweep, then a resume


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """Run the sweep with all three trackers; then one cell is made to look interrupted (its result
    files gone, a tracker run of it started and killed) and the sweep is resumed with the trackers."""
    tmp = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(tmp))
        mp.setenv("WANDB_SILENT", "true")
        mp.delenv("WANDB_PROJECT", raising=False)
        spec_path = write_spec(tmp)
        assert main(["run", str(spec_path), *TRACKERS]) == 0
        spec = load_spec(spec_path)
        cells = expand(spec)
        first = {c.cell_id: store.trial_row(spec.storage, "tr", c.cell_id) for c in cells}
        again = cells[-1]  # interrupted: its files gone, its runs started and never finished
        for table in TABLES:
            path = store.table_path(spec.storage, "tr", table, again.cell_id)
            if os.path.exists(path):
                os.remove(path)
        interrupted = make_trackers(["mlflow", "wandb", "tensorboard"], "tr", spec.storage)
        for t in interrupted:
            t.started(again)
            t.progress(again, {"phase": "sparse", "epoch": 0, "train_loss": 9.0})
        for t in interrupted:
            t.close()
        assert main(["resume", "tr", "--storage", spec.storage, *TRACKERS]) == 0
        rows = {c.cell_id: store.trial_row(spec.storage, "tr", c.cell_id) for c in cells}
        client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        yield {"tmp": tmp, "spec": spec, "cells": cells, "again": again, "first": first, "rows": rows,
               "client": client}


def mlflow_runs(client) -> dict[str, object]:
    exp = client.get_experiment_by_name("tr")
    runs = client.search_runs([exp.experiment_id])
    return {r.data.tags["prunetune.cell_id"]: r for r in runs}


def test_mlflow_one_run_per_cell_with_its_axes_epochs_and_final_row(tracked) -> None:
    client, cells, rows = tracked["client"], tracked["cells"], tracked["rows"]
    runs = mlflow_runs(client)
    assert len(client.search_runs([client.get_experiment_by_name("tr").experiment_id])) == len(cells) == 3
    epochs = pd.read_parquet(Path(tracked["spec"].storage) / "tr" / "epochs")
    for cell in cells:
        run, row = runs[cell.cell_id], rows[cell.cell_id]
        assert run.info.run_name == cell.label and run.info.status == "FINISHED"
        p = run.data.params
        assert (p["model"], p["dataset"], p["pruner"], p["seed"]) == ("lenet300100", "synthetic", cell.pruner, "0")
        assert p["cell_id"] == cell.cell_id and p["train.epochs"] == "2"
        assert run.data.tags["prunetune.pruner"] == cell.pruner and run.data.tags["prunetune.status"] == "ok"
        m = run.data.metrics
        for k in ("test_acc", "direct_sparsity", "effective_sparsity", "total_seconds", "cpu_hours", "gpu_hours"):
            assert m[k] == pytest.approx(row[k], rel=1e-12, abs=0), k
    # the per-epoch training loss of the cell that trained the dense model, as its epochs table has it
    dense = next(c for c in cells if c.pruner == "dense")
    history = client.get_metric_history(runs[dense.cell_id].info.run_id, "dense/train_loss")
    recorded = epochs[(epochs.cell_id == dense.cell_id) & (epochs.phase == "dense")].sort_values("epoch")
    assert [h.step for h in sorted(history, key=lambda h: h.step)] == [0, 1]
    assert [h.value for h in sorted(history, key=lambda h: h.step)] == pytest.approx(recorded.train_loss.tolist(),
                                                                                     rel=1e-12)


def test_a_resumed_sweep_adds_no_run_for_a_finished_cell(tracked) -> None:
    client, again, first, rows = tracked["client"], tracked["again"], tracked["first"], tracked["rows"]
    runs = mlflow_runs(client)
    assert len(runs) == 3  # the interrupted cell continued its own run, the others got none
    for cid, row in rows.items():
        if cid != again.cell_id:  # untouched: the first run's rows and metrics
            assert row["finished_at"] == first[cid]["finished_at"]
            assert runs[cid].data.metrics["total_seconds"] == pytest.approx(first[cid]["total_seconds"], rel=1e-12)
    assert runs[again.cell_id].info.status == "FINISHED"
    assert rows[again.cell_id]["finished_at"] != first[again.cell_id]["finished_at"]  # it ran again
    # W&B: one run id per cell (the resumed attempt is a second offline file of the same run)
    attempts = wandb_runs(tracked["tmp"])
    ids = [a["id"] for a in attempts]
    assert sorted(set(ids)) == sorted(run_id(c) for c in tracked["cells"])
    assert ids.count(run_id(again)) == 3 and len(ids) == 5  # first run, interrupted, resumed
    # TensorBoard: one folder per cell, the interrupted attempt's events replaced
    root = tensorboard_root(tracked["spec"].storage, "tr")
    assert len(os.listdir(root)) == 3
    again_dir = next(d for d in os.listdir(root) if d.endswith(again.cell_id))
    assert 9.0 not in [v for _, v in tensorboard_scalars(os.path.join(root, again_dir)).get("sparse/train_loss", [])]


def test_wandb_offline_runs_carry_the_axes_history_and_final_row(tracked) -> None:
    cells, rows = tracked["cells"], tracked["rows"]
    last = {a["id"]: a for a in wandb_runs(tracked["tmp"])}  # the last attempt of each run
    for cell in cells:
        run, row = last[run_id(cell)], rows[cell.cell_id]
        assert (run["name"], run["group"], run["project"]) == (cell.label, "tr", "tr")
        assert (run["config"]["pruner"], run["config"]["cell_id"]) == (cell.pruner, cell.cell_id)
        assert run["exit"] == 0 and run["summary"]["status"] == "ok"
        for k in ("test_acc", "effective_sparsity", "cpu_hours"):
            assert run["summary"][k] == pytest.approx(row[k], rel=1e-12), k
    dense = next(c for c in cells if c.pruner == "dense")
    losses = [h["dense/train_loss"] for h in last[run_id(dense)]["history"] if "dense/train_loss" in h]
    assert len(losses) == 2 and all(x > 0 for x in losses)


def test_tensorboard_event_files_read_back(tracked) -> None:
    cells, rows = tracked["cells"], tracked["rows"]
    root = tensorboard_root(tracked["spec"].storage, "tr")
    assert root == os.path.join(tracked["spec"].storage, "tr", "_tensorboard")
    epochs = pd.read_parquet(Path(tracked["spec"].storage) / "tr" / "epochs")
    for cell in cells:
        [d] = [d for d in os.listdir(root) if d.endswith(cell.cell_id)]
        scalars = tensorboard_scalars(os.path.join(root, d))
        row = rows[cell.cell_id]
        for k in ("test_acc", "direct_sparsity", "cpu_hours"):
            [(step, value)] = scalars[f"final/{k}"]
            assert step == 0 and value == pytest.approx(row[k], rel=1e-6), k  # float32 in the event file
    dense = next(c for c in cells if c.pruner == "dense")
    [d] = [d for d in os.listdir(root) if d.endswith(dense.cell_id)]
    recorded = epochs[(epochs.cell_id == dense.cell_id) & (epochs.phase == "dense")].sort_values("epoch")
    got = tensorboard_scalars(os.path.join(root, d))["dense/train_loss"]
    assert [s for s, _ in got] == [0, 1]
    assert [v for _, v in got] == pytest.approx(recorded.train_loss.tolist(), rel=1e-6)


def test_a_missing_package_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys) -> None:
    spec = write_spec(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    assert main(["run", str(spec), "--tracker", "wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --tracker wandb: the wandb package is not installed; pip install "
                   "'prunetune[tracking]' (or pip install wandb)"]
    assert main(["run", str(spec), "--tracker", "comet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: argument --tracker: invalid choice: 'comet' (choose from 'mlflow', 'wandb', 'tensorboard')"]
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------- the Ray backend


@pytest.mark.slow  # a real Ray: Tune's reports reach the trackers through the driver's callback
def test_the_ray_backend_feeds_the_same_runs(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    spec_path = write_spec(tmp_path, pruner=["random/uniform"], sparsity=[0.5], backend="ray", prune={})
    assert main(["run", str(spec_path), "--num-cpus", "2", "--tracker", "mlflow", "--tracker", "tensorboard"]) == 0
    spec = load_spec(spec_path)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow_runs(client)
    epochs = pd.read_parquet(Path(spec.storage) / "tr" / "epochs")
    assert sorted(runs) == sorted(c.cell_id for c in expand(spec))
    for cell in expand(spec):
        run, row = runs[cell.cell_id], store.trial_row(spec.storage, "tr", cell.cell_id)
        assert run.info.status == "FINISHED" and run.info.run_name == cell.label
        assert run.data.metrics["test_acc"] == pytest.approx(row["test_acc"], rel=1e-12)
        assert run.data.metrics["reserved_cpus"] == 1.0
        history = sorted(client.get_metric_history(run.info.run_id, "sparse/train_loss"), key=lambda h: h.step)
        recorded = epochs[(epochs.cell_id == cell.cell_id) & (epochs.phase == "sparse")].sort_values("epoch")
        assert [h.value for h in history] == pytest.approx(recorded.train_loss.tolist(), rel=1e-12)
    assert len(os.listdir(tensorboard_root(spec.storage, "tr"))) == 1
