"""Fault injection on the Ray backend: every scenario must end with exactly one trials row per cell,
and no cell that had finished before the fault may run again (its trials file keeps its inode and
mtime; run counters count first-epoch reports per cell).

    trial worker SIGKILLed mid-training  → Tune retries it (max_failures)
    driver SIGKILLed / SIGINTed mid-sweep → `resume` (Tune restore or a fresh run of what is missing)
    an HVP worker's node removed mid-SLQ  → the trial fails cleanly and is retried on a new node

Processes are ended only by the PIDs these tests started (the driver and its descendants, the
Ray worker that a test callback was told about), never by name.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import ray
from ray import tune  # noqa: E402

from sweeps import store  # noqa: E402
from sweeps.backends.ray_tune import RayBackend, RayOptions  # noqa: E402
from sweeps.cells import expand  # noqa: E402
from sweeps.progress import Progress  # noqa: E402
from sweeps.spec import build_spec  # noqa: E402
from sweeps.trial import Where  # noqa: E402
from analysis.load import read_arrow  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def raw_spec(name, **changes):
    raw = {"name": name, "model": "lenet300100", "dataset": "digits", "pruner": ["random/uniform"],
           "sparsity": [0.5, 0.8], "seed": [0], "train": {"epochs": 2, "batch_size": 128}}
    raw.update(changes)
    return raw


def quiet(n):
    import io

    return Progress(n, stream=io.StringIO(), tty=False)


def trial_files(storage, sweep):
    """cell_id → (inode, mtime_ns) of every finished cell's trials file."""
    d = Path(storage) / sweep / "trials"
    return {p.stem: (p.stat().st_ino, p.stat().st_mtime_ns) for p in d.glob("*.parquet")} if d.exists() else {}


def assert_one_row_per_cell(storage, sweep, cells):
    t = read_arrow(sweep, "trials", storage=storage, use_cache=False).to_pylist()
    assert sorted(r["cell_id"] for r in t) == sorted(c.cell_id for c in cells)
    assert all(r["status"] == "ok" for r in t), [(r["cell_id"], r["error"]) for r in t]


# ----------------------------------------------------------------------------- /proc helpers


def _ppid(pid):
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _cmd(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid):
    parents = {int(p): _ppid(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    out, frontier = [], {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier}
        out += sorted(frontier)
    return out


def _start_time(pid):
    """Field 22 of /proc/PID/stat: with the pid, it identifies one process (pids get reused)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def identities(pids):
    return [(p, _start_time(p)) for p in pids]


def kill_all(procs):
    """SIGKILL the processes we recorded, each only if it is still the same process."""
    for pid, started in procs:
        if started is not None and _start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ----------------------------------------------------------------------------- trial worker killed


class KillFirstTrial(tune.Callback):
    """SIGKILLs the process of the first trial at its first epoch report (once); counts runs."""

    def __init__(self):
        self.killed = None
        self.first_epochs: dict[str, int] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("epoch") == 0 and "phase" in result:
            cid = result["cell_id"]
            self.first_epochs[cid] = self.first_epochs.get(cid, 0) + 1
            if self.killed is None:
                self.killed = cid
                os.kill(result["pid"], signal.SIGKILL)  # the trial's Ray worker, reported by Tune


def test_trial_worker_sigkilled_mid_training_is_retried(tmp_path):
    spec = build_spec(raw_spec("kill-worker", train={"epochs": 3, "batch_size": 128}),
                      storage=str(tmp_path / "res"), backend="ray")
    cells = expand(spec)
    killer = KillFirstTrial()
    backend = RayBackend.from_spec(spec, RayOptions(num_cpus=2, max_concurrent=1, max_failures=2),
                                   callbacks=[killer])
    summary = backend.run(cells, Where(storage=spec.storage), progress=quiet(2))
    assert summary.ok and sorted(summary.done) == sorted(c.cell_id for c in cells)
    assert not ray.is_initialized()  # the backend started Ray, so it shut it down
    other = next(c.cell_id for c in cells if c.cell_id != killer.killed)
    assert killer.first_epochs == {killer.killed: 2, other: 1}
    assert_one_row_per_cell(spec.storage, spec.name, cells)


# ----------------------------------------------------------------------------- driver killed


def cli(*args):
    return [sys.executable, "-m", "sweeps.cli", *args]


def env():
    return {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
            "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}


# Cells of a few seconds each: with sub-second cells the last two could finish while Tune was still
# answering the interrupt, and the driver then rightly exits 0 (seen once on a quiet machine).
INTERRUPTIBLE = {"sparsity": [0.5, 0.7, 0.9], "train": {"epochs": 60, "batch_size": 32}}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "sigint"])
def test_driver_interrupted_mid_sweep_then_resume(tmp_path, sig):
    name = f"driver-{sig.name.lower()}"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(raw_spec(name, **INTERRUPTIBLE)))
    storage = str(tmp_path / "res")
    log = open(tmp_path / "run.log", "w")
    driver = subprocess.Popen(cli("run", str(spec_file), "--backend", "ray", "--storage", storage, "--num-cpus", "2",
                                  "--max-concurrent", "1"), cwd=tmp_path, env=env(), stdout=log, stderr=log)
    started = []
    try:
        deadline = time.monotonic() + 300
        while not trial_files(storage, name):
            assert driver.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no cell finished in time"
            time.sleep(0.2)
        started = identities(descendants(driver.pid))
        before = trial_files(storage, name)
        driver.send_signal(sig)
        rc = driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        time.sleep(1)
        kill_all(started)  # Ray's agents outlive a SIGKILLed driver
    assert rc != 0
    cells = expand(build_spec(raw_spec(name, **INTERRUPTIBLE), storage=storage))
    assert len(before) < len(cells)

    resumed = subprocess.run(cli("resume", str(Path(storage) / name), "--num-cpus", "2"), cwd=tmp_path,
                             env=env(), capture_output=True, text=True, timeout=400)
    (tmp_path / "resume.log").write_text(resumed.stderr)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "0 failed" in resumed.stderr
    runs = list((Path(storage) / "_tune" / name).glob("run-*"))
    if sig == signal.SIGINT:  # Tune saved its state cleanly: the restore alone finished the sweep
        assert len(runs) == 1 and "afresh" not in resumed.stderr
    after = trial_files(storage, name)
    assert {cid: after[cid] for cid in before} == before  # finished cells were not run again
    assert_one_row_per_cell(storage, name, cells)

    again = subprocess.run(cli("resume", name, "--storage", storage, "--num-cpus", "2"), cwd=tmp_path,
                           env=env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and f"{len(cells)} already done" in again.stderr
    assert trial_files(storage, name) == after


# ----------------------------------------------------------------------------- two nodes


@contextlib.contextmanager
def running_cluster(workers):
    """A head with no CPUs (nothing runs on it, as in cluster.yaml) and `workers` 2-CPU nodes,
    connected for the test and shut down after it (only what this test started)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=2) for _ in range(workers)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def two_nodes():
    with running_cluster(2) as started:
        yield started


@pytest.fixture
def three_nodes():
    """After one node is removed, two remain: room for the retried trial's three bundles."""
    with running_cluster(3) as started:
        yield started


def slq_spec(tmp_path, name, **hessian):
    h = {"enabled": True, "probes": 2, "iterations": 8, "max_samples": 200, "workers": 2, **hessian}
    return build_spec(raw_spec(name, pruner=["magnitude/global"], sparsity=[0.8],
                               train={"epochs": 1, "batch_size": 128}, hessian=h),
                      storage=str(tmp_path / "res"), backend="ray")


def test_two_node_run_spreads_hvp_workers_over_both_nodes(two_nodes, tmp_path):
    _, nodes = two_nodes
    spec = slq_spec(tmp_path, "two-nodes")
    backend = RayBackend.from_spec(spec)
    summary = backend.run(expand(spec), Where(storage=spec.storage), progress=quiet(1))
    assert summary.ok and len(summary.done) == 1
    hvp_nodes = set(backend.results[0].metrics["hvp_nodes"].split(","))
    assert hvp_nodes == {n.node_id for n in nodes}  # 3 one-CPU bundles cannot fit on one 2-CPU node
    row = store.trial_row(spec.storage, spec.name, summary.done[0])
    assert row["slq_probes"] == 2 and row["hessian_trace"] is not None


class CountRecoveries(tune.Callback):
    def __init__(self):
        self.recovered = 0

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.recovered += 1


def _node_of(pid, raylets):
    while pid and pid > 1:
        if pid in raylets:
            return raylets[pid]
        pid = _ppid(pid)
    return None


def remove_an_hvp_node(cluster, nodes, done, removed):
    """Once HVP workers run, remove a node that hosts one of them but not the trial."""
    while not done.is_set() and not removed:
        raylets = {n.all_processes["raylet"][0].process.pid: n for n in nodes}
        procs = [(int(p), _cmd(int(p))) for p in os.listdir("/proc") if p.isdigit()]
        workers = {_node_of(p, raylets) for p, c in procs if c.startswith("ray::HVPShardWorker")}
        trial = {_node_of(p, raylets) for p, c in procs if c.startswith("ray::ImplicitFunc")}
        victims = [n for n in workers - trial if n is not None]
        if victims:
            cluster.remove_node(victims[0], allow_graceful=False)
            removed.append(victims[0])
            return
        time.sleep(0.05)


def test_hvp_node_removed_mid_slq_fails_the_trial_cleanly_and_it_is_retried(three_nodes, tmp_path):
    cluster, nodes = three_nodes
    spec = slq_spec(tmp_path, "node-lost", iterations=40, max_samples=800)
    counter = CountRecoveries()
    backend = RayBackend.from_spec(spec, RayOptions(max_failures=2), callbacks=[counter])
    done, removed = threading.Event(), []
    killer = threading.Thread(target=remove_an_hvp_node, args=(cluster, nodes, done, removed), daemon=True)
    killer.start()
    try:
        summary = backend.run(expand(spec), Where(storage=spec.storage), progress=quiet(1))
    finally:
        done.set()
        killer.join(timeout=30)
    assert removed, "no HVP worker was seen on a removable node"
    assert counter.recovered >= 1
    assert summary.ok and len(summary.done) == 1
    row = store.trial_row(spec.storage, spec.name, summary.done[0])
    assert row["status"] == "ok" and row["error"] is None and row["slq_probes"] == 2
    assert removed[0].node_id not in backend.results[0].metrics["hvp_nodes"]
