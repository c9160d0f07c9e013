"""Progress inside long cells: the throttle, SLQ's and the curve's progress callbacks (which change no
result), the per-cell lines of the serial backend, and Ray's reports reaching the same lines."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from pruning import data as data_lib
from pruning import models
from pruning.clock import Throttle
from pruning.lomp import pruning_curve
from pruning.slq import slq
from sweeps.backends.serial import SerialBackend
from sweeps.cells import expand
from sweeps.progress import Progress, where_text
from sweeps.spec import build_spec
from sweeps.trial import Where

OPTIONS = {"input_shape": [1, 4, 4], "num_classes": 3, "n_train": 96, "n_test": 48}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_forwards_at_most_once_per_period() -> None:
    clock, got = FakeClock(), []
    t = Throttle(got.append, every=2.0, clock=clock)
    for now, value in [(0.5, 1), (1.9, 2), (2.0, 3), (2.5, 4), (4.1, 5), (4.2, 6)]:
        clock.now = now
        t({"v": value})
    t({"v": 7}, force=True)
    assert [g["v"] for g in got] == [3, 5, 7]


@pytest.fixture(scope="module")
def small():
    tr, te = data_lib.load("synthetic", **OPTIONS)
    torch.manual_seed(0)
    model = models.build("lenet300100", input_shape=tr.input_shape, num_classes=tr.num_classes)
    return model, tr, te


def test_slq_reports_probe_batch_and_iteration_and_changes_nothing(small) -> None:
    model, tr, _ = small
    kw = dict(probes=3, iterations=6, seed=1, batch_probes=2)
    plain = slq(model, torch.nn.functional.cross_entropy, tr, **kw)
    seen: list[dict] = []
    watched = slq(model, torch.nn.functional.cross_entropy, tr, progress=seen.append, progress_every=0.0, **kw)
    np.testing.assert_array_equal(plain.nodes, watched.nodes)
    np.testing.assert_array_equal(plain.weights, watched.weights)
    assert [(s["slq_batch"], s["slq_iteration"]) for s in seen] == [(b, k) for b in (1, 2) for k in range(1, 7)]
    assert {(s["slq_batches"], s["slq_max_iterations"]) for s in seen} == {(2, 6)}
    # throttled (the default: every 2 s), a run of milliseconds says nothing
    quiet: list[dict] = []
    slq(model, torch.nn.functional.cross_entropy, tr, progress=quiet.append, **kw)
    assert quiet == []


def test_the_curve_reports_its_points_and_changes_nothing(small) -> None:
    model, tr, te = small
    grid = [0.0, 0.3, 0.6, 0.9]
    plain = pruning_curve(model, tr, te, grid)
    seen: list[dict] = []
    assert pruning_curve(model, tr, te, grid, progress=seen.append, progress_every=0.0) == plain
    assert seen == [{"curve_point": j, "curve_points": 4} for j in range(1, 5)]


def test_where_a_cell_is_in_words() -> None:
    assert where_text({"phase": "sparse", "epoch": 2, "epochs": 10, "train_loss": 0.41234}) == \
        "sparse epoch 3/10 loss 0.4123"
    assert where_text({"phase": "slq", "slq_batch": 1, "slq_batches": 2, "slq_iteration": 40,
                       "slq_max_iterations": 128}) == "slq probe batch 1/2 iteration 40/128"
    assert where_text({"phase": "slq", "slq_iteration": 144, "slq_max_iterations": 512, "slq_resolved": False}) == \
        "slq iteration 144/512 (s* resolved: no)"
    assert where_text({"phase": "curve", "curve_point": 120, "curve_points": 200}) == "curve point 120/200"
    # Tune's reports carry every table column, None where a report has none: not an epoch
    assert where_text({"epoch": None, "train_loss": None, "curve_point": 3, "curve_points": 9}) == "curve point 3/9"
    assert where_text({"phase": "x", "status": "ok"}) is None


class Recorder:
    """A tracker that records its calls (what `sweeps.trackers` implements for real tools)."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def started(self, cell):
        self.calls.append(("started", cell.cell_id))

    def progress(self, cell, values):
        self.calls.append(("progress", cell.cell_id, dict(values)))

    def finished(self, cell, row):
        self.calls.append(("finished", cell.cell_id, row["status"]))

    def close(self):
        self.calls.append(("close",))


def test_lines_of_a_running_cell_are_throttled_per_cell_and_trackers_get_every_report() -> None:
    spec = build_spec({"name": "p", "model": "lenet300100", "dataset": "synthetic", "pruner": ["random/uniform"],
                       "sparsity": [0.5, 0.9], "seed": 0, "data": {"options": OPTIONS}})
    a, b = expand(spec)
    clock, out, rec = FakeClock(), io.StringIO(), Recorder()
    p = Progress(2, stream=out, clock=clock, tty=False, every=5.0, trackers=[rec])
    p.started(a)
    epoch = {"phase": "sparse", "epochs": 10, "train_loss": 0.5}
    for now, e in [(1.0, 0), (4.9, 1), (5.0, 2), (6.0, 3), (10.5, 4)]:
        clock.now = now
        p.cell_progress(a, {**epoch, "epoch": e})
    clock.now = 11.0
    p.started(b)
    clock.now = 12.0
    p.cell_progress(b, {**epoch, "epoch": 0})  # b has run 1 s: no line yet
    lines = out.getvalue().splitlines()
    assert lines == [f"  … {a.label}: sparse epoch 3/10 loss 0.5 (5s)", f"  … {a.label}: sparse epoch 5/10 loss 0.5 (10s)"]
    assert [c[0] for c in rec.calls] == ["started"] + ["progress"] * 5 + ["started", "progress"]
    p.finished(a, {"status": "ok", "test_acc": 0.5, "total_seconds": 11.0})
    p.close()
    assert rec.calls[-2:] == [("finished", a.cell_id, "ok"), ("close",)]


def test_the_serial_backend_prints_where_long_cells_are(tmp_path: Path) -> None:
    """A point cell with SLQ and a limit cell, every report shown (every = 0): epochs i/n with the
    loss, SLQ's probe batches and iterations, the curve's points; then each result line."""
    point = build_spec({"name": "pp", "storage": str(tmp_path), "model": "lenet300100", "dataset": "synthetic",
                        "pruner": ["random/uniform"], "sparsity": [0.5], "seed": 0, "data": {"options": OPTIONS},
                        "train": {"epochs": 2, "batch_size": 32},
                        "hessian": {"enabled": True, "models": "pruned", "probes": 2, "iterations": 4}})
    limit = build_spec({"name": "pl", "storage": str(tmp_path), "kind": "limit", "model": "lenet300100",
                        "dataset": "synthetic", "seed": 0, "data": {"options": OPTIONS},
                        "train": {"epochs": 2, "batch_size": 32}, "prune": {"lomp_l1": 1e-4, "limit_grid": [0.5, 0.9]},
                        "hessian": {"enabled": True, "probes": 2, "iterations": 4, "max_samples": 32}})
    text = {}
    for spec in (point, limit):
        cells = expand(spec)
        out = io.StringIO()
        progress = Progress(len(cells), stream=out, tty=False, every=0.0)
        progress.throttle_sources = 0.0
        summary = SerialBackend().run(cells, Where(storage=spec.storage), progress=progress)
        assert summary.ok
        text[spec.name] = out.getvalue()
    p, lim = text["pp"], text["pl"]
    assert "sparse epoch 1/2 loss " in p and "sparse epoch 2/2 loss " in p
    assert "… lenet300100/synthetic random/uniform s=0.5 seed=0: " in p
    assert "ok lenet300100/synthetic random/uniform s=0.5 seed=0" in p
    assert "lomp epoch 2/2 loss " in lim
    assert "… lenet300100/synthetic lomp seed=0: limit predicted " in lim
