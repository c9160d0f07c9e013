"""The Ray Tune backend: resources and refusals, fake-GPU placement, and serial/Ray agreement.

Fake GPUs (`ray.init(num_gpus=2)`) are only logical resources: the trials here use a stand-in
`run_fn` that records what Ray gave them (GPU ids, device) and writes a trials row, so placement is
tested without CUDA. The agreement test runs the real pipeline on digits.
"""

import json
import math
import os
import sys
import time

import pytest

import ray
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # trial processes cannot import tests/

from sweeps import store  # noqa: E402
from sweeps.backends import backend_class  # noqa: E402
from sweeps.backends.ray_tune import RayBackend, RayOptions  # noqa: E402
from sweeps.paths import tune_root  # noqa: E402
from sweeps.backends.serial import SerialBackend  # noqa: E402
from sweeps.cells import expand  # noqa: E402
from sweeps.progress import Progress  # noqa: E402
from sweeps.spec import build_spec  # noqa: E402
from sweeps.trial import Where  # noqa: E402
from analysis.load import read_arrow  # noqa: E402


def make_spec(tmp_path, **changes):
    raw = {"name": "rt", "model": "lenet300100", "dataset": "digits", "pruner": ["random/uniform"],
           "sparsity": [0.5, 0.8], "seed": [0], "train": {"epochs": 1, "batch_size": 128}}
    raw.update(changes)
    return build_spec(raw, storage=str(tmp_path / "results"))


def quiet_progress(n):
    import io

    return Progress(n, stream=io.StringIO(), tty=False)


# ----------------------------------------------------------------------------- no Ray needed


def test_registered_and_built_from_the_spec(tmp_path):
    assert backend_class("ray") is RayBackend
    spec = make_spec(tmp_path, resources={"cpus": 2, "gpus": 0.25},
                     hessian={"enabled": True, "workers": 3})
    b = RayBackend.from_spec(spec)
    assert b.bundles() == [{"CPU": 2.0, "GPU": 0.25}] * 4  # the trial + one bundle per HVP worker
    assert b.placement().required_resources == {"CPU": 8.0, "GPU": 1.0}
    assert RayBackend.from_spec(make_spec(tmp_path, hessian={"enabled": False, "workers": 3})).bundles() == [
        {"CPU": 1.0}]


def test_bad_resources_and_options_are_one_line_problems(tmp_path):
    assert RayBackend.check(make_spec(tmp_path, resources={"gpus": 1.5}), RayOptions(address="auto")) == [
        "resources.gpus: 1.5; Ray takes fractions below 1 or whole GPUs"]
    assert RayBackend.check(make_spec(tmp_path, resources={"gpus": 2}), RayOptions(address="auto")) == []
    with pytest.raises(ValueError, match=r"^max_concurrent: 0; expected null or an integer ≥ 1$"):
        RayOptions(max_concurrent=0)
    with pytest.raises(ValueError, match=r"^address: 'auto'; num_cpus/num_gpus are only for a local Ray"):
        RayOptions(address="auto", num_gpus=2)


def test_unmeetable_gpu_request_is_refused_before_anything_starts(tmp_path):
    assert not ray.is_initialized()
    spec = make_spec(tmp_path, resources={"gpus": 1})
    backend = RayBackend.from_spec(spec, RayOptions(num_gpus=0, num_cpus=2))
    with pytest.raises(ValueError, match=r"^resources.gpus: each trial needs 1 GPU\(s\) .* local Ray has 0;"):
        backend.run(expand(spec), Where(storage=spec.storage), progress=quiet_progress(2))
    assert not ray.is_initialized()
    assert store.stored_ids(spec.storage, "rt") == []
    # two HVP workers at 0.5 GPU each plus the trial need 1.5 GPUs: one GPU is not enough either
    with pytest.raises(ValueError, match=r"needs 1.5 GPU"):
        RayBackend(gpus=0.5, hessian_workers=2).check_local(num_cpus=8, num_gpus=1)
    with pytest.raises(ValueError, match=r"^resources.cpus: each trial needs 4 CPU\(s\) \(1 × 4 bundles\)"):
        RayBackend(cpus=1, hessian_workers=3).check_local(num_cpus=2, num_gpus=0)


def test_cli_ray_flags_parse_into_options_and_bad_input_is_refused(tmp_path, capsys):
    from sweeps.cli import build_parser, main
    from sweeps.cli.common import ray_options
    from sweeps.cli.run import cmd_resume

    args = build_parser().parse_args(["resume", "demo", "--max-concurrent", "3", "--num-gpus", "2",
                                      "--dashboard"])
    assert args.func is cmd_resume
    assert ray_options(args, "ray") == RayOptions(num_gpus=2, max_concurrent=3, dashboard=True)

    assert main(["resume", "nope", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no sweep 'nope' in ")
    good = tmp_path / "good.yaml"
    good.write_text("name: x\nmodel: lenet300100\npruner: dense\nbackend: ray\n")
    assert main(["run", str(good), "--storage", str(tmp_path), "--max-concurrent", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-concurrent: 0; expected null or an integer ≥ 1"
    assert main(["run", str(good), "--storage", str(tmp_path), "--backend", "serial", "--address", "auto"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --address: only for the Ray backend; this sweep "
                                               "runs on 'serial' (add --backend ray)")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: nosuchmodel\n")
    assert main(["run", str(bad), "--backend", "ray", "--storage", str(tmp_path)]) == 2
    assert "model: unknown 'nosuchmodel'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing stored for a refused run
    assert not ray.is_initialized()


def test_data_root_is_made_absolute_for_trials_that_run_in_their_own_directories(tmp_path, monkeypatch):
    from sweeps.backends.ray_tune import absolute

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PRUNETUNE_DATA", raising=False)
    assert absolute(Where(storage="/s", data_root="data")).data_root == str(tmp_path / "data")
    from pruning.data import DEFAULT_ROOT

    assert absolute(Where(storage="/s")).data_root == os.path.abspath(DEFAULT_ROOT)  # the loader's default
    monkeypatch.setenv("PRUNETUNE_DATA", "rel")
    assert absolute(Where(storage="/s")).data_root == str(tmp_path / "rel")
    assert absolute(Where(storage="/s", data_root="s3://b/data")).data_root == "s3://b/data"


# ----------------------------------------------------------------------------- fake GPUs


@pytest.fixture(scope="module")
def fake_gpus():
    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def recording_run_fn(log_dir, wait_for):
    """A stand-in for run_cell: records Ray's GPU ids and the device it was given, waits until
    `wait_for` trials have started (a barrier: it only passes if they run concurrently), writes a row."""

    def run_fn(cell, where, *, device, report, hvp_backend_factory, backend):
        from sweeps import store as st
        from sweeps.trial import identity_columns

        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(log_dir, f"{cell.cell_id}.start"), "w"):
            pass
        deadline = time.monotonic() + 90
        while len([f for f in os.listdir(log_dir) if f.endswith(".start")]) < wait_for:
            if time.monotonic() > deadline:
                raise TimeoutError("the other trials never started concurrently")
            time.sleep(0.1)
        info = {"gpu_ids": [str(g) for g in ray.get_gpu_ids()], "device": device,
                "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
        with open(os.path.join(log_dir, f"{cell.cell_id}.json"), "w") as f:
            json.dump(info, f)
        row = {**identity_columns(cell), "status": "ok", "backend": backend}
        st.write_cell(where.storage, cell.sweep, cell.cell_id, {"trials": [row]})
        return row

    return run_fn


def read_logs(log_dir):
    return [json.load(open(os.path.join(log_dir, f))) for f in sorted(os.listdir(log_dir)) if f.endswith(".json")]


@pytest.mark.slow  # real Ray: a local cluster and Tune trials (make test-fast leaves it out)
def test_fractional_gpus_pack_as_declared(fake_gpus, tmp_path):
    """4 trials at 0.5 GPU on 2 fake GPUs run at the same time, two per GPU, each on cuda:0."""
    spec = make_spec(tmp_path, sparsity=[0.5, 0.6, 0.7, 0.8], resources={"gpus": 0.5})
    cells = expand(spec)
    logs = str(tmp_path / "logs")
    backend = RayBackend.from_spec(spec, run_fn=recording_run_fn(logs, wait_for=4))
    summary = backend.run(cells, Where(storage=spec.storage), progress=quiet_progress(4))
    assert summary.ok and sorted(summary.done) == sorted(c.cell_id for c in cells)
    infos = read_logs(logs)
    assert len(infos) == 4
    assert all(len(i["gpu_ids"]) == 1 and i["device"] == "cuda:0" for i in infos)
    per_gpu = sorted(sum(i["gpu_ids"] == [g] for i in infos) for g in ("0", "1"))
    assert per_gpu == [2, 2]


@pytest.mark.slow  # real Ray: a local cluster and Tune trials (make test-fast leaves it out)
def test_whole_gpus_are_exclusive_and_cpu_trials_stay_on_cpu(fake_gpus, tmp_path):
    spec = make_spec(tmp_path, sparsity=[0.5, 0.8], resources={"gpus": 1})
    logs = str(tmp_path / "logs")
    RayBackend.from_spec(spec, run_fn=recording_run_fn(logs, wait_for=2)).run(
        expand(spec), Where(storage=spec.storage), progress=quiet_progress(2))
    ids = sorted(i["gpu_ids"][0] for i in read_logs(logs))
    assert ids == ["0", "1"]  # both ran at once (barrier), so each had its own GPU

    cpu_spec = make_spec(tmp_path / "cpu", sparsity=[0.5])
    cpu_logs = str(tmp_path / "cpu_logs")
    RayBackend.from_spec(cpu_spec, run_fn=recording_run_fn(cpu_logs, wait_for=1)).run(
        expand(cpu_spec), Where(storage=cpu_spec.storage), progress=quiet_progress(1))
    # Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a 0-GPU task, so only get_gpu_ids() tells
    [info] = read_logs(cpu_logs)
    assert info["gpu_ids"] == [] and info["device"] == "cpu"


@pytest.mark.slow  # real Ray: a local cluster and Tune trials (make test-fast leaves it out)
def test_trials_are_named_by_cell_id_and_failures_are_named(fake_gpus, tmp_path):
    spec = make_spec(tmp_path)
    cells = expand(spec)

    def run_fn(cell, where, **kw):
        if cell.sparsity == 0.8:
            raise RuntimeError("boom in the trial process")
        return recording_run_fn(str(tmp_path / "logs"), 1)(cell, where, **kw)

    backend = RayBackend.from_spec(spec, RayOptions(max_failures=0), run_fn=run_fn)
    summary = backend.run(cells, Where(storage=spec.storage), progress=quiet_progress(2))
    bad = [c.cell_id for c in cells if c.sparsity == 0.8]
    assert summary.failed == bad and summary.done == [c.cell_id for c in cells if c.sparsity == 0.5]
    assert "RuntimeError: boom in the trial process" in summary.errors[bad[0]]
    run_dir = next(p for p in os.scandir(tune_root(spec.storage, "rt")))
    assert {c.cell_id for c in cells} <= set(os.listdir(run_dir.path))


# ----------------------------------------------------------------------------- the real pipeline


COMPARE_SKIP = {"train_seconds", "prune_seconds", "hessian_seconds", "total_seconds", "started_at",
                "finished_at", "prunetune_version", "git_commit", "torch_version", "ray_version", "device",
                "host", "backend"}


def comparable(row):
    return {k: v for k, v in row.items() if k not in COMPARE_SKIP}


@pytest.mark.slow
def test_serial_and_ray_write_the_same_trials_rows(fake_gpus, tmp_path):
    """Same spec through both backends (Ray with 2 data-parallel HVP workers): same rows.

    One post-training cell covers the whole pipeline: dense training (cache), pruning, finetuning,
    sparsity report and SLQ of the pruned model."""
    import torch

    raw = dict(pruner=["magnitude/global"], sparsity=[0.8],
               hessian={"enabled": True, "probes": 2, "iterations": 4, "max_samples": 96, "workers": 2})
    serial_spec, ray_spec = make_spec(tmp_path / "s", **raw), make_spec(tmp_path / "r", **raw)
    cells = expand(serial_spec)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Ray trials get OMP_NUM_THREADS = their CPUs (1): same float sums
    try:
        SerialBackend().run(cells, Where(storage=serial_spec.storage), progress=quiet_progress(1))
    finally:
        torch.set_num_threads(threads)
    summary = RayBackend.from_spec(ray_spec).run(expand(ray_spec), Where(storage=ray_spec.storage),
                                                 progress=quiet_progress(1))
    assert summary.ok and len(summary.done) == 1
    for cell in cells:
        s = store.trial_row(serial_spec.storage, "rt", cell.cell_id)
        r = store.trial_row(ray_spec.storage, "rt", cell.cell_id)
        assert s["backend"] == "serial" and r["backend"] == "ray" and r["device"] == "cpu"
        s, r = comparable(s), comparable(r)
        assert s.keys() == r.keys()
        for k in s:
            if isinstance(s[k], float) and not math.isnan(s[k]):
                assert r[k] == pytest.approx(s[k], rel=1e-5, abs=1e-7), k
            else:
                assert r[k] == s[k] or (s[k] != s[k] and r[k] != r[k]), k
        assert s["hessian_trace"] is not None and s["dense_test_acc"] is not None


@pytest.mark.slow  # real Ray: a local cluster and Tune trials (make test-fast leaves it out)
def test_resume_reruns_failed_and_missing_cells_only(fake_gpus, tmp_path):
    """A finished sweep with one failed cell: `resume` restores the Tune experiment (nothing left in
    it to run), then runs the stale failed cell afresh; the ok cell's file is never rewritten."""
    from sweeps.paths import locate_sweep
    from sweeps.resume import resume
    from sweeps.runner import stored_spec
    from sweeps.spec import dump_yaml

    spec = make_spec(tmp_path)
    store.write_spec(spec.storage, spec.name, dump_yaml(spec))
    cells = expand(spec)
    good = recording_run_fn(str(tmp_path / "logs"), 1)

    def failing(cell, where, **kw):
        if cell.sparsity == 0.8:
            from sweeps import store as st
            from sweeps.trial import identity_columns

            row = {**identity_columns(cell), "status": "failed", "error": "RuntimeError: flaky"}
            st.write_cell(where.storage, cell.sweep, cell.cell_id, {"trials": [row]})
            return row
        return good(cell, where, **kw)

    first = RayBackend.from_spec(spec, run_fn=failing).run(cells, Where(storage=spec.storage),
                                                             progress=quiet_progress(2))
    [bad] = first.failed
    assert first.errors[bad] == "RuntimeError: flaky"
    ok_id = first.done[0]
    ok_file = os.path.join(spec.storage, "rt", "trials", f"{ok_id}.parquet")
    stamp = os.stat(ok_file).st_mtime_ns

    stored = stored_spec(locate_sweep(os.path.join(spec.storage, "rt")))
    summary = resume(stored, run_fn=good, progress=quiet_progress(2))
    assert summary.ok and summary.done == [bad] and summary.skipped == [ok_id]
    assert store.trial_row(spec.storage, "rt", bad)["status"] == "ok"
    assert os.stat(ok_file).st_mtime_ns == stamp
    assert len(read_arrow("rt", "trials", storage=spec.storage, use_cache=False)) == 2
