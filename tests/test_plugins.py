"""Bring your own method: pruners, models and data sets registered from a user's own code.

Oracles: a plugin that scores |w| must prune exactly as `magnitude/global` / `magnitude/igq` (the
same ranking, the same seeded tie-breaks), one that re-implements SNIP's scores with `torch.func`
exactly as `snip`; effective targets are checked by brute force over every k (boolean matrix
products, tests/test_pruners.py); in a sweep, a plugin cell after training equals the built-in
`magnitude/global` cell row for row. Versions are checked against a sha256 of the plugin's file
computed here, and against a distribution written by hand for the entry point.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.func import functional_call, grad

from pruning import data, masks, models
from pruning.options import option, validate
from pruning.pruners import PRUNERS, plan_for, prune, register_pruner
from plugin_fixtures import EXAMPLES, LAB, registries, source_hash, write_plugin  # noqa: F401  (fixture)
from test_pruners import batches, flat, mlp, mlp_effective_sparsity


@dataclass(frozen=True)
class Power:
    power: float = option(1.0, "exponent", gt=0)

    def __post_init__(self) -> None:
        validate(self)


def abs_scores(model, *, data, seed, power=1.0):
    return [m.weight.detach().abs() ** power for _, m in masks.prunable_layers(model)]


# ----------------------------------------------------------------------------- the Python API


@pytest.mark.filterwarnings("ignore:pruner .* leaves no input→output path:RuntimeWarning")
def test_a_plugin_score_prunes_to_direct_and_effective_targets_like_the_builtins(registries):
    register_pruner("absw", abs_scores, needs_data=False, options=Power)
    register_pruner("absw/igq", abs_scores, needs_data=False, options=Power, quota="igq")
    assert PRUNERS["absw"].plugin.module == __name__ and PRUNERS["absw/igq"].quota == "igq"
    for mine, builtin in (("absw", "magnitude/global"), ("absw/igq", "magnitude/igq")):
        for target in (0.3, 0.55, 0.7, 0.8, 0.9):
            for kind in ("direct", "effective"):
                a, b = mlp(seed=2), mlp(seed=2)
                ra = prune(a, mine, target, target=kind, seed=5)
                rb = prune(b, builtin, target, target=kind, seed=5)
                assert torch.equal(flat(masks.get_masks(a)), flat(masks.get_masks(b))), (mine, target, kind)
                assert (ra.removed_count, ra.effective_sparsity) == (rb.removed_count, rb.effective_sparsity)
            # the effective target by brute force: E(k) ≤ t < E(k + 1), k the largest such
            plan = plan_for(mlp(seed=2), mine, target, seed=5)
            scan = [mlp_effective_sparsity(plan.masks_at(k)) for k in range(plan.limit + 1)]
            assert scan == sorted(scan)
            r = prune(mlp(seed=2), mine, target, target="effective", seed=5)
            assert r.removed_count == max(k for k, e in enumerate(scan) if e <= target)
            assert r.effective_sparsity == pytest.approx(scan[r.removed_count]) and r.effective_sparsity <= target
            assert r.removed_count == plan.limit or scan[r.removed_count + 1] > target
    # the option reaches the scores: |w|^2 ranks as |w| (monotone), so the masks agree too
    a, b = mlp(seed=3), mlp(seed=3)
    prune(a, "absw", 0.6, power=2.0)
    prune(b, "magnitude/global", 0.6)
    assert torch.equal(flat(masks.get_masks(a)), flat(masks.get_masks(b)))


def test_a_data_driven_plugin_gets_the_data_and_a_copy_of_the_model(registries):
    """SNIP re-implemented with torch.func by a user prunes exactly as the built-in `snip`; the
    model it scores is a copy (the pruned model's gradients and BatchNorm statistics stay untouched)."""
    seen = []

    def my_snip(model, *, data, seed):
        seen.append(model)
        params = {k: v.detach() for k, v in model.named_parameters()}
        names = [f"{n}.weight" for n, _ in masks.prunable_layers(model)]

        def loss(p, x, y):
            return F.cross_entropy(functional_call(model, p, (x,)), y)

        mean = {k: torch.zeros_like(params[k]) for k in names}
        for x, y in data:
            g = grad(loss)(params, x, y)
            for k in names:
                mean[k] += g[k] / len(data)
        return [(mean[k] * params[k]).abs() for k in names]

    register_pruner("my_snip", my_snip, needs_data=True)
    data_ = batches(2)
    for kind in ("direct", "effective"):
        a, b = mlp(seed=4), mlp(seed=4)
        prune(a, "my_snip", 0.7, target=kind, data=data_, seed=1)
        prune(b, "snip", 0.7, target=kind, data=data_, seed=1, batches=2)
        assert torch.equal(flat(masks.get_masks(a)), flat(masks.get_masks(b))), kind
    assert seen[-1] is not a and all(p.grad is None for p in a.parameters())
    with pytest.raises(ValueError, match=r"^data: pruner 'my_snip' needs data"):
        prune(mlp(), "my_snip", 0.5)


def test_plugin_options_are_typed_and_checked_like_the_builtins(registries):
    register_pruner("absw", abs_scores, needs_data=False, options=Power)
    assert PRUNERS["absw"].option_defaults == {"power": 1.0}
    with pytest.raises(ValueError, match=r"^pruner 'absw': power: -1; expected a number > 0$"):
        prune(mlp(), "absw", 0.5, power=-1)
    with pytest.raises(ValueError, match=r"^pruner 'absw': power: 'x'; expected a number > 0$"):
        prune(mlp(), "absw", 0.5, power="x")
    with pytest.raises(ValueError, match=r"^pruner 'absw': unknown key 'batches'; allowed: power$"):
        prune(mlp(), "absw", 0.5, batches=2)


def test_bad_registrations_are_one_line_errors(registries):
    register_pruner("absw", abs_scores, needs_data=False, options=Power)
    cases = [
        (dict(name="snip"), r"^pruner 'snip' is a built-in pruner; register yours under another name$"),
        (dict(name="absw"), rf"^pruner 'absw' is registered already by plugin module '{__name__}'; register yours"),
        (dict(when="later"), r"^pruner 'x': when 'later': choose from init, after$"),
        (dict(quota="snip"), r"^pruner 'x': quota 'snip': choose from None \(a global ranking\), uniform, "),
        (dict(options=dict), r"^pruner 'x': options <class 'dict'>: expected a frozen dataclass"),
        (dict(scores=lambda model, *, data: []), r"^pruner 'x': scores must be scores\(model, \*, data, seed, "
                                                 r"\*\*options\); it takes no 'seed', 'power'$"),
        (dict(needs_data="yes"), r"^pruner 'x': needs_data 'yes': expected true or false$"),
    ]
    for change, message in cases:
        kwargs = {"name": "x", "scores": abs_scores, "needs_data": False, "options": Power, **change}
        with pytest.raises(ValueError, match=message):
            register_pruner(kwargs.pop("name"), kwargs.pop("scores"), **kwargs)

    @dataclass(frozen=True)
    class NoDefault:
        power: float = option(help="exponent")

    @dataclass(frozen=True)
    class BadDefault:
        power: float = option(-1.0, "exponent", gt=0)

    @dataclass(frozen=True)
    class Taken:
        seed: int = option(0, "clashes with the call")

    for cls, message in ((NoDefault, "option 'power' has no default"),
                         (BadDefault, r"a default option value is refused: power: -1.0; expected a number > 0"),
                         (Taken, "option 'seed': the name is taken")):
        with pytest.raises(ValueError, match=message):
            register_pruner("x", abs_scores, needs_data=False, options=cls)
    with pytest.raises(ValueError, match=r"^model 'lenet5' is a built-in model; register yours"):
        models.register_model("lenet5", lambda shape, n: None)
    with pytest.raises(ValueError, match=r"^dataset 'digits' is a built-in dataset; register yours"):
        data.register_dataset("digits", lambda **kw: None)
    assert "x" not in PRUNERS  # nothing half-registered


def test_scores_of_the_wrong_count_shape_or_with_nan_are_refused(registries):
    register_pruner("few", lambda model, *, data, seed: [torch.ones(3)], needs_data=False)
    register_pruner("shape", lambda model, *, data, seed: [torch.ones(5)] * 3, needs_data=False)
    register_pruner("nan", lambda model, *, data, seed: [torch.full(m.weight.shape, float("nan"))
                                                         for _, m in masks.prunable_layers(model)], needs_data=False)
    with pytest.raises(ValueError, match=r"^pruner 'few': scores returned 1 tensors; the model has 3 prunable "
                                         r"layers \(1, 3, 5\)$"):
        prune(mlp(), "few", 0.5)
    with pytest.raises(ValueError, match=r"^pruner 'shape': scores of layer '1' have shape \(5,\); expected \(4, 6\)$"):
        prune(mlp(), "shape", 0.5)
    with pytest.raises(ValueError, match=r"^pruner 'nan': scores of layer '1' contain NaN"):
        prune(mlp(), "nan", 0.5)


def test_a_plugin_model_and_data_set_build_and_load(registries, tmp_path):
    from pruning.plugins import import_modules

    path = write_plugin(tmp_path)
    assert import_modules(["lab_plugin"], [tmp_path]) == []
    train, test = data.load("blobs", n_train=30)
    assert (len(train), len(test), train.input_shape, train.num_classes) == (30, 90, (1, 4, 4), 3)
    net = models.build("tiny_mlp", input_shape=train.input_shape, num_classes=3)
    assert [tuple(w.shape) for w in masks.weights(net).values()] == [(24, 16), (3, 24)]
    for registry, name in ((models.MODELS, "tiny_mlp"), (data.DATASETS, "blobs"), (PRUNERS, "absw")):
        assert registry[name].plugin.module == "lab_plugin"
        assert registry[name].plugin.version == source_hash(path)
    assert data.info("blobs") == ((1, 4, 4), 3)
    assert models.MODELS["tiny_mlp"].doc == "Flatten, 24 hidden ReLU units, the classifier"


# ----------------------------------------------------------------------------- the example and the README



def readme_plugin_code() -> str:
    """The Python block of the README's plugin section."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Bring your own pruner, model or data set (plugins)"):]
    return section[section.index("```python\n") + len("```python\n"):section.index("\n```\n")]


def check_fisher_against_snip(name: str) -> None:
    """Fisher on one batch scores ½ (g w)², SNIP on the same batch |g w|: the same ranking, so the same
    masks, direct and effective, globally (`name`) and inside IGQ's counts (`name`/igq vs random/snip
    is not IGQ: checked against the layer counts of random/igq instead)."""
    g = torch.Generator().manual_seed(0)
    split = data.Split("toy", torch.randn(64, 1, 2, 3, generator=g), torch.arange(64) % 3, 3, (0.0,), (1.0,))
    for kind in ("direct", "effective"):
        a, b = mlp(seed=6), mlp(seed=6)
        prune(a, name, 0.7, target=kind, data=split, seed=2, batches=1, batch_size=16)
        prune(b, "snip", 0.7, target=kind, data=split, seed=2, batches=1, batch_size=16)
        assert torch.equal(flat(masks.get_masks(a)), flat(masks.get_masks(b))), (name, kind)
    a, b = mlp(seed=6), mlp(seed=6)
    prune(a, f"{name}/igq", 0.7, data=split, seed=2)
    prune(b, "random/igq", 0.7, seed=2)
    assert [int(m.sum()) for m in masks.get_masks(a).values()] == [int(m.sum()) for m in masks.get_masks(b).values()]
    with pytest.raises(ValueError, match=rf"^pruner '{name}': batches: 0; expected an integer ≥ 1$"):
        prune(mlp(), name, 0.5, data=split, batches=0)


def test_the_example_plugin_and_its_spec(registries):
    """examples/fisher_sweep.yaml validates (its plugin found beside it) into the grid the README
    describes, and the plugin's Fisher scores rank as SNIP's on one batch."""
    from sweeps.cells import expand
    from sweeps.spec import load_spec

    spec = load_spec(EXAMPLES / "fisher_sweep.yaml", storage="/tmp/unused")
    cells = expand(spec)
    assert spec.plugins == ("fisher_pruner",) and len(cells) == 62
    assert {c.pruner for c in cells} == {"dense", "fisher", "fisher/igq", "random/igq", "snip", "synflow"}
    assert {c.target for c in cells} == {"direct", "effective"}
    assert PRUNERS["fisher"].plugin.module == "fisher_pruner" and PRUNERS["fisher/igq"].quota == "igq"
    assert PRUNERS["fisher"].plugin.version == source_hash(EXAMPLES / "fisher_pruner.py")
    check_fisher_against_snip("fisher")


def test_the_readme_plugin_code_runs_as_shown(registries, tmp_path):
    """The README's code as a user's file (its names changed, the example's are taken)."""
    from pruning.plugins import import_modules

    code = readme_plugin_code()
    assert 'register_pruner("fisher", fisher_scores' in code
    write_plugin(tmp_path, "readme_lab", code.replace('"fisher', '"readme_fisher'))
    assert import_modules(["readme_lab"], [tmp_path]) == []
    assert PRUNERS["readme_fisher"].plugin.module == "readme_lab"
    check_fisher_against_snip("readme_fisher")


# ----------------------------------------------------------------------------- specs


def spec_raw(**changes):
    raw = {"name": "lab", "plugins": ["lab_plugin"], "model": "lenet300100", "dataset": "digits",
           "pruner": ["absw"], "sparsity": [0.9], "seed": [0], "train": {"epochs": 1, "batch_size": 128}}
    raw.update(changes)
    return raw


def write_spec(directory: Path, **changes) -> Path:
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_raw(**changes)))
    return path


def test_spec_plugins_are_imported_before_validation_and_problems_are_one_line(registries, tmp_path, capsys):
    from sweeps.cli import main
    from sweeps.spec import SpecError, load_spec

    write_plugin(tmp_path)
    spec = load_spec(write_spec(tmp_path, prune={"options": {"absw": {"power": 2}}}), storage=str(tmp_path / "r"))
    assert spec.plugins == ("lab_plugin",) and "absw" in PRUNERS  # found beside the spec
    bad = [
        ({"plugins": ["no_such_lab"]}, f"plugins: no module 'no_such_lab' on the Python path or in {tmp_path}"),
        ({"plugins": ["3lab"]}, "plugins: '3lab' is not a module name; expected module names such as my_lab.pruners"),
        ({"pruner": ["absw", "nope"]}, "pruner: unknown 'nope'; choose from "),
        ({"prune": {"options": {"absw": {"power": -2}}}}, "prune.options.absw.power: -2; expected a number > 0 "
                                                          "(pruner 'absw')"),
        ({"prune": {"options": {"absw": {"batches": 2}}}}, "prune.options.absw: unknown option 'batches'; "
                                                           "allowed: power, scale"),
        ({"pruner": ["absw", "snip"], "prune": {"options": {"power": 3, "batches": 2}}}, None),  # bare options
    ]
    for change, line in bad:
        path = write_spec(tmp_path, **change)
        if line is None:
            assert load_spec(path, storage=str(tmp_path / "r")).prune.options == {"power": 3, "batches": 2}
            continue
        with pytest.raises(SpecError) as e:
            load_spec(path, storage=str(tmp_path / "r"))
        assert len(e.value.problems) == 1 and e.value.problems[0].startswith(line), e.value.problems
        assert main(["validate", str(path), "--storage", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {line}")
    # a plugin that fails on import: its error, one line, before anything else is checked
    write_plugin(tmp_path, "broken_lab", "raise RuntimeError('the lab server is down')\n")
    with pytest.raises(SpecError) as e:
        load_spec(write_spec(tmp_path, plugins=["broken_lab"], pruner=["nope"]), storage=str(tmp_path / "r"))
    assert e.value.problems == ["plugins: module 'broken_lab' failed to import: RuntimeError: the lab server is down"]
    # a plugin registering a name that is taken: the same, naming the name
    write_plugin(tmp_path, "greedy_lab", "from pruning.pruners import register_pruner\n"
                                         "register_pruner('lamp', lambda model, *, data, seed: [], needs_data=False)\n")
    with pytest.raises(SpecError) as e:
        load_spec(write_spec(tmp_path, plugins=["greedy_lab"]), storage=str(tmp_path / "r"))
    assert e.value.problems == ["plugins: module 'greedy_lab' failed to import: ValueError: pruner 'lamp' is a "
                                "built-in pruner; register yours under another name"]


def test_prunetune_prune_takes_a_plugin_module(registries, tmp_path, monkeypatch, capsys):
    """`prunetune prune --plugin MODULE`: the module's names become choices of --pruner, --model and
    --dataset (looked for in the current directory); without it they are unknown, in one line."""
    from sweeps.cli import main

    write_plugin(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = ["prune", "--model", "tiny_mlp", "--dataset", "blobs", "--pruner", "absw/igq", "--sparsity", "0.8",
            "--target", "effective", "--option", "power=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: argument --pruner: invalid choice: 'absw/igq' (choose from ") and "\n" not in err
    assert main([*argv, "--plugin", "no_such_lab"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: plugins: no module 'no_such_lab' on the Python path or in "
                                               f"{tmp_path} (add its directory to PYTHONPATH, or run where it lies)")
    assert main([*argv, "--plugin", "lab_plugin"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("absw/igq on tiny_mlp/blobs, effective target 0.8:")
    effective = float(out.split("effective sparsity ")[1].split()[0])
    assert 0.7 < effective <= 0.8


def test_plugin_options_enter_the_cell_id_in_full(registries, tmp_path):
    """A built-in's option at its original default is left out of the id; every option of a plugin
    is hashed with its resolved value, so a plugin that changes a default gets new ids."""
    from sweeps.cells import expand, hashed_config
    from sweeps.spec import load_spec

    write_plugin(tmp_path)
    spec = load_spec(write_spec(tmp_path, pruner=["absw", "snip"], dataset="blobs", model="tiny_mlp"),
                     storage=str(tmp_path / "r"))
    absw, snip = sorted(expand(spec), key=lambda c: c.pruner)
    assert hashed_config(absw)["prune"]["options"] == {"power": 1.0, "scale": 1}
    assert "options" not in hashed_config(snip)["prune"]  # snip's options sit at their original defaults
    assert hashed_config(absw)["data"] == {"seed": 0, "n_train": 300}  # a plugin data set's options: all
    ids = {absw.cell_id}
    for changed in ('power: float = option(1.0,', 'power: float = option(1.5,'), ('scale: int = option(1,', 'scale: int = option(2,'):
        registries_reset(tmp_path, LAB.replace(*changed))
        [cell] = expand(load_spec(write_spec(tmp_path, dataset="blobs", model="tiny_mlp"), storage=str(tmp_path / "r")))
        assert cell.cell_id not in ids, changed
        ids.add(cell.cell_id)
    # the dense cache keys a plugin model or data set by its version: new code trains a new dense model
    from sweeps.trial_common import _dense_fields

    assert _dense_fields(cell)["plugins"] == {"model": f"lab_plugin {source_hash(tmp_path / 'lab_plugin.py')}",
                                              "dataset": f"lab_plugin {source_hash(tmp_path / 'lab_plugin.py')}"}
    [builtin] = expand(load_spec(write_spec(tmp_path, pruner=["snip"]), storage=str(tmp_path / "r")))
    assert "plugins" not in _dense_fields(builtin)  # built-ins keep the keys they always had


def registries_reset(directory: Path, text: str) -> None:
    """Forget the lab's module and names, as a new process would, and write its next version."""
    for registry in (PRUNERS, models.MODELS, data.DATASETS):
        for name in [n for n, info in registry.items() if info.plugin is not None]:
            del registry[name]
    sys.modules.pop("lab_plugin", None)
    write_plugin(directory, text=text)


def test_entry_point_plugins_are_discovered_like_pytest_plugins(registries, tmp_path):
    """An installed distribution (its dist-info written here, as pip writes it) with a
    `prunetune.plugins` entry point: a spec naming its pruner validates without `plugins:`, and the
    version recorded is the distribution's."""
    from sweeps.cells import expand
    from sweeps.provenance import plugin_columns
    from sweeps.spec import build_spec

    site = tmp_path / "site"
    package = site / "ptlab"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(LAB.replace('"absw"', '"ep_absw"').replace('"absw/igq"', '"ep_absw/igq"')
                                         .replace('"absw/after"', '"ep_absw/after"')
                                         .replace('"tiny_mlp"', '"ep_mlp"').replace('"blobs"', '"ep_blobs"'))
    dist = site / "ptlab-0.3.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ptlab\nVersion: 0.3.0\n")
    (dist / "entry_points.txt").write_text("[prunetune.plugins]\nlab = ptlab\n")
    (dist / "top_level.txt").write_text("ptlab\n")
    (dist / "RECORD").write_text("ptlab/__init__.py,,\nptlab-0.3.0.dist-info/METADATA,,\n")
    sys.path.insert(0, str(site))
    spec = build_spec(spec_raw(plugins=None, pruner=["ep_absw"], model="ep_mlp", dataset="ep_blobs"),
                      storage=str(tmp_path / "r"))
    [cell] = expand(spec)
    assert PRUNERS["ep_absw"].plugin.module == "ptlab"
    assert plugin_columns(cell.pruner, cell.model, cell.dataset) == {
        "pruner_plugin": "ptlab", "pruner_plugin_version": "0.3.0", "model_plugin": "ptlab",
        "model_plugin_version": "0.3.0", "dataset_plugin": "ptlab", "dataset_plugin_version": "0.3.0"}
    # a broken installed plugin is named, with its distribution, in one line
    (dist / "entry_points.txt").write_text("[prunetune.plugins]\nlab = ptlab\nbad = ptlab_missing\n")
    from sweeps.spec import SpecError, entry_point_problems

    entry_point_problems.cache_clear()
    with pytest.raises(SpecError) as e:
        build_spec(spec_raw(plugins=None, pruner=["ep_absw"]), storage=str(tmp_path / "r"))
    assert e.value.problems == ["plugins: entry point 'bad' = 'ptlab_missing' (distribution ptlab 0.3.0) failed to "
                                "load: ModuleNotFoundError: No module named 'ptlab_missing'"]


@pytest.mark.slow
def test_a_pip_installed_package_is_discovered_by_its_entry_point(tmp_path):
    """A real installation: a package with a `prunetune.plugins` entry point built by setuptools and
    installed by pip (offline, into a directory of its own); a fresh `prunetune run` of a spec that
    does not name it finds its pruner, model and data set, and its rows record the package's version."""
    import subprocess

    from analysis.load import load_table

    project = tmp_path / "ptlab_src"
    write_plugin(project / "ptlab", "__init__", LAB.replace('"absw"', '"pip_absw"').replace('"tiny_mlp"', '"pip_mlp"')
                 .replace('"blobs"', '"pip_blobs"').replace('"absw/igq"', '"pip_absw/igq"')
                 .replace('"absw/after"', '"pip_absw/after"'))
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "ptlab"\nversion = "1.2.0"\n\n'
        '[project.entry-points."prunetune.plugins"]\nlab = "ptlab"\n\n'
        '[tool.setuptools]\npackages = ["ptlab"]\n')
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                          "--no-build-isolation", "--target", str(site), str(project)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert (site / "ptlab-1.2.0.dist-info" / "entry_points.txt").read_text().split() == [
        "[prunetune.plugins]", "lab", "=", "ptlab"]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_raw(name="piplab", plugins=None, pruner=["pip_absw/igq"], model="pip_mlp",
                                            dataset="pip_blobs", train={"epochs": 1, "batch_size": 64})))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}:{site}", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "sweeps.cli", "run", str(spec), "--storage", str(tmp_path / "r")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    [row] = load_table("piplab", "trials", storage=str(tmp_path / "r"), use_cache=False).to_dict("records")
    assert row["status"] == "ok" and row["pruner"] == "pip_absw/igq"
    assert {k: row[f"{k}_plugin"] for k in ("pruner", "model", "dataset")} == dict.fromkeys(
        ("pruner", "model", "dataset"), "ptlab")
    assert {row[f"{k}_plugin_version"] for k in ("pruner", "model", "dataset")} == {"1.2.0"}  # the package's
    # without the installation, the same spec names unknown things: one line per field
    env["PYTHONPATH"] = str(root)
    bad = subprocess.run([sys.executable, "-m", "sweeps.cli", "validate", str(spec)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error: model: unknown 'pip_mlp'" in bad.stderr, bad.stderr


# ----------------------------------------------------------------------------- sweeps


def run_lab(tmp_path, backend="serial", **changes):
    from sweeps.progress import Progress
    from sweeps.runner import run_spec
    from sweeps.spec import load_spec

    spec = load_spec(write_spec(tmp_path / "lab", **changes), storage=str(tmp_path / "res"), backend=backend)
    options = None
    if backend == "ray":
        from sweeps.backends import RayOptions

        options = RayOptions(num_cpus=2)
    summary = run_spec(spec, options=options, progress=Progress(1, stream=io.StringIO(), tty=False),
                       stream=io.StringIO())
    assert summary.ok, summary.errors
    return spec


LAB_SWEEP = dict(model="tiny_mlp", dataset="blobs", pruner=["absw/after", "magnitude/global", "absw"],
                 sparsity=[0.8], target=["direct", "effective"], train={"epochs": 2, "batch_size": 32})


def lab_rows(spec):
    from analysis.load import load_table

    return load_table(spec.name, "trials", storage=spec.storage, use_cache=False)


@pytest.mark.slow
def test_a_plugin_pruner_model_and_data_set_in_a_serial_sweep(registries, tmp_path, capsys):
    """Plugin model × plugin data set × plugin pruners: every cell runs; the plugin pruner after training
    equals `magnitude/global` row for row (same dense model from the cache, same mask, same retraining);
    rows record the plugin; the tables mark the plugin's names."""
    from sweeps.cli import main

    path = write_plugin(tmp_path / "lab")
    spec = run_lab(tmp_path, **LAB_SWEEP)
    rows = lab_rows(spec)
    assert len(rows) == 6 and set(rows["status"]) == {"ok"}
    for target in ("direct", "effective"):
        mine = rows[(rows.pruner == "absw/after") & (rows.target == target)].iloc[0]
        builtin = rows[(rows.pruner == "magnitude/global") & (rows.target == target)].iloc[0]
        for column in ("direct_sparsity", "effective_sparsity", "test_acc", "test_loss", "dense_test_acc"):
            assert mine[column] == builtin[column], (target, column)
        if target == "effective":
            assert mine["effective_sparsity"] <= 0.8
        else:  # k = N − round(0.2 N) of N = 16·24 + 24·3 = 456 weights
            assert mine["direct_sparsity"] == (456 - round(0.2 * 456)) / 456
    plugin = rows[rows.pruner != "magnitude/global"]
    assert set(plugin["pruner_plugin"]) == {"lab_plugin"} and set(plugin["pruner_plugin_version"]) == {source_hash(path)}
    assert rows["magnitude/global" == rows.pruner]["pruner_plugin"].isna().all()
    assert set(rows["model_plugin"]) == {"lab_plugin"} and set(rows["dataset_plugin_version"]) == {source_hash(path)}
    assert main(["tables", spec.name, "--storage", spec.storage, "--table", "compression"]) == 0
    out, err = capsys.readouterr()
    assert "— tiny_mlp (plugin) / blobs (plugin)" in out and "| absw/after (plugin) " in out
    assert "| magnitude/global " in out and "warning" not in err
    assert main(["status", spec.name, "--storage", spec.storage]) == 0
    out, err = capsys.readouterr()
    assert "6 done" in out and err == ""


@pytest.mark.slow
def test_a_changed_plugin_version_is_recorded_and_warned_about(registries, tmp_path, capsys):
    """The same sweep grown after the plugin's code changed: the new cells record the new version;
    status, tables and plot warn that the pruner's results mix two versions; old cells are kept."""
    from sweeps.cli import main

    first = write_plugin(tmp_path / "lab")
    old = source_hash(first)
    spec = run_lab(tmp_path, model="tiny_mlp", dataset="blobs", pruner=["absw"], sparsity=[0.5],
                   train={"epochs": 1, "batch_size": 64})
    registries_reset(tmp_path / "lab", LAB.replace('"""|w| ** power', '"""|w| to the power'))  # a new version
    new = source_hash(tmp_path / "lab" / "lab_plugin.py")
    assert new != old
    spec = run_lab(tmp_path, model="tiny_mlp", dataset="blobs", pruner=["absw"], sparsity=[0.5, 0.7],
                   train={"epochs": 1, "batch_size": 64})
    rows = lab_rows(spec).sort_values("sparsity")
    assert rows["pruner_plugin_version"].tolist() == [old, new]  # the 0.5 cell was not run again
    first, second = sorted((old, new))  # the versions are listed sorted
    warning = (f"warning: sweep 'lab': pruner 'absw' has results of 2 plugin versions (lab_plugin {first}: 1 cell, "
               f"lab_plugin {second}: 1 cell); its rows compare different code as one method")
    for argv in (["status", "lab"], ["tables", "lab", "--table", "accuracy"], ["plot", "lab", "--out", str(tmp_path / "f")]):
        assert main([*argv, "--storage", spec.storage]) == 0
        err = capsys.readouterr().err
        assert warning in err, (argv, err)
        for role in ("model", "dataset"):
            assert f"{role} '{'tiny_mlp' if role == 'model' else 'blobs'}' has results of 2 plugin versions" in err


@pytest.mark.slow
def test_the_ray_backend_ships_the_plugin_to_its_workers(registries, tmp_path):
    """A local Ray started by the backend; the plugin lives only beside the spec (not on any worker's
    path): it reaches the trials as `py_modules`, and the rows equal the serial backend's."""
    import ray

    from sweeps.backends.ray_tune import plugin_runtime_env

    assert not ray.is_initialized()
    write_plugin(tmp_path / "lab")
    spec = run_lab(tmp_path, backend="ray", **dict(LAB_SWEEP, pruner=["absw/igq"], target=["effective"]))
    assert not ray.is_initialized()  # the backend shut down the Ray it started
    assert plugin_runtime_env(("lab_plugin",)) == {"py_modules": [str((tmp_path / "lab" / "lab_plugin.py").resolve())]}
    ray_rows = lab_rows(spec)
    assert set(ray_rows["backend"]) == {"ray"} and set(ray_rows["status"]) == {"ok"}
    assert set(ray_rows["pruner_plugin"]) == {"lab_plugin"}
    from sweeps.runner import run_spec  # the same cells on the serial backend: the same numbers
    from sweeps.progress import Progress

    serial = dataclasses.replace(spec, backend="serial", storage=str(tmp_path / "serial"))
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Ray trials run with their 1 CPU's threads: the same float sums
    try:
        run_spec(serial, progress=Progress(1, stream=io.StringIO(), tty=False), stream=io.StringIO())
    finally:
        torch.set_num_threads(torch_threads)
    serial_rows = lab_rows(serial)
    for column in ("cell_id", "direct_sparsity", "effective_sparsity", "test_acc", "pruner_plugin_version"):
        assert ray_rows[column].tolist() == serial_rows[column].tolist(), column


@pytest.mark.slow
@pytest.mark.cluster
def test_a_ray_start_cluster_runs_a_plugin_that_exists_only_in_the_jobs_working_directory(registries, tmp_path,
                                                                                           monkeypatch, capsys):
    """`ray start` head + worker on 127.0.0.1 (tests/ray_nodes.py: own ports, own temp dirs, exactly
    the processes they started are ended); `ray job submit --working-dir <dir>` with the plugin and
    the spec in that directory and nowhere else. The head has no CPU for trials, so every trial runs
    on the worker node, whose Python finds the plugin only in the job's unpacked working directory."""
    import subprocess

    from ray_nodes import LocalCluster
    from sweeps.cli import main

    job_dir = tmp_path / "job"
    path = write_plugin(job_dir)
    (job_dir / "spec.yaml").write_text(yaml.safe_dump(spec_raw(
        name="labjob", model="tiny_mlp", dataset="blobs", pruner=["absw/igq", "absw"], sparsity=[0.8],
        target=["effective"], train={"epochs": 1, "batch_size": 64})))
    storage = str(tmp_path / "res")
    with LocalCluster(tmp_path / "cluster") as cluster:
        no_plugin = subprocess.run([sys.executable, "-c", "import lab_plugin"], env=cluster.env,
                                   cwd=cluster.tmp, capture_output=True, text=True)
        assert "No module named 'lab_plugin'" in no_plugin.stderr  # not on the nodes' path
        cluster.start_head(num_cpus=0)
        cluster.add_worker(num_cpus=1)
        job = subprocess.run(cluster.ray_cmd("job", "submit", "--address", cluster.dashboard_url, "--working-dir",
                                             ".", "--", "prunetune", "run", "spec.yaml", "--backend", "ray",
                                             "--storage", storage),
                             env=cluster.env, cwd=job_dir, capture_output=True, text=True, timeout=600)
    log = job.stdout + job.stderr
    (tmp_path / "job.log").write_text(log)
    assert job.returncode == 0, log[-4000:]
    assert "sweep 'labjob': 2 done, 0 failed, 0 already done" in log
    from analysis.load import load_table

    rows = load_table("labjob", "trials", storage=storage, use_cache=False)
    assert sorted(rows["pruner"]) == ["absw", "absw/igq"] and set(rows["status"]) == {"ok"}
    assert set(rows["backend"]) == {"ray"} and (rows["effective_sparsity"] <= 0.8).all()
    for role in ("pruner", "model", "dataset"):  # the worker's copy: the same file, the same version
        assert set(rows[f"{role}_plugin"]) == {"lab_plugin"}
        assert set(rows[f"{role}_plugin_version"]) == {source_hash(path)}
    # `status` (and `resume`) read the stored spec, whose plugins must be importable here: from the
    # job's directory they are (the current directory is searched), from elsewhere one line says so
    monkeypatch.chdir(tmp_path)
    assert main(["status", "labjob", "--storage", storage]) == 2
    assert capsys.readouterr().err.strip() == (f"error: plugins: no module 'lab_plugin' on the Python path or in "
                                               f"{tmp_path} (add its directory to PYTHONPATH, or run where it lies)")
    monkeypatch.chdir(job_dir)
    assert main(["status", "labjob", "--storage", storage]) == 0
    assert "2 cells — 2 done, 0 diverged, 0 failed, 0 pending" in capsys.readouterr().out
