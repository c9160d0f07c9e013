"""Real Ray nodes as separate processes on 127.0.0.1, for the cluster tests (not a test module).

Each node is one `ray start --block` process with its own temp dir and its own free ports (no Ray
default port is used: other Rays may run on the machine). Everything a node starts — GCS, raylet,
dashboard, agents, workers, a job's driver — descends from that process; a watcher thread records
each descendant (pid + start time) as it appears, so a test ends exactly the processes it started,
also those orphaned by a kill, and nothing else (never `ray stop`, never by name).

    with LocalCluster(tmp, env) as cluster:
        head = cluster.start_head(num_cpus=1)
        worker = cluster.add_worker(num_cpus=1)
        cluster.job_submit("prunetune", "run", ...)     # `ray job submit --working-dir <repo>`
        worker.kill_raylet()                            # a node lost
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from test_ray_faults import _cmd, _start_time, descendants, identities, kill_all

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def free_ports(n: int, avoid: Sequence[int] = ()) -> list[int]:
    """n distinct ports free on 127.0.0.1 right now (all bound at once, then released), none in
    `avoid`: the ports of an earlier call are free again until Ray binds them, and the kernel handed
    a head's GCS port out again as its node-manager port (Ray refused to start)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)  # held until the end, so never drawn twice
            if s.getsockname()[1] not in avoid:
                ports.append(s.getsockname()[1])
        return ports
    finally:
        for s in socks:
            s.close()


def node_env(base: dict[str, str]) -> dict[str, str]:
    """What every node and client of a test runs with: this checkout first on the path, the venv's
    `ray`/`prunetune` on PATH, no usage stats, and a fast verdict on a dead node (seconds, not the
    default ~30 s), so that a lost node's trials are retried within the test's time."""
    return {**os.environ, **base, "PYTHONPATH": str(ROOT), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
            "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@dataclass
class Node:
    """One `ray start --block` process and every process it started (recorded as they appear)."""

    name: str
    proc: subprocess.Popen
    temp_dir: Path
    log: Path
    seen: set = field(default_factory=set)   # (pid, start time) of the node's processes

    def record(self) -> None:
        if self.proc.poll() is None:
            self.seen.update(identities([self.proc.pid, *descendants(self.proc.pid)]))

    def live(self) -> list[tuple[int, str]]:
        return [(p, t) for p, t in self.seen if t is not None and _start_time(p) == t]

    def pids_named(self, prefix: str) -> list[int]:
        """Live processes of this node whose command line starts with `prefix`."""
        self.record()
        return [p for p, _ in self.live() if _cmd(p).startswith(prefix)]

    def raylet(self) -> int:
        [pid] = [p for p, _ in self.live() if Path(f"/proc/{p}/comm").read_text().strip() == "raylet"]
        return pid

    def kill_raylet(self) -> None:
        """The node is lost: its raylet dies (`ray start --block` then ends the rest of the node)."""
        os.kill(self.raylet(), signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL every process of the node at once (a machine that vanished)."""
        self.record()
        kill_all(self.live())

    def wait_started(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while "block forever" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        self.record()


class LocalCluster:
    """Head and worker nodes on 127.0.0.1 (see the module docstring); a context manager that
    SIGKILLs every process it recorded on exit."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None):
        self.tmp, self.env = Path(tmp), node_env(env or {})
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.nodes: list[Node] = []
        self.gcs_port = self.dashboard_port = None
        self.ports: list[int] = []  # every port handed to a node of this cluster
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    # -- lifetime

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for node in list(self.nodes):
                node.record()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        self._stop.set()
        self._watcher.join(timeout=5)
        for node in self.nodes:
            node.record()
            kill_all(node.live())
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.kill()
            node.proc.wait(timeout=30)
        time.sleep(0.5)  # dying processes may still write a last log line
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)

    # -- nodes

    def _start(self, name: str, args: list[str]) -> Node:
        temp_dir = Path(os.path.join("/tmp", f"rn{os.getpid()}{name}{len(self.nodes)}"))  # short: socket paths
        temp_dir.mkdir(exist_ok=True)
        log = self.tmp / f"{name}.log"
        ports = free_ports(6, avoid=self.ports)
        self.ports += ports
        agent, grpc, metrics, runtime_env, node_manager, object_manager = ports
        cmd = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
               "--object-store-memory=100000000", "--num-gpus=0", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={grpc}",
               f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
               f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}", *args]
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp)
        node = Node(name, proc, temp_dir, log)
        self.nodes.append(node)
        node.wait_started()
        return node

    def start_head(self, num_cpus: float = 1) -> Node:
        self.gcs_port, self.dashboard_port, client = head_ports = free_ports(3, avoid=self.ports)
        self.ports += head_ports
        head = self._start("head", ["--head", f"--port={self.gcs_port}", f"--num-cpus={num_cpus}",
                                    "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                                    f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={client}"])
        self.wait_dashboard()
        return head

    def add_worker(self, num_cpus: float = 1) -> Node:
        before = self.alive_nodes()
        node = self._start("worker", [f"--address=127.0.0.1:{self.gcs_port}", f"--num-cpus={num_cpus}"])
        deadline = time.monotonic() + 60
        while self.alive_nodes() <= before:
            assert time.monotonic() < deadline, "the worker node never registered"
            time.sleep(0.5)
        return node

    # -- clients

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def get(self, path: str, token: str | None = None) -> bytes:
        """GET from the dashboard, with the cluster's token when it has one (or `token`)."""
        token = token if token is not None else self.env.get("RAY_AUTH_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with urllib.request.urlopen(urllib.request.Request(f"{self.dashboard_url}{path}", headers=headers),
                                    timeout=10) as r:
            return r.read()

    def wait_dashboard(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get("/api/version")
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the dashboard never answered")
            time.sleep(0.5)

    def alive_nodes(self) -> int:
        """Nodes the GCS reports alive (the dashboard's state API)."""
        data = json.loads(self.get("/api/v0/nodes?limit=100"))
        return sum(n.get("state") == "ALIVE" for n in data["data"]["result"]["result"])

    @staticmethod
    def ray_cmd(*args: str) -> list[str]:
        return [RAY, *args]

    def ray(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600,
            check: bool = False) -> subprocess.CompletedProcess:
        """A `ray` CLI command run from the repository root, as a user would."""
        return subprocess.run(self.ray_cmd(*args), env={**self.env, **(env or {})}, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, check=check)

    def job_submit(self, *entrypoint: str, wait: bool = True, **kw) -> subprocess.CompletedProcess:
        """`ray job submit --address <dashboard> --working-dir . -- <entrypoint>` from the repository root."""
        return self.ray("job", "submit", "--address", self.dashboard_url, "--working-dir", ".",
                        *([] if wait else ["--no-wait"]), "--", *entrypoint, **kw)


__all__ = ["LocalCluster", "Node", "free_ports", "node_env"]
