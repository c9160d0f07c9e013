"""Spec features that shape cells: grids, options scoped to a pruner, model variants, LOMP's recipe
resolved into the cell, limit-cell defaults, uniform+ on MLPs, IMP's late rewinding."""

import pytest
import torch
import yaml

from pruning import data as data_lib
from pruning import models
from pruning.lomp import limit_iterations
from pruning.train import seed_everything, train
from sweeps.dense_cache import DenseCache
from sweeps.cells import expand
from sweeps.spec import SpecError, build_spec, dump_yaml
from sweeps.trial import Where, run_cell


def spec(**raw):
    return build_spec({"name": "f", "model": "lenet300100", "dataset": "digits", "storage": "/tmp", **raw})


def problems(**raw) -> list[str]:
    with pytest.raises(SpecError) as e:
        spec(**raw)
    return e.value.problems


# ----------------------------------------------------------------------------- grids


def test_grids_are_a_union_over_the_top_level():
    s = spec(pruner=["dense", "random/igq"], sparsity=[0.5, 0.9], seed=[0, 1],
             train={"epochs": 3, "lr": 0.05},
             grids=[{}, {"pruner": ["random/igq"], "target": "effective", "train": {"epochs": 7}},
                    {"model_dataset": [["lenet5", "cifar10"]], "pruner": ["random/uniform_plus"]}])
    cells = expand(s)
    assert len(cells) == (2 + 4) + 4 + 4  # dense ×2 seeds + igq ×4; effective igq ×4; lenet5 ×4
    effective = [c for c in cells if c.target == "effective"]
    assert {c.train.epochs for c in effective} == {7} and {c.train.lr for c in effective} == {0.05}
    assert {(c.model, c.dataset) for c in cells if c.pruner == "random/uniform_plus"} == {("lenet5", "cifar10")}
    # the stored spec.yaml rebuilds exactly these cells
    again = build_spec(yaml.safe_load(dump_yaml(s)), storage="/tmp")
    assert [c.cell_id for c in expand(again)] == [c.cell_id for c in cells]


def test_a_grid_identical_to_the_top_level_adds_no_cell():
    plain = spec(pruner=["random/igq"], sparsity=0.9)
    twice = spec(pruner=["random/igq"], sparsity=0.9, grids=[{}, {}])
    assert [c.cell_id for c in expand(twice)] == [c.cell_id for c in expand(plain)]


def test_grid_problems_name_their_grid_and_sweep_wide_keys_stay_on_top():
    got = problems(pruner="dense", grids=[{"storage": "/x"}, {"pruner": ["nope"]}, {"train": {"lr": -1}}])
    assert "grids[0].storage: sweep-wide; set it at the top level" in got
    assert any(p.startswith("grids[1]: pruner: unknown 'nope'") for p in got)
    assert any(p.startswith("grids[2]: train") and "lr" in p for p in got)
    assert problems(pruner="dense", grids=[]) == [
        "grids: expected a non-empty list of mappings (each overrides the top level), got []"]


# ----------------------------------------------------------------------------- scoped options


def test_options_scoped_to_a_pruner_reach_it_and_its_delegates_only():
    s = spec(pruner=["snip", "random/snip", "grasp", "snip/iterative"], sparsity=0.9,
             prune={"options": {"batches": 4, "snip": {"batch_size": 100}, "snip/iterative": {"rounds": 7}}})
    opts = {c.pruner: dict(c.prune.options) for c in expand(s)}
    assert opts["snip"] == {"batches": 4, "batch_size": 100}
    assert opts["random/snip"] == {"batches": 4, "batch_size": 100}  # random/snip hands options to snip
    assert opts["grasp"]["batches"] == 4 and opts["grasp"]["batch_size"] is None  # not scoped to grasp
    assert opts["snip/iterative"] == {"rounds": 7, "batch_size": 128}
    got = problems(pruner="snip", sparsity=0.9, prune={"options": {"snip": {"rounds": 3}}})
    assert got == ["prune.options.snip: unknown option 'rounds'; allowed: batches, batch_size"]


# ----------------------------------------------------------------------------- models and recipes


def test_uniform_plus_is_refused_on_an_mlp_and_kept_on_a_conv_net():
    got = problems(pruner=["random/uniform_plus", "magnitude/uniform_plus"], sparsity=0.9)
    assert len(got) == 2 and all("defined for convolutional networks only" in p for p in got)
    assert got[0].startswith("pruner: 'random/uniform_plus' on model 'lenet300100': quota 'uniform_plus'")
    conv = build_spec({"name": "f", "model": "lenet5", "dataset": "cifar10", "storage": "/tmp",
                       "pruner": "random/uniform_plus", "sparsity": 0.9})
    assert len(expand(conv)) == 1


def test_model_variant_is_validated_recorded_and_hashed():
    assert problems(pruner="dense", model_variant="keras") == [
        "model_variant: 'keras'; choose from default, authors"]
    got = problems(model="lenet5", dataset="cifar10", pruner="dense", model_variant="authors",
                   grids=[{}, {"model_dataset": [["vgg16", "cifar10"]]}])
    assert len(got) == 1 and got[0].startswith("grids[1]: model/dataset: 'vgg16' on 'cifar10'")
    [plain], [authors] = expand(spec(pruner="dense")), expand(spec(pruner="dense", model_variant="authors"))
    assert authors.model_variant == "authors" and authors.cell_id != plain.cell_id


def test_lomp_cells_carry_lomps_recipe_in_their_train_section():
    [lomp, mag] = expand(spec(pruner=["lomp", "magnitude/global"], sparsity=0.9, prune={"lomp_l1": 0.0},
                              train={"weight_decay": 5e-4, "momentum": 0.5}))
    # λ = 0 still trains as LOMP does (no weight decay, momentum 0.9), over every parameter
    assert (lomp.train.l1, lomp.train.weight_decay, lomp.train.momentum, lomp.train.l1_scope) == (0.0, 0.0, 0.9, "all")
    assert (mag.train.weight_decay, mag.train.momentum) == (5e-4, 0.5)
    [prunable] = expand(spec(pruner="lomp", sparsity=0.9, prune={"lomp_l1": 1e-4, "l1_scope": "prunable"}))
    assert prunable.train.l1_scope == "prunable"


def test_limit_cells_default_to_an_adaptive_lanczos_depth_and_the_authors_measurement():
    """Limit cells grow their Lanczos run until s* is resolved (`auto`, from the authors' depth —
    128, AlexNet 96 — to the cap of 512); a fixed integer keeps its behaviour and its id."""
    raw = {"name": "l", "kind": "limit", "storage": "/tmp", "hessian": {"enabled": True}}
    cells = expand(build_spec({**raw, "model_dataset": [["fc5", "cifar10"], ["alexnet224", "cifar10"]]}))
    assert {c.model: (c.hessian.iterations, c.hessian.max_iterations) for c in cells} == {
        "fc5": ("auto", 512), "alexnet224": ("auto", 512)}
    assert {c.model: limit_iterations(c.model) for c in cells} == {"fc5": 128, "alexnet224": 96}
    assert cells[0].prune.resolution_tol == 0.01
    # the cap and the tolerance are part of an auto cell; a fixed depth has no cap (and its old id)
    [capped] = expand(build_spec({**raw, "model_dataset": [["fc5", "cifar10"]], "hessian": {"enabled": True,
                                  "max_iterations": 256}, "prune": {"resolution_tol": 0.02}}))
    assert capped.hessian.max_iterations == 256 and capped.prune.resolution_tol == 0.02
    assert capped.cell_id != cells[0].cell_id
    [fixed] = expand(build_spec({**raw, "model_dataset": [["fc5", "cifar10"]],
                                 "hessian": {"enabled": True, "iterations": 128}}))
    assert fixed.hessian.max_iterations is None and "max_iterations" not in fixed.config()["hessian"]
    assert fixed.cell_id not in {c.cell_id for c in cells}
    # auto is for limit cells only; the cap and the tolerance are checked
    point = {"name": "p", "model": "lenet300100", "dataset": "digits", "storage": "/tmp", "pruner": "dense"}
    for bad, line in (({"hessian": {"enabled": True, "iterations": "auto"}}, "hessian.iterations: auto grows"),
                      ({"hessian": {"enabled": True, "max_iterations": 1}}, "hessian.max_iterations: 1"),
                      ({"prune": {"resolution_tol": 0}}, "prune.resolution_tol: 0")):
        with pytest.raises(SpecError, match=line):
            build_spec({**point, **bad})
    c = cells[0]
    assert c.prune.epsilon_source == "batch_loss_std_authors" and c.prune.zero_tol is None
    assert c.prune.limit_grid[0] == 0.0 and len(c.prune.limit_grid) == 200
    [given] = expand(build_spec({**raw, "model_dataset": [["fc5", "cifar10"]], "prune": {"epsilon": 0.01},
                                 "hessian": {"enabled": True, "iterations": 40}}))
    assert given.prune.epsilon_source == "given" and given.hessian.iterations == 40


# ----------------------------------------------------------------------------- IMP late rewinding

OPTIONS = {"input_shape": [1, 4, 4], "num_classes": 3, "n_train": 96, "n_test": 48}


def test_imp_rewind_iteration_defaults_and_validation():
    [imp] = expand(spec(pruner="imp", sparsity=0.5, train={"iterations": 1000}))
    assert imp.prune.rewind_iteration == 1000  # the Rare Gems baselines' default
    [vgg] = expand(build_spec({"name": "f", "model": "vgg16", "dataset": "cifar10", "storage": "/tmp",
                               "pruner": "imp", "sparsity": 0.5}))  # 10 epochs of 391 steps
    assert vgg.prune.rewind_iteration == 2000
    # beyond the dense run: refused up front (digits: 10 epochs × ⌈1,437/128⌉ = 120 steps)
    assert problems(pruner="imp", sparsity=0.5) == [
        "prune.rewind_iteration: the default rewind_iteration 1000 lies beyond the 120 optimizer steps of "
        "the dense run of 'lenet300100' on 'digits'; set prune.rewind_iteration ≤ 120 (0 rewinds to the "
        "initialization)"]
    assert expand(spec(pruner="imp", sparsity=0.5, prune={"rewind_iteration": 120}))[0].prune.rewind_iteration == 120
    assert problems(pruner="snip", sparsity=0.5, prune={"rewind_iteration": 5}) == [
        "prune.rewind_iteration: 5 is used by imp only, and the sweep's pruners are ['snip']"]


def test_imp_rewinds_survivors_to_the_dense_runs_weights_at_step_k(tmp_path):
    s = build_spec({"name": "r", "model": "lenet300100", "dataset": "synthetic", "storage": str(tmp_path),
                    "data": {"options": OPTIONS}, "pruner": "imp", "sparsity": 0.36,
                    "train": {"epochs": 2, "batch_size": 32, "lr": 0.05},
                    "prune": {"rewind_iteration": 4, "rounds": 2, "protocol": "rewind"}})
    [cell] = expand(s)
    row = run_cell(cell, Where(str(tmp_path)))
    assert row["status"] == "ok", row["error"]
    # oracle: an independent seeded run of the same training, copied after optimizer step 4
    train_split, _ = data_lib.load("synthetic", **OPTIONS)
    seed_everything(0)  # as the trial's model step: the cell's seeded initialization
    net = models.build("lenet300100", input_shape=train_split.input_shape, num_classes=3)
    snapshot = train(net, train_split, None, cell.train, seed=0, snapshot_at=4).snapshot
    cache = DenseCache(str(tmp_path))
    [key] = cache_keys(tmp_path)
    stored = cache.load(key, "rewind-4.pt")["state"]
    assert stored.keys() == snapshot.keys()
    assert all(torch.equal(stored[k], snapshot[k].cpu()) for k in snapshot)


def cache_keys(root):
    return sorted(p.name for p in (root / "_cache" / "dense").iterdir() if p.is_dir())


def test_a_storage_uri_with_credentials_is_refused_at_validation():
    got = problems(pruner="dense", storage="s3://AKIA:secret@bucket/results")
    assert len(got) == 1 and got[0].startswith("storage: the URI carries credentials (user:secret@ in the URI)")
