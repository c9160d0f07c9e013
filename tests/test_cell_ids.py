"""The cell-id contract: a `cell_id` names exactly one computation.

- the table of original defaults (`sweeps.defaults`) is append-only and covers every hashed field;
- changing a field's *current* default changes the ids of exactly the cells that use it;
- every setting the trial uses comes from the cell (a non-default value reaches the row);
- the ids of the packaged configs are those of every earlier version (fixtures below).
"""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

import sweeps.sections as spec_mod
from pruning.data import DATASETS
from pruning.options import option
from pruning.pruners import PRUNERS
from pruning.pruners.synflow import SynflowOptions
from pruning.train import TrainConfig
from sweeps import store
from sweeps.cells import LimitPrune, PointPrune, SLQSettings, expand
from sweeps.defaults import ORIGINAL_DEFAULTS, MissingDefault, original
from sweeps.sections import HessianSection
from sweeps.spec import build_spec, load_spec
from sweeps.trial import Where, run_cell

CONFIGS = Path(__file__).resolve().parents[1] / "sweeps" / "configs"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# A frozen copy of the table as of each entry's introduction. Entries may be appended to both;
# removing or altering one fails below (an id would silently change what it computes).
FROZEN = json.loads((FIXTURES / "original_defaults.json").read_text())


def test_original_defaults_are_append_only():
    table = json.loads(json.dumps(ORIGINAL_DEFAULTS))  # the JSON form the hash compares with
    removed = sorted(set(FROZEN) - set(table))
    assert not removed, f"entries removed from sweeps/defaults.py: {removed}"
    altered = sorted(k for k in FROZEN if table[k] != FROZEN[k])
    assert not altered, f"entries altered in sweeps/defaults.py: {altered}"
    added = sorted(set(table) - set(FROZEN))
    assert not added, f"append {added} to tests/fixtures/original_defaults.json as well"


def hashed_fields() -> set[str]:
    """Every field a cell id can hash, from the typed sections and the registries."""
    keys = {f"train.{f.name}" for f in dataclasses.fields(TrainConfig)}
    keys |= {"hessian.enabled"} | {f"hessian.{f.name}" for f in dataclasses.fields(SLQSettings)}
    keys |= {f"prune.{f.name}" for f in dataclasses.fields(LimitPrune)}
    keys |= {f"prune.{f.name}" for f in dataclasses.fields(PointPrune) if f.name != "options"}
    keys |= {f"prune.{name}.{option}" for name, info in PRUNERS.items() for option in info.option_defaults}
    keys |= {f"data.{name}.{option}" for name, info in DATASETS.items() for option in info.option_defaults}
    return keys


def test_every_hashed_field_has_an_original_default():
    missing = sorted(hashed_fields() - set(ORIGINAL_DEFAULTS))
    assert not missing, f"hashed fields without an original default: {missing}"
    with pytest.raises(MissingDefault, match="append its default"):
        original("train.no_such_field")


def _spec(**raw):
    base = {"name": "ids", "model": "lenet300100", "dataset": "digits", "storage": "/tmp",
            "pruner": ["dense", "magnitude/global", "synflow", "random/synflow", "snip"],
            "sparsity": [0.5, 0.9], "seed": [0, 1]}
    return build_spec({**base, **raw})


def _ids(spec) -> dict[tuple, str]:
    return {(c.pruner, c.sparsity, c.seed): c.cell_id for c in expand(spec)}


def _changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {key[0] for key in before if before[key] != after[key]}


def test_a_new_current_default_changes_exactly_the_cells_that_use_it(monkeypatch):
    before = _ids(_spec())
    # a pruner's option default (synflow's rounds, declared once in SynflowOptions, which random/synflow
    # shares): the cells of both move, no other cell does
    @dataclasses.dataclass(frozen=True)
    class Rounds50(SynflowOptions):
        rounds: int = option(50, "rounds", ge=1)

    users = [name for name, info in PRUNERS.items() if info.options is SynflowOptions]
    assert users == ["random/synflow", "synflow"]
    for name in users:
        monkeypatch.setitem(PRUNERS, name, dataclasses.replace(PRUNERS[name], options=Rounds50))
    assert _changed(before, _ids(_spec())) == {"synflow", "random/synflow"}
    monkeypatch.undo()
    assert _ids(_spec()) == before

    # a section default used only by the finetune protocol
    @dataclasses.dataclass(frozen=True)
    class Finetune2(spec_mod.PruneSection):
        finetune_epochs: int = 2

    tuned = _ids(_spec(prune={"protocol": "finetune"}))
    monkeypatch.setattr(spec_mod, "PruneSection", Finetune2)
    assert _changed(tuned, _ids(_spec(prune={"protocol": "finetune"}))) == {
        "magnitude/global", "synflow", "random/synflow", "snip"}  # dense has no protocol
    assert _ids(_spec()) == before  # no cell of the default protocols finetunes

    # an SLQ default: cells with SLQ move, cells without are untouched
    @dataclasses.dataclass(frozen=True)
    class Probes8(HessianSection):
        probes: int = 8

    with_slq = _ids(_spec(hessian={"enabled": True}))
    monkeypatch.setattr(spec_mod, "HessianSection", Probes8)
    assert _changed(with_slq, _ids(_spec(hessian={"enabled": True}))) == {
        "dense", "magnitude/global", "synflow", "random/synflow", "snip"}
    assert _ids(_spec()) == before


def test_explicit_values_equal_to_the_original_default_do_not_split_an_id():
    plain = _ids(_spec())
    spelled = _ids(_spec(prune={"rounds": 100, "options": {"batches": 10}}, data={"options": {"seed": 0}}))
    assert spelled == plain


# ----------------------------------------------------------------------------- fields reach the trial

OPTIONS = {"input_shape": [1, 4, 4], "num_classes": 3, "n_train": 96, "n_test": 48}
BASE = {"name": "t", "model": "lenet300100", "dataset": "synthetic", "data": {"options": OPTIONS},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.05}}


def test_point_cell_records_its_non_default_settings(tmp_path):
    raw = {**BASE, "pruner": "snip", "sparsity": 0.5, "prune": {"protocol": "finetune", "finetune_epochs": 3},
           "hessian": {"enabled": True, "probes": 3, "iterations": 7, "max_samples": 32}}
    [cell] = expand(build_spec(raw, storage=str(tmp_path)))
    [default] = expand(build_spec({**raw, "prune": {"protocol": "finetune"}, "hessian": {"enabled": True}},
                                  storage=str(tmp_path)))
    assert cell.cell_id != default.cell_id
    row = run_cell(cell, Where(str(tmp_path)))
    assert row["status"] == "ok", row["error"]
    assert (row["slq_probes"], row["slq_iterations"]) == (3, 7)
    epochs = store.read_cell_table(str(tmp_path), "t", "epochs", cell.cell_id).to_pandas()
    assert (epochs["phase"] == "finetune").sum() == 3
    assert json.loads(row["config"])["prune"]["finetune_epochs"] == 3


def test_limit_cell_records_its_non_default_settings(tmp_path):
    raw = {**BASE, "kind": "limit", "prune": {"lomp_l1": 1e-4, "limit_grid": [0.2, 0.4],
                                              "limit_tolerance_pp": 2.5},
           "hessian": {"enabled": True, "models": "dense", "probes": 2, "iterations": 6, "max_samples": 32}}
    [cell] = expand(build_spec(raw, storage=str(tmp_path)))
    [default] = expand(build_spec({**raw, "prune": {"lomp_l1": 1e-4}}, storage=str(tmp_path)))
    assert cell.cell_id != default.cell_id
    row = run_cell(cell, Where(str(tmp_path)))
    assert row["status"] == "ok", row["error"]
    assert row["limit_tolerance_pp"] == 2.5 and (row["slq_probes"], row["slq_iterations"]) == (2, 6)
    curve = store.read_cell_table(str(tmp_path), "t", "curves", cell.cell_id).to_pandas()
    assert curve["removed_frac"].tolist() == [0.0, 0.2, 0.4]


# ----------------------------------------------------------------------------- stable ids


def test_demo_cell_ids_are_unchanged():
    ids = [c.cell_id for c in expand(load_spec(CONFIGS / "demo.yaml", storage="/tmp"))]
    assert ids == json.loads((FIXTURES / "demo_cell_ids.json").read_text())


PACKAGED_IDS = json.loads((FIXTURES / "packaged_cell_ids.json").read_text())


def test_every_packaged_config_keeps_its_cell_ids():
    """The ids of every packaged config, in expansion order, as the code made them before the spec
    was split into modules (tests/fixtures/packaged_cell_ids.json): moving a field between sections,
    or a default from one place to another, must not change what any cell id names. A new packaged
    config adds its ids to the fixture in the commit that adds it."""
    configs = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    missing = sorted(set(configs) - set(PACKAGED_IDS))
    assert not missing, f"add the cell ids of {missing} to tests/fixtures/packaged_cell_ids.json"
    for name in configs:
        ids = [c.cell_id for c in expand(load_spec(CONFIGS / f"{name}.yaml", storage="/tmp"))]
        assert ids == PACKAGED_IDS[name], name


# fashion_limit.yaml's ids when limit cells resolved `hessian.iterations: null` to the authors' depth
FASHION_LIMIT_FIXED_128 = ["300b145520707a48", "dad1a8a6a65f8e5c", "74f3edc072d4296c", "0e5f9b4ed672a213",
                           "ba2033c467617add", "92c01fe22bf72efa"]


def test_limit_cells_moved_to_auto_only_where_the_depth_was_left_to_the_default():
    """A limit cell that left the Lanczos depth to the default now computes `iterations: auto`: a new
    computation, so a new id (fashion_limit, pruning_limit). The same spec with the depth it used to
    resolve to, written out (128), keeps every old id; nothing stored is reused for auto."""
    raw = yaml.safe_load((CONFIGS / "fashion_limit.yaml").read_text())
    auto = [c.cell_id for c in expand(build_spec(raw, storage="/tmp"))]
    fixed = [c.cell_id for c in expand(build_spec({**raw, "hessian": {**raw["hessian"], "iterations": 128}},
                                                  storage="/tmp"))]
    assert fixed == FASHION_LIMIT_FIXED_128 and not set(auto) & set(fixed)


def _old_ids(config: str) -> dict[str, str]:
    """cell_id → pruner of a packaged config before the typed cells (tests/fixtures)."""
    return json.loads((FIXTURES / "config_cell_ids.json").read_text())[config]


def test_packaged_configs_keep_the_ids_of_unchanged_computations():
    """digits_study: every pruner whose computation did not change keeps its ids; GraSP (now with
    its reference temperature and class-balanced batches) gets new ones; uniform+ is gone (conv
    nets only). digits_limit: LOMP's authors' recipe (L1 over every parameter, 128 Lanczos steps, a
    grid from 0, their ε) gives every limit cell a new id, so no old result is reused for it."""
    old = _old_ids("digits_study")
    new = {c.cell_id: c.pruner for c in expand(load_spec(CONFIGS / "digits_study.yaml", storage="/tmp"))}
    same = {p for p in old.values() if p not in ("grasp",) and not p.endswith("uniform_plus")}
    assert {i for i, p in new.items() if p in same} == {i for i, p in old.items() if p in same}
    grasp = {i for i, p in new.items() if p == "grasp"}
    assert len(grasp) == 30 and not grasp & set(old)
    assert not any(p.endswith("uniform_plus") for p in new.values())

    old = _old_ids("digits_limit")
    new = {c.cell_id for c in expand(load_spec(CONFIGS / "digits_limit.yaml", storage="/tmp"))}
    assert len(new) == len(old) == 6 and not new & set(old)


@pytest.mark.slow
def test_demo_rows_are_unchanged(tmp_path):
    """Six demo cells (seed 0; the dense one with its SLQ) give the rows of the version before the
    typed cells, timings and provenance aside; `config` now also lists every resolved default, so
    the old config must be contained in the new one with the same values.

    The rows were made by the code of the version before the typed cells (48b7f71^) under the torch
    build the fixture names; floats depend on that build (its kernels and its random number
    generators), so under another build the float columns are not compared and the test says so."""
    import torch

    fixture = json.loads((FIXTURES / "demo_rows.json").read_text())
    expected, same_torch = fixture["rows"], fixture["torch_version"] == torch.__version__
    cells = {c.cell_id: c for c in expand(load_spec(CONFIGS / "demo.yaml", storage=str(tmp_path)))}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the demo's serial backend runs it (resources.cpus: 1)
    try:
        rows = {cid: run_cell(cells[cid], Where(str(tmp_path))) for cid in expected}
    finally:
        torch.set_num_threads(threads)
    for cid, old in expected.items():
        new = rows[cid]
        assert _contains(json.loads(new["config"]), json.loads(old["config"])), cid
        for key, value in old.items():
            if key == "config":
                continue
            if isinstance(value, float):
                if same_torch:
                    assert new[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (cid, key)
            else:
                assert new[key] == value, (cid, key)
    if not same_torch:
        pytest.skip(f"float columns recorded under torch {fixture['torch_version']}, running {torch.__version__}: "
                    "ids, configs and the other columns compared; regenerate the rows with 48b7f71^'s code")


def _contains(new, old) -> bool:
    """Every key of `old` is in `new` with an equal value (recursively); an old null is an unused
    setting (snip's `rounds`), which the typed cell leaves out."""
    if isinstance(old, dict):
        return isinstance(new, dict) and all(_contains(new[k], v) if k in new else v is None
                                             for k, v in old.items())
    return new == old
