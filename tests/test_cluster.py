"""The README's cluster workflow for real, on one machine: Ray nodes as separate `ray start`
processes on 127.0.0.1, sweeps submitted with `ray job submit --working-dir .`, nodes lost.

    a head and a worker node; `ray job submit -- prunetune run`: one trials row per cell; status agrees
    the worker node's raylet SIGKILLed while its trial runs: retried on the head, one row per cell
    the head SIGKILLed mid-sweep; a fresh cluster; `ray job submit -- prunetune resume`: finished
        cells keep their files (same bytes, same mtime), none runs again
    token authentication: a client without the token (or with a wrong one) is refused

Each test starts its own nodes (own temp dirs, own ports: tests/ray_nodes.py) and ends exactly the
processes they started. Cells are tiny (LeNet-300-100 on digits); where a fault must land while a
trial runs, cells train for a few seconds. The faster unit checks of the same workflow (trial
names, the `cluster` extra) come first.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
import tomllib
import urllib.error
from pathlib import Path

import pytest
import yaml

import ray
import ray.dashboard.modules.job.sdk  # noqa: F401  ray[default] (the cluster extra): `ray job submit`, the dashboard

from sweeps import store  # noqa: E402
from sweeps.backends.ray_tune import TABLE_METRICS, TrialNames, config_cell_id, trial_label  # noqa: E402
from sweeps.cells import expand  # noqa: E402
from sweeps.spec import build_spec  # noqa: E402
from ray_nodes import LocalCluster  # noqa: E402
from analysis.load import read_arrow  # noqa: E402

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- no cluster needed


def test_trial_label_names_model_dataset_pruner_target_sparsity_and_seed():
    spec = build_spec({"name": "n", "model": "lenet300100", "dataset": "digits",
                       "pruner": ["magnitude/global"], "sparsity": [0.99], "seed": [2], "target": ["effective"]},
                      storage="/tmp/unused")
    [cell] = expand(spec)
    assert trial_label(cell.to_dict()) == "lenet300100/digits magnitude/global effective s=0.99 seed=2"
    assert trial_label({"model": "fc5", "dataset": "cifar10", "pruner": "lomp", "target": "direct",
                        "sparsity": None, "seed": 0}) == "fc5/cifar10 lomp direct limit seed=0"

    class Trial:  # what Tune hands to a trial_name_creator
        config = {"cell_id": cell.cell_id}

    names = TrialNames({cell.cell_id: trial_label(cell.to_dict())})
    assert names(Trial()) == "lenet300100/digits magnitude/global effective s=0.99 seed=2"
    Trial.config = {"cell_id": "feedfacefeedface"}
    assert names(Trial()) == "feedfacefeedface"  # a cell the names do not know keeps its id
    # experiments stored before the grid was over ids carry the whole cell
    assert config_cell_id({"cell": cell.to_dict()}) == config_cell_id({"cell_id": cell.cell_id}) == cell.cell_id
    assert TABLE_METRICS == ("epoch", "train_loss", "test_loss", "test_acc")


def test_the_cluster_extra_is_what_the_readme_and_cluster_yaml_install():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray_tune = next(d for d in project["dependencies"] if d.startswith("ray[tune]"))
    cluster = project["optional-dependencies"]["cluster"]
    assert f"ray[default]{ray_tune[len('ray[tune]'):]}" in cluster and "boto3" in cluster  # same pin
    dev_extras = {e for d in project["optional-dependencies"]["dev"] if d.startswith("prunetune[")
                  for e in d[len("prunetune["):-1].split(",")}
    assert "cluster" in dev_extras  # CI runs these tests
    setup = yaml.safe_load((ROOT / "cluster.yaml").read_text())["setup_commands"]
    assert any(re.search(r'pip install .*-e ~/prunetune"\[cluster\]"', c) for c in setup)
    assert 'pip install -e ".[cluster]"' in (ROOT / "README.md").read_text()


# ----------------------------------------------------------------------------- helpers


def write_spec(tmp_path, name, **changes):
    raw = {"name": name, "model": "lenet300100", "dataset": "digits", "pruner": ["random/uniform"],
           "sparsity": [0.5, 0.8], "seed": [0], "train": {"epochs": 1, "batch_size": 128}, **changes}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, expand(build_spec(raw, storage=str(tmp_path / "res")))


def files(storage, sweep):
    """cell_id → (bytes, mtime_ns) of every finished cell's trials file."""
    d = Path(storage) / sweep / "trials"
    return {p.stem: (p.read_bytes(), p.stat().st_mtime_ns) for p in d.glob("*.parquet")} if d.exists() else {}


def assert_one_ok_row_per_cell(storage, sweep, cells):
    rows = read_arrow(sweep, "trials", storage=storage, use_cache=False).to_pylist()
    assert sorted(r["cell_id"] for r in rows) == sorted(c.cell_id for c in cells)  # no duplicate, none missing
    assert all(r["status"] == "ok" and r["backend"] == "ray" for r in rows), [(r["cell_id"], r["error"]) for r in rows]


def job_log(result):
    return result.stdout + result.stderr


# Cells of a few seconds: a fault must land while one runs.
SLOW = {"train": {"epochs": 8, "batch_size": 32}}


# ----------------------------------------------------------------------------- the workflow


def test_job_submit_to_a_head_and_a_worker_node_then_status(tmp_path, capsys):
    spec, cells = write_spec(tmp_path, "jobs")
    storage = str(tmp_path / "res")
    with LocalCluster(tmp_path) as cluster:
        cluster.start_head(num_cpus=1)
        cluster.add_worker(num_cpus=1)
        assert cluster.alive_nodes() == 2
        job = cluster.job_submit("prunetune", "run", str(spec), "--backend", "ray", "--storage", storage)
    (tmp_path / "job.log").write_text(job_log(job))
    assert job.returncode == 0, job_log(job)[-4000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", job_log(job))
    assert "sweep 'jobs': 2 done, 0 failed, 0 already done" in job_log(job)
    assert "lenet300100/digits random/uniform direct s=0.5 seed=0" in job_log(job)  # readable trial names
    assert_one_ok_row_per_cell(storage, "jobs", cells)
    from sweeps.cli import main

    assert main(["status", "jobs", "--storage", storage]) == 0
    assert "2 cells — 2 done, 0 diverged, 0 failed, 0 pending" in capsys.readouterr().out


def test_worker_node_lost_mid_sweep_the_sweep_completes_on_the_head(tmp_path):
    spec, cells = write_spec(tmp_path, "nodelost", sparsity=[0.5, 0.7, 0.9], **SLOW)
    storage = str(tmp_path / "res")
    with LocalCluster(tmp_path) as cluster:
        cluster.start_head(num_cpus=1)
        worker = cluster.add_worker(num_cpus=1)
        with open(tmp_path / "job.log", "w") as log:
            job = subprocess.Popen(cluster.ray_cmd("job", "submit", "--address", cluster.dashboard_url,
                                                   "--working-dir", ".", "--", "prunetune", "run", str(spec),
                                                   "--backend", "ray", "--storage", storage, "--max-failures", "3"),
                                   env=cluster.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while not worker.pids_named("ray::ImplicitFunc"):  # a trial's process on the worker node
                assert job.poll() is None, (tmp_path / "job.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "no trial ever ran on the worker node"
                time.sleep(0.2)
            done_before = files(storage, "nodelost")
            worker.kill_raylet()
            rc = job.wait(timeout=400)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
    text = (tmp_path / "job.log").read_text()
    assert rc == 0, text[-4000:]
    assert len(done_before) < len(cells)  # the node was lost mid-sweep
    assert re.search(r"Trial lenet300100/digits random/uniform direct s=0\.\d seed=0 errored", text), text[-4000:]
    assert "sweep 'nodelost': 3 done, 0 failed, 0 already done" in text
    assert_one_ok_row_per_cell(storage, "nodelost", cells)


def test_head_lost_mid_sweep_then_resume_on_a_fresh_cluster(tmp_path):
    spec, cells = write_spec(tmp_path, "headlost", sparsity=[0.5, 0.6, 0.7, 0.8], **SLOW)
    storage = str(tmp_path / "res")
    with LocalCluster(tmp_path / "a") as first:
        head = first.start_head(num_cpus=1)
        worker = first.add_worker(num_cpus=1)
        with open(tmp_path / "run.log", "w") as log:
            job = subprocess.Popen(first.ray_cmd("job", "submit", "--address", first.dashboard_url, "--working-dir",
                                                 ".", "--", "prunetune", "run", str(spec), "--backend", "ray",
                                                 "--storage", storage),
                                   env=first.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not files(storage, "headlost"):
                assert job.poll() is None, (tmp_path / "run.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "no cell finished in time"
                time.sleep(0.1)
            before = files(storage, "headlost")
            head.kill()      # the head machine is gone: GCS, dashboard, the job's driver, its trials
            worker.kill()    # and with it the rest of the old cluster
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
    assert 0 < len(before) < len(cells)

    with LocalCluster(tmp_path / "b") as fresh:
        fresh.start_head(num_cpus=2)
        resumed = fresh.job_submit("prunetune", "resume", "headlost", "--storage", storage)
    (tmp_path / "resume.log").write_text(job_log(resumed))
    assert resumed.returncode == 0, job_log(resumed)[-4000:]
    done, failed, skipped = map(int, re.search(r"sweep 'headlost': (\d+) done, (\d+) failed, (\d+) already done",
                                               job_log(resumed)).groups())
    assert failed == 0 and skipped >= len(before) and done + skipped == len(cells)
    after = files(storage, "headlost")
    assert {cid: after[cid] for cid in before} == before  # same bytes, same mtime: never run again
    assert_one_ok_row_per_cell(storage, "headlost", cells)


def test_token_auth_refuses_clients_without_the_token(tmp_path):
    token = secrets.token_hex(16)
    home = tmp_path / "home"  # no ~/.ray/auth_token of the developer's can leak in
    home.mkdir()
    with LocalCluster(tmp_path, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "HOME": str(home)}) as cluster:
        cluster.start_head(num_cpus=0)
        without = {"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": ""}
        wrong = {"RAY_AUTH_TOKEN": secrets.token_hex(16)}
        for bad in ("", wrong["RAY_AUTH_TOKEN"]):  # the dashboard's HTTP API (jobs, state)
            with pytest.raises(urllib.error.HTTPError, match=r"HTTP Error 40[13]"):  # 401 none, 403 wrong
                cluster.get("/api/jobs/", token=bad)
        for client in (without, wrong):
            gcs = cluster.ray("status", "--address", cluster.gcs_address, env=client, timeout=120)
            assert gcs.returncode != 0 and "Unauthenticated" in job_log(gcs), job_log(gcs)[-2000:]
            job = cluster.ray("job", "submit", "--address", cluster.dashboard_url, "--", "echo", "refused",
                              env=client, timeout=120)
            assert job.returncode != 0 and "AuthenticationError" in job_log(job), job_log(job)[-2000:]
        assert cluster.ray("status", "--address", cluster.gcs_address, timeout=120).returncode == 0
        ok = cluster.job_submit("echo", "accepted", timeout=300)
    assert ok.returncode == 0 and "accepted" in job_log(ok), job_log(ok)[-2000:]
