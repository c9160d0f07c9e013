"""`prunetune validate` is one promise: whatever `run` would refuse before its first cell, validate
refuses, with one line naming the field, the value and what is allowed — asked of the same rules.

A table of malformed specs (each refused with its line), then a property test: random specs drawn
from the declared schema (sections, pruner options, loader options), valid and not; whatever
validates must get through the configuration stage of a cell — data with its options, the model,
the training config, the pruner with its options — and one training step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from pruning import data as data_lib
from pruning import models
from pruning.options import hints
from pruning.pruners import PRUNERS, prune
from pruning.train import train
from sweeps.cells import expand
from sweeps.cli import main
from sweeps.sections import BACKENDS
from sweeps.spec import SpecError, build_spec

SYNTHETIC = {"input_shape": [1, 4, 4], "num_classes": 3, "n_train": 300, "n_test": 24}  # GraSP: 100 per class
BASE = {"name": "v", "model": "lenet300100", "dataset": "synthetic", "data": {"options": SYNTHETIC},
        "pruner": ["snip", "grasp", "synflow"], "sparsity": 0.5}

# (id, changes to BASE, extra flags, a line validate must print)
MALFORMED = [
    ("rounds_string", {"prune": {"options": {"rounds": "ten"}}},
     [], "prune.options.rounds: 'ten'; expected an integer ≥ 1 (pruner 'synflow')"),
    ("rounds_fraction", {"prune": {"rounds": 2.5}}, [], "prune.rounds: 2.5; expected null or an integer ≥ 1"),
    ("batches_negative", {"prune": {"options": {"batches": -3}}},
     [], "prune.options.batches: -3; expected an integer ≥ 1 (pruners 'snip', 'grasp')"),
    ("scoped_batch_size_string", {"prune": {"options": {"snip": {"batch_size": "x"}}}},
     [], "prune.options.snip.batch_size: 'x'; expected an integer ≥ 1 (pruner 'snip')"),
    ("temperature_negative", {"prune": {"options": {"temperature": -5}}},
     [], "prune.options.temperature: -5; expected a number > 0 (pruner 'grasp')"),
    ("temperature_infinite", {"prune": {"options": {"grasp": {"temperature": float("inf")}}}},
     [], "prune.options.grasp.temperature: inf; expected a number > 0 (pruner 'grasp')"),
    ("boolean_as_string", {"prune": {"options": {"grasp": {"balanced": "false"}}}},
     [], "prune.options.grasp.balanced: 'false'; expected true or false (pruner 'grasp')"),
    ("grasp_batch_size_with_balanced", {"prune": {"options": {"batch_size": 64}}},
     [], "prune.options.batch_size: 64; balanced batches hold samples_per_class images of each class"),
    ("grasp_balanced_needs_samples", {"data": {"options": {**SYNTHETIC, "n_train": 48}}},
     [], "grasp's balanced batches need batches × samples_per_class = 10 × 10 = 100 training samples of every "
     "class, and dataset 'synthetic' has 16 of its rarest"),
    ("option_nobody_takes", {"prune": {"options": {"rate": 0.5}}},
     [], "prune.options.rate: taken by none of the pruners"),
    ("unknown_scoped_option", {"prune": {"options": {"snip": {"rounds": 3}}}},
     [], "prune.options.snip: unknown option 'rounds'; allowed: batches, batch_size"),
    ("imp_rate", {"pruner": "imp", "prune": {"options": {"imp": {"rate": 1.5}}, "rewind_iteration": 0}},
     [], "prune.options.imp.rate: 1.5; expected a number > 0 and < 1 (pruner 'imp')"),
    ("rare_gems_no_round", {"pruner": "rare_gems", "prune": {"options": {"rare_gems": {"epochs": 3}}}},
     [], "prune.options.rare_gems.epochs: 3; expected at least iter_period + 1 = 6 (one pruning round)"),
    ("gpus_fraction_above_one_on_ray", {"resources": {"gpus": 1.5}},
     ["--backend", "ray", "--address", "ray://head:10001"], "resources.gpus: 1.5; Ray takes fractions below 1 or whole GPUs"),
    ("gpus_on_a_machine_without", {"resources": {"gpus": 1}},
     [], "resources.gpus: 1.0 requested but this machine has no GPU"),
    ("local_ray_too_small", {"resources": {"cpus": 2}, "hessian": {"enabled": True, "workers": 2}},
     ["--backend", "ray", "--num-cpus", "4"], "resources.cpus: each trial needs 6 CPU(s) (2 × 3 bundles) but the local Ray has 4"),
    ("ray_flag_out_of_range", {}, ["--backend", "ray", "--num-cpus", "0"], "--num-cpus: 0.0; expected null or a number > 0"),
    ("ray_flag_on_serial", {}, ["--max-concurrent", "2"], "--max-concurrent: only for the Ray backend"),
    ("hessian_iterations", {"hessian": {"iterations": 1}}, [], "hessian.iterations: 1; expected null or an integer ≥ 2"),
    ("hessian_models", {"hessian": {"models": "all"}}, [], "hessian.models: 'all'; expected one of 'dense', 'pruned', 'both'"),
    ("nesterov_without_momentum", {"train": {"nesterov": True, "momentum": 0}},
     [], "train.nesterov: true; Nesterov momentum needs momentum > 0"),
    ("lr_string", {"train": {"lr": "fast"}}, [], "train.lr: 'fast'; expected a number ≥ 0"),
    ("milestones_negative", {"train": {"milestones": [5, -1]}}, [], "train.milestones: [5, -1]; expected a list of integers ≥ 0"),
    ("data_option_type", {"data": {"options": {**SYNTHETIC, "n_train": "many"}}},
     [], "data.options.n_train: 'many'; expected an integer ≥ 1 (dataset 'synthetic')"),
    ("data_option_shape", {"data": {"options": {**SYNTHETIC, "input_shape": [1, 4]}}},
     [], "data.options.input_shape: [1, 4]; expected a list of 3 integers ≥ 1 (dataset 'synthetic')"),
    ("digits_test_size", {"dataset": "digits", "data": {"options": {"test_size": 5}}},
     [], "data.options.test_size: 5; expected an integer ≥ 10 and ≤ 1787 (dataset 'digits')"),
    ("limit_grid_range", {"kind": "limit", "model": "fc5", "pruner": "lomp", "sparsity": None,
                          "hessian": {"enabled": True}, "prune": {"limit_grid": [0.5, 1.0]}},
     [], "prune.limit_grid: [0.5, 1.0]; expected a list of numbers ≥ 0 and < 1"),
    ("seed_fraction", {"seed": [0, 1.5]}, [], "seed: 1.5; expected an integer"),
    ("model_variant", {"model_variant": "tiny"}, [], "model_variant: 'tiny'; choose from default, authors"),
    ("backend_unknown", {"backend": "slurm"}, [], "backend: 'slurm'; choose from serial, ray"),
    ("section_not_a_mapping", {"hessian": [1, 2]}, [], "hessian: expected a mapping of enabled, probes"),
    ("epsilon_zero", {"prune": {"epsilon": 0}}, [], "prune.epsilon: 0; expected null or a number > 0"),
]


@pytest.mark.parametrize("changes,flags,line", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_a_malformed_spec_is_refused_with_its_line(changes, flags, line, tmp_path, capsys, monkeypatch):
    if "GPU" in line and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("PRUNETUNE_STORAGE", str(tmp_path / "results"))
    raw = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path), *flags]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert any(line in x for x in lines), err
    assert all(x.startswith("error: ") for x in lines) and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_validate_and_run_refuse_alike(tmp_path, capsys, monkeypatch):
    """`run` refuses each malformed spec before anything starts, with the lines `validate` prints."""
    monkeypatch.setenv("PRUNETUNE_STORAGE", str(tmp_path / "results"))
    for name, changes, flags, _ in MALFORMED:
        if flags and "--address" in flags:
            continue  # run would connect to the cluster; validate connects to nothing
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in {**BASE, **changes}.items() if v is not None}))
        assert main(["validate", str(path), *flags]) == 2
        said = capsys.readouterr().err
        assert main(["run", str(path), *flags]) == 2
        assert capsys.readouterr().err == said, name
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------- the property


def junk() -> st.SearchStrategy:
    return st.one_of(st.text(max_size=3), st.floats(allow_nan=True), st.integers(-5, 5), st.booleans(),
                     st.none(), st.lists(st.integers(-1, 3), max_size=3))


def mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """`valid` 19 times in 20, junk otherwise: most specs validate, every field is sometimes wrong."""
    return st.sampled_from([*[False] * 19, True]).flatmap(lambda wrong: junk() if wrong else valid)


def small(option: str) -> st.SearchStrategy:
    """Valid-looking values, small where a value is a cost (rounds, epochs, batches)."""
    return {"rounds": st.integers(1, 3), "batches": st.integers(1, 2), "batch_size": st.integers(1, 16),
            "samples_per_class": st.integers(1, 3), "epochs": st.integers(2, 4), "iter_period": st.integers(1, 2),
            "temperature": st.floats(0.5, 300), "rate": st.floats(0.1, 0.9), "balanced": st.booleans(), "reinit": st.booleans(), "bias": st.booleans(),
            "lr": st.floats(0, 0.5), "momentum": st.floats(0, 0.99), "score_l2": st.floats(0, 1e-3)}[option]


PRUNER_POOL = ["dense", "random/uniform", "random/igq", "random/snip", "magnitude/global", "lamp", "snip",
               "snip/iterative", "grasp", "synflow", "imp", "rare_gems"]


@st.composite
def specs(draw) -> dict:
    """A spec from the declared schema: each field valid (mostly) or junk (sometimes)."""
    pruner = draw(st.lists(st.sampled_from(PRUNER_POOL), min_size=1, max_size=2, unique=True))
    options = {}
    for p in pruner:
        scoped = {f.name: draw(mostly(small(f.name))) for f in dataclasses.fields(PRUNERS[p].options)
                  if draw(st.booleans())}
        if scoped:
            options[p] = scoped
    shape = st.tuples(st.integers(1, 2), st.integers(1, 20), st.integers(1, 20)).map(list)
    data_options = {"input_shape": draw(mostly(shape)), "num_classes": draw(mostly(st.integers(2, 4))),
                    "n_train": draw(mostly(st.integers(8, 40))), "n_test": draw(mostly(st.integers(1, 10)))}
    trainer = {"batch_size": draw(mostly(st.integers(1, 32))), "lr": draw(mostly(st.floats(0, 1))),
               "momentum": draw(mostly(st.floats(0, 0.99))), "nesterov": draw(mostly(st.booleans())),
               "schedule": draw(mostly(st.sampled_from(["constant", "multistep", "cosine"]))),
               "milestones": draw(mostly(st.lists(st.integers(0, 3), max_size=2))),
               "warmup": draw(mostly(st.integers(0, 3))), "decay": draw(mostly(st.sampled_from(["all", "kernels"]))),
               "step_unit": draw(mostly(st.sampled_from(["epoch", "iteration"])))}
    return {"name": "p", "storage": "/tmp/prunetune-property", "dataset": "synthetic", "pruner": pruner,
            "model": draw(mostly(st.sampled_from(["lenet300100", "fc5", "lenet300100", "fc5", "lenet5"]))),
            "sparsity": draw(mostly(st.sampled_from([0.5, 0.9]))), "seed": draw(mostly(st.integers(0, 3))),
            "target": draw(mostly(st.sampled_from(["direct", "effective"]))),
            "train": trainer, "prune": {"options": options, "rewind_iteration": 0 if "imp" in pruner else None},
            "data": {"options": data_options}, "resources": {"cpus": draw(mostly(st.floats(0.5, 2)))},
            "backend": draw(mostly(st.sampled_from(BACKENDS)))}


def validates(raw: dict) -> bool:
    try:
        build_spec(raw)
    except SpecError:
        return False
    return True


def test_the_property_is_not_vacuous():
    """The strategy reaches valid specs that set pruner options, and refused ones."""
    quick = settings(max_examples=500, database=None, phases=[Phase.generate])  # the first found, unshrunk
    find(specs(), lambda raw: bool(raw["prune"]["options"]) and validates(raw), settings=quick)
    find(specs(), lambda raw: not validates(raw), settings=quick)


def configure_and_step(cell) -> None:
    """The configuration stage of a cell, as the trial runs it, with one optimizer step of training."""
    tr, te = data_lib.load(cell.dataset, **cell.data)
    model = models.build(cell.model, input_shape=tr.input_shape, num_classes=tr.num_classes,
                         variant=cell.model_variant)
    one_step = dataclasses.replace(cell.train, iterations=1, eval_every=0)
    if cell.pruner != "dense":
        extra = {}
        if cell.pruner == "imp":
            extra = {"train_fn": lambda m: train(m, tr, None, one_step, seed=cell.seed),
                     "rewind_state": {k: v.clone() for k, v in model.state_dict().items()}}
        data = tr if PRUNERS[cell.pruner].needs_data else None
        prune(model, cell.pruner, cell.sparsity, target=cell.target, data=data, seed=cell.seed,
              **cell.prune.options, **extra)
    result = train(model, tr, te, one_step, seed=cell.seed)
    assert result.iterations == 1


@settings(suppress_health_check=[HealthCheck.too_slow])  # examples: the profile (tests/conftest.py)
@given(specs())
def test_whatever_validates_gets_through_the_configuration_stage(raw):
    try:
        spec = build_spec(raw)
    except SpecError as e:  # refused: every problem one line, nothing else raised
        assert e.problems and all("\n" not in p for p in e.problems)
        return
    cells = expand(spec)
    assert cells
    torch.set_num_threads(1)
    for cell in cells[:2]:
        configure_and_step(cell)


def test_schema_covers_every_option():
    """Each pruner option and section field has a type the property draws from (a new kind of
    type needs a strategy above) and help text."""
    for info in PRUNERS.values():
        for f in dataclasses.fields(info.options):
            assert f.metadata.get("help"), (info.name, f.name)
            assert hints(info.options)[f.name] is not None
            small(f.name)  # a strategy exists


def test_packaged_configs_say_which_backend_checks_they_need():
    """The GPU configs are refused by a plain `validate` on a CPU machine, as `run` would refuse them."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    configs = Path(__file__).resolve().parents[1] / "sweeps" / "configs"
    assert main(["validate", str(configs / "pruning_limit.yaml")]) == 2
