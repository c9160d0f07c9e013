"""The trial pipeline on tiny synthetic data: values checked against independent recomputation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pruning import data as data_lib
from pruning import masks as masks_lib
from pruning import models
from pruning.train import evaluate
from sweeps import store
from sweeps import trial as trial_mod
from sweeps import trial_limit
from sweeps.dense_cache import DENSE_ITEM, DenseCache
from sweeps.cells import expand
from sweeps.spec import build_spec
from sweeps.trial import Where, run_cell
from analysis.load import read_arrow

OPTIONS = {"input_shape": [1, 4, 4], "num_classes": 3, "n_train": 96, "n_test": 48}


def cells(tmp_path, **raw):
    spec = build_spec({"name": "t", "model": "lenet300100", "dataset": "synthetic", "pruner": "dense",
                       "storage": str(tmp_path), "train": {"epochs": 2, "batch_size": 32, "lr": 0.05},
                       "data": {"options": OPTIONS}, **raw})
    return expand(spec)


def splits():
    return data_lib.load("synthetic", seed=0, **OPTIONS)


def dense_model(tmp_path, cell):
    """The cached dense checkpoint of `cell`, loaded into a fresh model (the oracle's start)."""
    cache = DenseCache(str(tmp_path))
    [key] = [p.name for p in (tmp_path / "_cache" / "dense").iterdir()]
    entry = cache.load(key, DENSE_ITEM)
    train, _ = splits()
    m = models.build(cell.model, input_shape=train.input_shape, num_classes=train.num_classes)
    m.load_state_dict(entry["state"])
    return m, entry, key


def test_dense_cell_row_matches_its_checkpoint(tmp_path):
    [cell] = cells(tmp_path)
    reports = []
    row = run_cell(cell, Where(str(tmp_path)), report=reports.append)
    assert row["status"] == "ok" and row["error"] is None
    assert row["direct_sparsity"] == 0.0 and row["effective_sparsity"] == 0.0
    assert row["n_prunable"] == 16 * 300 + 300 * 100 + 100 * 3
    m, entry, _ = dense_model(tmp_path, cell)
    _, test = splits()
    loss, acc = evaluate(m, test)
    assert row["test_acc"] == pytest.approx(acc, abs=1e-12) and row["test_loss"] == pytest.approx(loss, rel=1e-6)
    assert row["dense_test_acc"] == row["test_acc"]
    assert json.loads(row["config"])["seed"] == 0
    assert [(r["cell_id"], r["phase"], r["epoch"]) for r in reports] == [(cell.cell_id, "dense", 0),
                                                                         (cell.cell_id, "dense", 1)]
    assert reports[-1]["test_acc"] == row["test_acc"]
    stored = store.trial_row(str(tmp_path), "t", cell.cell_id)
    assert stored["test_acc"] == row["test_acc"] and stored["backend"] == "serial"
    assert stored["started_at"] <= stored["finished_at"]
    epochs = store.read_cell_table(str(tmp_path), "t", "epochs", cell.cell_id).to_pylist()
    assert [(e["phase"], e["epoch"]) for e in epochs] == [("dense", 0), ("dense", 1)]


def test_magnitude_cell_equals_pruning_the_cached_dense_model_by_hand(tmp_path):
    [cell] = cells(tmp_path, pruner="magnitude/global", sparsity=0.9, prune={"protocol": "none"})
    row = run_cell(cell, Where(str(tmp_path)))
    assert row["status"] == "ok", row["error"]
    m, entry, _ = dense_model(tmp_path, cell)
    # oracle: keep the 10% largest |w| over all prunable weights
    layers = masks_lib.prunable_layers(m)
    flat = torch.cat([mod.weight.detach().abs().flatten() for _, mod in layers])
    n = flat.numel()
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.topk(flat, n - round(0.9 * n)).indices] = True
    masks, start = {}, 0
    for name, mod in layers:
        masks[name] = keep[start:start + mod.weight.numel()].view_as(mod.weight)
        start += mod.weight.numel()
    masks_lib.apply_masks(m, masks)
    _, test = splits()
    _, acc = evaluate(m, test)
    assert row["test_acc"] == pytest.approx(acc, abs=1e-12)
    assert row["direct_sparsity"] == pytest.approx(round(0.9 * n) / n, abs=0)
    assert row["effective_sparsity"] >= row["direct_sparsity"]
    assert row["dense_test_acc"] == entry["metrics"]["test_acc"]
    layer_rows = store.read_cell_table(str(tmp_path), "t", "layers", cell.cell_id).to_pylist()
    assert [r["layer"] for r in layer_rows] == [name for name, _ in layers]
    kept = sum(r["n_weights"] * (1 - r["direct_sparsity"]) for r in layer_rows)
    assert kept == pytest.approx(n - round(0.9 * n))


def test_post_training_cells_train_the_dense_model_once(tmp_path):
    todo = cells(tmp_path, pruner=["dense", "magnitude/global", "lamp"], sparsity=[0.5, 0.8, 0.95],
                 prune={"protocol": "none"})
    assert len(todo) == 7
    for cell in todo:
        assert run_cell(cell, Where(str(tmp_path)))["status"] == "ok"
    [key] = [p.name for p in (tmp_path / "_cache" / "dense").iterdir()]
    assert DenseCache(str(tmp_path)).computations(key) == 1


def test_pruned_at_init_then_trained(tmp_path):
    [cell] = cells(tmp_path, pruner="random/uniform", sparsity=0.75)
    row = run_cell(cell, Where(str(tmp_path)))
    assert row["status"] == "ok", row["error"]
    assert row["direct_sparsity"] == pytest.approx(0.75, abs=1 / row["n_prunable"])
    layers = store.read_cell_table(str(tmp_path), "t", "layers", cell.cell_id).to_pylist()
    assert all(r["direct_sparsity"] == pytest.approx(0.75, abs=0.01) for r in layers)  # uniform quota
    epochs = store.read_cell_table(str(tmp_path), "t", "epochs", cell.cell_id).to_pylist()
    assert [e["phase"] for e in epochs] == ["sparse", "sparse"]
    assert not (tmp_path / "_cache").exists()  # no dense model was needed


def test_effective_target(tmp_path):
    [cell] = cells(tmp_path, pruner="random/uniform", sparsity=0.99, target="effective",
                   prune={"protocol": "none"})
    row = run_cell(cell, Where(str(tmp_path)))
    assert row["status"] == "ok", row["error"]
    assert row["effective_sparsity"] <= 0.99 + 1e-12
    assert row["direct_sparsity"] <= row["effective_sparsity"]


def test_finetune_protocol_runs_its_epochs(tmp_path):
    [cell] = cells(tmp_path, pruner="magnitude/global", sparsity=0.5,
                   prune={"protocol": "finetune", "finetune_epochs": 1})
    run_cell(cell, Where(str(tmp_path)))
    epochs = store.read_cell_table(str(tmp_path), "t", "epochs", cell.cell_id).to_pylist()
    assert [e["phase"] for e in epochs] == ["dense", "dense", "finetune"]


def test_imp_gets_training_and_the_initialization(tmp_path):
    [cell] = cells(tmp_path, pruner="imp", sparsity=0.5,  # rewind to the init: the run has 6 steps, not 1000
                   prune={"rounds": 2, "protocol": "none", "rewind_iteration": 0})
    row = run_cell(cell, Where(str(tmp_path)))
    assert row["status"] == "ok", row["error"]
    assert row["direct_sparsity"] == pytest.approx(0.5, abs=1 / row["n_prunable"])
    epochs = store.read_cell_table(str(tmp_path), "t", "epochs", cell.cell_id).to_pylist()
    assert [e["phase"] for e in epochs].count("sparse") == 2  # one retraining between the 2 rounds


def test_failure_is_recorded_in_one_line_and_retried(tmp_path, monkeypatch):
    [cell] = cells(tmp_path)

    def boom(st):
        raise RuntimeError("out of cheese\nsecond line")

    monkeypatch.setitem(trial_mod.STEPS, "obtain", boom)
    row = run_cell(cell, Where(str(tmp_path)))
    assert row["status"] == "failed" and row["error"] == "RuntimeError: out of cheese"
    stored = store.trial_row(str(tmp_path), "t", cell.cell_id)
    assert stored["error"] == "RuntimeError: out of cheese"
    assert not store.is_done(str(tmp_path), "t", cell.cell_id)


def test_divergence_is_a_result(tmp_path):
    huge = {**OPTIONS, "noise": 1e30}  # inputs near float32's limit: the loss turns NaN/inf
    [cell] = cells(tmp_path, pruner="random/uniform", sparsity=0.5, data={"options": huge})
    row = run_cell(cell, Where(str(tmp_path)))
    assert row["status"] == "diverged" and row["error"] is None
    assert row["direct_sparsity"] == pytest.approx(0.5, abs=1e-4)  # still measured
    assert store.is_done(str(tmp_path), "t", cell.cell_id)


def test_slq_of_dense_and_pruned_models(tmp_path):
    todo = cells(tmp_path, pruner=["magnitude/global"], sparsity=[0.5, 0.9], prune={"protocol": "none"},
                 hessian={"enabled": True, "models": "both", "probes": 2, "iterations": 4, "max_samples": 32})
    rows = [run_cell(c, Where(str(tmp_path))) for c in todo]
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    for cell, row in zip(todo, rows):
        assert row["hessian_model"] == "pruned" and row["slq_probes"] == 2 and row["slq_iterations"] == 4
        assert row["hessian_lambda_min"] <= row["hessian_lambda_max"]
        spectra = store.read_cell_table(str(tmp_path), "t", "spectra", cell.cell_id).to_pandas()
        assert set(spectra["hessian_model"]) == {"dense", "pruned"}
        sums = spectra.groupby(["hessian_model", "probe"])["weight"].sum()
        assert np.allclose(sums.to_numpy(), 1.0)
        # the pruned model's removed weights have vanishing Hessian rows: zero mass ≥ their share
        pruned = spectra[spectra.hessian_model == "pruned"]
        assert pruned["zero_mass"].iloc[0] >= cell.sparsity * row["n_prunable"] / row["n_params"] - 1e-9
    # the dense spectrum is computed once and shared by both cells
    _, _, key = dense_model(tmp_path, todo[0])
    cache = DenseCache(str(tmp_path))
    slq_items = [p.name for p in (tmp_path / "_cache" / "dense" / key).glob("slq-*.pt")]
    assert len(slq_items) == 1 and cache.computations(key, slq_items[0]) == 1
    a = store.read_cell_table(str(tmp_path), "t", "spectra", todo[0].cell_id).to_pandas()
    b = store.read_cell_table(str(tmp_path), "t", "spectra", todo[1].cell_id).to_pandas()
    cols = ["probe", "node_index", "node", "weight"]
    assert a[a.hessian_model == "dense"][cols].reset_index(drop=True).equals(
        b[b.hessian_model == "dense"][cols].reset_index(drop=True))


def test_slq_columns_equal_a_direct_slq_call(tmp_path):
    """The pipeline passes the right model, data subset, seed and settings to `pruning.slq.slq`."""
    from pruning.slq import slq

    [cell] = cells(tmp_path, hessian={"enabled": True, "models": "dense", "probes": 2, "iterations": 5,
                                      "max_samples": 50})
    row = run_cell(cell, Where(str(tmp_path)))
    assert row["status"] == "ok", row["error"]
    m, _, _ = dense_model(tmp_path, cell)
    train, _ = splits()
    x, y = train.tensors()
    direct = slq(m, torch.nn.functional.cross_entropy, [(x[:50], y[:50])], probes=2, iterations=5, seed=0)
    assert row["hessian_model"] == "dense"
    for k, v in direct.summary().items():
        assert row[k] == pytest.approx(v, rel=1e-6), k


def test_limit_cell_curve_prediction_and_actual_limit(tmp_path):
    from pruning import limit

    grid = [0.0, 0.3, 0.6, 0.9]
    spec = build_spec({"name": "t", "kind": "limit", "model": "lenet300100", "dataset": "synthetic",
                       "storage": str(tmp_path), "data": {"options": OPTIONS},
                       "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "weight_decay": 0.0},
                       "prune": {"lomp_l1": 1e-4, "limit_grid": grid, "limit_tolerance_pp": 5.0,
                                 "epsilon_source": "batch_loss_std"},  # the deterministic ε the oracle recomputes
                       "hessian": {"enabled": True, "models": "dense", "probes": 2, "iterations": 5,
                                   "max_samples": 64}})
    [cell] = expand(spec)
    assert cell.pruner == "lomp" and cell.sparsity is None
    row = run_cell(cell, Where(str(tmp_path)))
    assert row["status"] == "ok", row["error"]
    assert row["lomp_l1"] == 1e-4 and row["epsilon_source"] == "batch_loss_std"
    assert row["predicted_removed_frac"] + row["predicted_kept_frac"] == pytest.approx(1.0)
    assert 0.0 <= row["predicted_removed_frac"] <= 1.0
    assert row["band_kept_frac_low"] <= row["predicted_kept_frac"] <= row["band_kept_frac_high"]
    curve = store.read_cell_table(str(tmp_path), "t", "curves", cell.cell_id).to_pandas()
    assert curve["removed_frac"].tolist() == grid
    assert np.allclose(curve["removed_frac"] + curve["kept_frac"], 1.0)
    # oracle: the actual limits re-read from the stored curve by the two rules
    dense_acc = row["dense_test_acc"]
    strict = curve[curve.test_acc > dense_acc].removed_frac
    tol = curve[curve.test_acc >= dense_acc - 0.05 - 1e-12].removed_frac
    assert row["actual_removed_frac_strict"] == (strict.max() if len(strict) else 0.0)
    assert row["actual_removed_frac_tol"] == (tol.max() if len(tol) else 0.0)
    # the loss rule: training loss ≤ the dense training loss + ε (the same ε as the prediction)
    loss = curve[curve.train_loss <= curve.train_loss.iloc[0] + row["epsilon"]].removed_frac
    assert row["actual_removed_frac_loss"] == loss.max() and row["actual_kept_frac_loss"] == 1 - loss.max()
    assert curve.test_acc.iloc[0] == pytest.approx(dense_acc)  # removing nothing changes nothing
    # ε recomputed independently from the cached LOMP model
    m, entry, key = dense_model(tmp_path, cell)
    train, _ = splits()
    assert row["epsilon"] == pytest.approx(limit.batch_loss_std(m, train, batch_size=32), rel=1e-9)
    # the prediction recomputed from the cached LOMP model and its cached spectrum
    from sweeps.trial import slq_from_plain

    [slq_item] = [p.name for p in (tmp_path / "_cache" / "dense" / key).glob("slq-*.pt")]
    spectrum = slq_from_plain(DenseCache(str(tmp_path)).load(key, slq_item))
    again = limit.predict_limit(masks_lib.weights(m), spectrum, row["epsilon"], epsilon_source="batch_loss_std")
    assert row["predicted_removed_frac"] == again.removed_frac
    assert row["trace_bound_removed_frac"] == again.trace_bound_removed_frac
    assert row["predicted_removed_frac_authors"] == again.authors_removed_frac
    assert row["predicted_removed_frac_spread"] == again.removed_frac_spread
    assert row["slq_iterations"] == 5 and row["slq_max_iterations"] is None  # a fixed depth
    assert entry["metrics"]["test_acc"] == row["dense_test_acc"]
    epochs = store.read_cell_table(str(tmp_path), "t", "epochs", cell.cell_id).to_pylist()
    assert {e["phase"] for e in epochs} == {"lomp"}
    assert row["hessian_model"] == "dense" and row["zero_mass"] is not None
    _check_limit_extras(tmp_path, cell, row, m, curve, again)


def _check_limit_extras(tmp_path, cell, row, m, curve, prediction):
    """The cheap outputs of a limit cell, each recomputed from the cached LOMP model."""
    from pruning.limit_analyses import ALL_LAYERS
    from pruning.lomp import global_magnitude_masks
    from pruning.sparsity import effective_masks_from

    w = masks_lib.weights(m)

    def effective(s):  # oracle: the curve's own mask function, effective masks in float64
        eff = effective_masks_from(m, global_magnitude_masks(w, s))
        return masks_lib.direct_sparsity(eff)

    for s, e, c in zip(curve["removed_frac"], curve["effective_sparsity"], curve["effective_compression"]):
        assert e == pytest.approx(effective(s), abs=0) and e >= s - 1e-12
        assert c == pytest.approx(masks_lib.compression(e))
    assert row["predicted_effective_removed_frac"] == pytest.approx(effective(row["predicted_removed_frac"]), abs=0)
    for rule in ("strict", "tol", "loss"):
        assert row[f"actual_effective_removed_frac_{rule}"] == pytest.approx(effective(row[f"actual_removed_frac_{rule}"]))
    scaling = store.read_cell_table(str(tmp_path), "t", "scaling", cell.cell_id).to_pandas()
    assert scaling["factor"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert scaling["predicted_removed_frac"].iloc[0] == row["predicted_removed_frac"] == prediction.removed_frac
    hist = store.read_cell_table(str(tmp_path), "t", "weights", cell.cell_id).to_pandas()
    assert hist.groupby("layer")["count"].sum().to_dict() == {
        ALL_LAYERS: row["n_prunable"], **{name: v.numel() for name, v in w.items()}}
    flat = torch.cat([v.reshape(-1) for v in w.values()]).abs().double()
    small = int((flat < 1e-3).sum())                              # bins below log10 = -3 hold exactly these
    overall = hist[hist.layer == ALL_LAYERS]
    assert int(overall[overall.log10_high <= -3 + 1e-9]["count"].sum()) == small
    rounds = store.read_cell_table(str(tmp_path), "t", "rounds", cell.cell_id).to_pylist()
    assert len(rounds) == 1 and rounds[0]["round"] == 1
    for k in ("predicted_removed_frac", "actual_removed_frac_strict", "actual_removed_frac_tol",
              "actual_removed_frac_loss", "epsilon", "slq_iterations"):
        assert rounds[0][k] == row[k]
    assert store.read_cell_table(str(tmp_path), "t", "hessian_rows", cell.cell_id) is None  # off by default


def test_limit_cell_with_an_adaptive_lanczos_depth(tmp_path):
    """iterations: auto starts at the authors' depth (128), asks every 16 steps whether s* is
    resolved (reported as progress), stops there or at the cap; the spectrum it stored is that depth,
    and its cache entry is keyed by what the stopping rule reads (another tolerance: a new run)."""
    raw = {"name": "t", "kind": "limit", "model": "lenet300100", "dataset": "synthetic",
           "storage": str(tmp_path), "data": {"options": OPTIONS},
           "train": {"epochs": 2, "batch_size": 32, "lr": 0.05},
           "prune": {"lomp_l1": 1e-4, "limit_grid": [0.0, 0.5, 0.9]},
           "hessian": {"enabled": True, "models": "dense", "probes": 2, "max_iterations": 144, "max_samples": 32}}
    [cell] = expand(build_spec(raw))
    assert cell.hessian.iterations == "auto" and cell.hessian.max_iterations == 144
    reports = []
    row = run_cell(cell, Where(str(tmp_path)), report=reports.append)
    assert row["status"] == "ok", row["error"]
    checks = [r for r in reports if r.get("phase") == "slq"]
    depth = row["slq_iterations"]
    assert [c["slq_iteration"] for c in checks] == list(range(128, depth + 1, 16))[: len(checks)]
    assert depth in (128, 144) and row["slq_max_iterations"] == 144
    if depth < 144:  # stopped: the last check found s* resolved over the last quarter
        assert checks[-1]["slq_resolved"] is True and row["predicted_removed_frac_spread"] <= 0.01
    spectra = store.read_cell_table(str(tmp_path), "t", "spectra", cell.cell_id).to_pandas()
    assert spectra.groupby("probe")["node_index"].max().max() + 1 <= depth
    [done] = [r for r in reports if r.get("phase") == "limit"]
    assert done["predicted_removed_frac"] == row["predicted_removed_frac"] and done["slq_iterations"] == depth
    # the same model, another tolerance: the stopping rule differs, so its SLQ is not reused
    [strict] = expand(build_spec({**raw, "prune": {**raw["prune"], "resolution_tol": 1e-6}}))
    other = run_cell(strict, Where(str(tmp_path)))
    assert other["slq_iterations"] == 144 and other["hessian_seconds"] > 0  # never resolved to 1e-6
    key = DenseCache(str(tmp_path))
    assert len(list((tmp_path / "_cache" / "dense").rglob("slq-*.pt"))) == 2 and key is not None


def test_limit_rounds_and_hessian_rows(tmp_path, monkeypatch):
    """Round 1 is the single-round limit; each round's mask keeps only survivors of the previous one;
    the Hessian rows equal rows formed by autograd's double backward on the cached LOMP model."""
    grid = [0.0, 0.3, 0.6, 0.9]
    raw = {"name": "t", "kind": "limit", "model": "lenet300100", "dataset": "synthetic",
           "storage": str(tmp_path), "data": {"options": OPTIONS},
           "train": {"epochs": 2, "batch_size": 32, "lr": 0.05},
           "prune": {"lomp_l1": 1e-4, "limit_grid": grid, "limit_rounds": 3, "row_norm_quantiles": 6},
           "hessian": {"enabled": True, "models": "dense", "probes": 2, "iterations": 5, "max_samples": 64}}
    [cell] = expand(build_spec(raw))
    [single] = expand(build_spec({**raw, "prune": {"lomp_l1": 1e-4, "limit_grid": grid}}))
    calls = []
    real = trial_limit.next_round_masks

    def recording(weights, kept, removed_frac):
        out = real(weights, kept, removed_frac)
        calls.append(({k: v.clone() for k, v in kept.items()}, out, removed_frac))
        return out

    monkeypatch.setattr(trial_limit, "next_round_masks", recording)
    row = run_cell(cell, Where(str(tmp_path)))
    assert row["status"] == "ok", row["error"]
    one = run_cell(single, Where(str(tmp_path)))                # same LOMP model and SLQ from the cache
    rounds = store.read_cell_table(str(tmp_path), "t", "rounds", cell.cell_id).to_pylist()
    assert [r["round"] for r in rounds] == [1, 2, 3] and all(r["status"] == "ok" for r in rounds)
    assert rounds[0]["predicted_removed_frac"] == row["predicted_removed_frac"] == one["predicted_removed_frac"]
    assert rounds[0]["actual_removed_frac_tol"] == one["actual_removed_frac_tol"]
    assert rounds[0]["removed_frac_before"] == 0.0
    n = row["n_prunable"]
    assert len(calls) == 2
    for (kept, out, s), r_prev, r_next in zip(calls, rounds[:-1], rounds[1:]):
        assert s == r_prev["predicted_removed_frac"]
        assert all(not (out[k] & ~kept[k]).any() for k in kept)  # only survivors of the previous round
        removed = n - sum(int(v.sum()) for v in out.values())
        assert removed == max(math.ceil(round(s * n, 9)), n - sum(int(v.sum()) for v in kept.values()))
        assert r_next["removed_frac_before"] == pytest.approx(removed / n, abs=0)
        assert r_next["actual_removed_frac_tol"] >= r_next["removed_frac_before"]  # the round's model qualifies
    assert all(torch.equal(calls[1][0][k], calls[0][1][k]) for k in calls[0][1])  # the chain of masks
    epochs = store.read_cell_table(str(tmp_path), "t", "epochs", cell.cell_id).to_pandas()
    assert epochs["phase"].tolist() == ["lomp"] * 2 + ["round2"] * 2 + ["round3"] * 2
    # the trials row still describes the unpruned LOMP model
    assert row["direct_sparsity"] == 0.0 and row["test_acc"] == one["test_acc"]

    rows = store.read_cell_table(str(tmp_path), "t", "hessian_rows", cell.cell_id).to_pandas()
    assert len(rows) == 6 and rows["quantile"].tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0], abs=1e-4)
    m, _, _ = dense_model(tmp_path, cell)
    m.eval()
    train, _ = splits()
    x, y = train.tensors()
    params = [p for _, p in m.named_parameters()]
    loss = torch.nn.functional.cross_entropy(m(x[:64]), y[:64])
    grads = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, create_graph=True)])
    w = torch.cat([v.reshape(-1) for v in masks_lib.weights(m).values()]).abs()
    assert rows["abs_weight"].is_monotonic_increasing
    # parameter order of lenet300100: fc weights and biases interleaved; prunable i ↦ coordinate
    sizes = [(p.numel(), name.endswith("weight")) for name, p in m.named_parameters()]
    coords, start = [], 0
    for size, is_weight in sizes:
        if is_weight:
            coords.extend(range(start, start + size))
        start += size
    for r in rows.itertuples():
        i = coords[r.weight_index]
        assert r.abs_weight == pytest.approx(float(w[r.weight_index]))
        h_row = torch.cat([g.reshape(-1) for g in torch.autograd.grad(grads[i], params, retain_graph=True)])
        assert r.row_l1 == pytest.approx(float(h_row.abs().sum()), rel=1e-4, abs=1e-9)
        assert r.hessian_diag == pytest.approx(float(h_row[i]), rel=1e-4, abs=1e-9)


RACE = """
import sys
from sweeps.spec import load_spec
from sweeps.cells import expand
from sweeps.trial import Where, run_cell
cells = [c for c in expand(load_spec(sys.argv[1])) if c.sparsity == float(sys.argv[2])]
row = run_cell(cells[0], Where(sys.argv[3]))
assert row["status"] == "ok", row["error"]
"""


@pytest.mark.slow
def test_two_processes_racing_for_one_dense_model_train_it_once(tmp_path):
    """Two cells of a post-training pruner, in two processes at once, share one dense training."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    spec = tmp_path / "race.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "t", "model": "lenet300100", "dataset": "synthetic", "pruner": "magnitude/global",
        "sparsity": [0.5, 0.9], "data": {"options": OPTIONS}, "prune": {"protocol": "none"},
        "train": {"epochs": 6, "batch_size": 8, "lr": 0.05}}))
    env = {**os.environ, "PYTHONPATH": str(root)}
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(spec), s, str(tmp_path / "r")], cwd=root,
                              env=env, stderr=subprocess.PIPE, text=True) for s in ("0.5", "0.9")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    [key] = os.listdir(tmp_path / "r" / "_cache" / "dense")
    assert DenseCache(str(tmp_path / "r")).computations(key) == 1
    rows = [read_arrow("t", "trials", storage=str(tmp_path / "r"), use_cache=False).to_pylist()]
    assert len(rows[0]) == 2 and len({r["dense_test_acc"] for r in rows[0]}) == 1


def test_cells_on_an_object_store(tmp_path):
    """A pyarrow.fs URI as storage: tables and the dense cache live in the object store."""
    root = "mock:///bucket/results"
    todo = cells(tmp_path, storage=root, pruner="magnitude/global", sparsity=[0.5, 0.9],
                 prune={"protocol": "none"})
    for cell in todo:
        assert run_cell(cell, Where(root))["status"] == "ok"
        assert store.is_done(root, "t", cell.cell_id)
    assert read_arrow("t", "trials", storage=root, use_cache=False).num_rows == 2
    assert read_arrow("t", "layers", storage=root, use_cache=False).num_rows == 2 * 3
    loc = store.locate(root)
    import pyarrow.fs as pafs

    keys = [i.base_name for i in loc.fs.get_file_info(pafs.FileSelector(loc.join("_cache", "dense")))]
    assert len(keys) == 1 and DenseCache(root).computations(keys[0]) == 1
    assert not (tmp_path / "_cache").exists()
