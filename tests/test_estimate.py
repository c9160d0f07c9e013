"""`prunetune estimate`: the work it counts (against the trial's own loop counts and the dense
cache), its schedule, its refusals, its probe files, and — on a real small CPU sweep — that it lands
within ×2 of what the cells then record."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from pruning import data as data_lib
from pruning import models
from pruning.train import TrainConfig, train
from sweeps import store
from sweeps.cells import expand
from sweeps.cli import main
from sweeps.cost import Reserved
from sweeps.estimate import Probe, Sizes, data_key, estimate, measure, plan, schedule, training
from sweeps.spec import build_spec, load_spec

OPTIONS = {"input_shape": [1, 8, 8], "num_classes": 4, "n_train": 600, "n_test": 64}


def raw_spec(tmp_path: Path, **changes) -> dict:
    raw = {"name": "est", "storage": str(tmp_path / "results"), "model": "lenet300100", "dataset": "synthetic",
           "pruner": ["dense", "magnitude/global", "snip", "random/uniform"], "sparsity": [0.5, 0.9], "seed": [0, 1],
           "data": {"options": OPTIONS}, "train": {"epochs": 3, "batch_size": 32, "lr": 0.05},
           "prune": {"options": {"snip": {"batches": 2, "batch_size": 32}}}}
    raw.update(changes)
    return raw


def write_spec(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "est.yaml"
    path.write_text(yaml.safe_dump(raw_spec(tmp_path, **changes)))
    return path


SIZES = {data_key(c): Sizes(600, 64) for c in expand(build_spec(raw_spec(Path("/nonexistent"))))}


# ----------------------------------------------------------------------------- what it counts


def test_training_counts_the_steps_and_evaluations_train_runs() -> None:
    """The oracle: `pruning.train.train` itself, on data of the same size."""
    tr, te = data_lib.load("synthetic", **{**OPTIONS, "n_train": 100})
    cell = expand(build_spec(raw_spec(Path("/x"))))[0]
    for cfg in (TrainConfig(epochs=3, batch_size=32, eval_every=2), TrainConfig(iterations=7, batch_size=32),
                TrainConfig(epochs=2, batch_size=64, eval_every=0)):
        model = models.build("lenet300100", input_shape=tr.input_shape, num_classes=tr.num_classes)
        r = train(model, tr, te, cfg)
        evals = sum(1 for e in r.epochs if not math.isnan(e.get("test_acc", math.nan)))
        work = dict((u.kind, n) for u, n in training(cell, cfg, Sizes(len(tr), len(te)), masked=False))
        assert work == {"step": r.iterations, "eval": evals}, cfg


def test_the_dense_cache_trains_each_dense_model_once_and_done_cells_are_skipped(tmp_path) -> None:
    spec = build_spec(raw_spec(tmp_path))
    cells = expand(spec)
    assert len(cells) == 2 + 3 * 2 * 2  # dense once per seed
    work = plan(cells, SIZES, spec.storage)
    trains = [w for w in work if w.trains_dense]
    # the dense cell of each seed trains it (first in grid order); the 4 post-training cells per seed
    # (magnitude/global, and nothing else here) load it, the pruners at init need none
    assert [w.cell.pruner for w in trains] == ["dense", "dense"]
    assert len({w.trains_dense for w in trains}) == 2
    loads = [w for w in work if w.waits_for]
    assert sorted(w.cell.pruner for w in loads) == ["magnitude/global"] * 4
    steps = {w.cell.cell_id: sum(n for u, n in w.work if u.kind == "step") for w in work}
    per_run = 3 * math.ceil(600 / 32)
    for w in work:  # dense: one training; at init: one sparse training; post-training: a retraining (rewind)
        assert steps[w.cell.cell_id] == per_run, w.cell.pruner
    probe = Probe(units={u.key: 1.0 for w in work for u, _ in w.work}, data={k: {"n_train": 600, "n_test": 64}
                                                                          for k in SIZES})
    full = estimate(cells, storage=spec.storage, reserved=Reserved(1), slots=1, probe=probe)
    assert (full.pending, full.dense_trainings, full.dense_loads) == (14, 2, 4)
    # two cells done, and seed 0's dense model in the cache: those cells are not counted, and the
    # first cell of seed 0 that needs the dense model loads it instead of training it
    done = [c for c in cells if c.pruner == "dense" and c.seed == 0] + [cells[-1]]
    for c in done:
        store.write_cell(spec.storage, c.sweep, c.cell_id, {"trials": [{"cell_id": c.cell_id, "status": "ok"}]})
    from sweeps.dense_cache import DENSE_ITEM, DenseCache
    from sweeps.trial_common import dense_key

    DenseCache(spec.storage).save(dense_key(done[0]), DENSE_ITEM, {"x": torch.zeros(1)})
    left = estimate(cells, storage=spec.storage, reserved=Reserved(1), slots=1, probe=probe)
    assert (left.cells, left.done, left.pending) == (14, 2, 12)
    assert (left.dense_trainings, left.dense_loads) == (1, 4)
    assert set(left.per_cell_seconds) == {c.cell_id for c in cells} - {c.cell_id for c in done}
    assert left.cell_hours < full.cell_hours


def test_adaptive_slq_is_counted_at_its_cap_and_flagged_as_an_upper_bound(tmp_path) -> None:
    spec = build_spec(raw_spec(tmp_path, kind="limit", pruner="lomp", sparsity=None, seed=0,
                               prune={"lomp_l1": 1e-4, "limit_grid": [0.0, 0.5, 0.9]},
                               hessian={"enabled": True, "probes": 10, "max_iterations": 200, "max_samples": 64}))
    [cell] = expand(spec)
    assert cell.hessian.iterations == "auto"
    [w] = plan([cell], SIZES, spec.storage)
    hvp = sum(n for u, n in w.work if u.kind == "hvp")
    reorth = sum(n for u, n in w.work if u.kind == "reorth")
    assert hvp == 1 + 2 * 200                    # zero rows + 2 probe batches (8 + 2) × the cap
    assert reorth == 10 * 200 * 201 / 2          # every probe, k basis rows at step k, to the cap
    curve = [n for u, n in w.work if u.kind == "eval" and u.get("split") == "test"]
    assert 3 in curve                            # one test evaluation per curve point (0, 0.5, 0.9)
    probe = Probe(units={u.key: 0.01 for u, _ in w.work}, data={k: {"n_train": 600, "n_test": 64} for k in SIZES})
    est = estimate([cell], storage=spec.storage, reserved=Reserved(1), slots=1, probe=probe)
    assert est.upper_bound and any("upper bound" in n for n in est.notes)


def test_schedule_waits_for_a_dense_model_another_slot_is_training() -> None:
    # cell 0 trains dense model "a" for its first 10 s (of 12); cell 1 needs it and starts at once on
    # slot 2: it waits 10 s; cell 2 needs nothing
    wall, taken = schedule([12.0, 3.0, 4.0], 2, dense_ready=[("a", None, 10.0), (None, "a", 0.0), (None, None, 0.0)])
    assert taken == [12.0, 13.0, 4.0]
    assert wall == 16.0          # cell 2 runs after cell 0 on slot 1: 12 + 4
    wall, taken = schedule([12.0, 3.0, 4.0], 1, dense_ready=[("a", None, 10.0), (None, "a", 0.0), (None, None, 0.0)])
    assert taken == [12.0, 3.0, 4.0] and wall == 19.0
    wall, _ = schedule([1.0] * 4, 2, dense_ready=[(None, None, 0.0)] * 4, overhead=0.5)
    assert wall == 3.0


# ----------------------------------------------------------------------------- the command


def test_a_gpu_sweep_without_a_gpu_is_refused_unless_given_seconds(tmp_path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    spec = write_spec(tmp_path, resources={"cpus": 2, "gpus": 0.5}, backend="ray")
    assert main(["estimate", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: resources.gpus: 0.5 per cell, and this machine has no GPU")
    assert "--per-cell-seconds" in err[0] and "--probe" in err[0]
    assert main(["estimate", str(spec), "--per-cell-seconds", "90", "--slots", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cells"] == out["pending"] == 14 and out["slots"] == 4
    assert out["cpu_hours"] == pytest.approx(14 * 90 * 2 / 3600) and out["gpu_hours"] == pytest.approx(14 * 90 * 0.5 / 3600)
    assert out["wall_hours"] == pytest.approx(4 * (90 + 1.2) / 3600)  # 14 cells on 4 slots: 4 rounds, Ray's overhead
    assert "given" in out["measured"]
    assert main(["estimate", str(spec), "--per-cell-seconds", "-1"]) == 2
    assert main(["estimate", str(spec), "--per-cell-seconds", "5", "--probe", "x.json"]) == 2
    assert not (tmp_path / "results").exists()  # nothing started, nothing written


@pytest.mark.slow  # probes and then runs a 14-cell sweep (~1 minute on 2 loaded cores)
def test_estimate_lands_within_2x_of_what_the_cells_record(tmp_path, capsys) -> None:
    spec_path = write_spec(tmp_path, hessian={"enabled": True, "models": "pruned", "probes": 2, "iterations": 12,
                                              "max_samples": 128})
    assert main(["estimate", str(spec_path), "--json", "--save-probe", str(tmp_path / "probe.json")]) == 0
    est = json.loads(capsys.readouterr().out)
    assert {"cells", "cpu_hours", "gpu_hours", "wall_hours", "slots"} <= est.keys()
    assert est["cells"] == 14 and est["slots"] == 1 and est["gpu_hours"] == 0
    assert main(["run", str(spec_path)]) == 0
    spec = load_spec(spec_path)
    rows = {c.cell_id: store.trial_row(spec.storage, "est", c.cell_id) for c in expand(spec)}
    recorded = sum(r["total_seconds"] for r in rows.values())
    assert 0.5 <= est["cell_hours"] * 3600 / recorded <= 2.0, (est["cell_hours"] * 3600, recorded)
    assert 0.5 <= est["cpu_hours"] / sum(r["cpu_hours"] for r in rows.values()) <= 2.0
    # the probe file gives the same figures elsewhere (a GPU machine's probe, used on a laptop)...
    fresh = tmp_path / "elsewhere"
    assert main(["estimate", str(spec_path), "--storage", str(fresh), "--probe", str(tmp_path / "probe.json"),
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cpu_hours"] == pytest.approx(est["cpu_hours"], rel=1e-9)
    # ...and now that the sweep is done, nothing is left to cost
    assert main(["estimate", str(spec_path), "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert (after["done"], after["pending"], after["cpu_hours"]) == (14, 0, 0.0)


def test_a_probe_file_that_lacks_a_unit_is_refused(tmp_path, capsys) -> None:
    spec = build_spec(raw_spec(tmp_path, pruner=["dense"], seed=0))
    probe = measure(expand(spec), storage=spec.storage)
    assert set(k.split(":", 1)[0] for k in probe.units) == {"overhead", "step", "eval"}
    path = tmp_path / "probe.json"
    path.write_text(json.dumps({**probe.to_json(), "units": {}}))
    assert main(["estimate", str(write_spec(tmp_path, pruner=["dense"], seed=0)), "--probe", str(path)]) == 2
    assert "unit(s) of this sweep were not measured (first: " in capsys.readouterr().err
    path.write_text("{}")
    assert main(["estimate", str(write_spec(tmp_path, pruner=["dense"], seed=0)), "--probe", str(path)]) == 2
    assert "not a probe file of this version" in capsys.readouterr().err
