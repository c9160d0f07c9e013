"""bench/gpu_check.py where no GPU is lent: it refuses in one line, finds the CUDA-only tests, and
the code it runs (the CLI, the serial backend) imports without Ray — the GPU machine has none."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402

NO_RAY = '''import sys
class _NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r} (this machine has no Ray)")
sys.meta_path.insert(0, _NoRay())
'''


def python(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_without_cuda_one_line_exit_2_and_nothing_written(tmp_path):
    out = tmp_path / "report"
    p = python("bench/gpu_check.py", "--out", str(out), env={"CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == gpu_check.EXIT_NO_CUDA == 2
    assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1
    assert p.stderr.startswith("gpu-check: no CUDA device here (torch ") and "Traceback" not in p.stderr
    assert not out.exists()


def test_the_cuda_only_tests_are_found_by_their_skip_marker():
    ids = gpu_check.cuda_tests()
    assert "tests/test_sparsity.py::test_cuda_matches_cpu" in ids
    for node_id in ids:
        path, name = node_id.split("::")
        [fn] = [n for n in ast.walk(ast.parse((ROOT / path).read_text()))
                if isinstance(n, ast.FunctionDef) and n.name == name]
        assert any("cuda.is_available" in ast.unparse(d) for d in fn.decorator_list)


@pytest.mark.slow  # subprocesses importing torch
def test_the_cli_and_the_serial_backend_run_without_ray(tmp_path):
    """What gpu_check runs on a machine without Ray: `prunetune run` on the serial backend."""
    (tmp_path / "sitecustomize.py").write_text(NO_RAY)
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    assert "this machine has no Ray" in python("-c", "import ray", env=env).stderr  # the block works
    spec = tmp_path / "one.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "noray", "model": "lenet300100", "dataset": "synthetic", "pruner": ["random/uniform"],
        "sparsity": [0.5], "seed": [0], "train": {"epochs": 1, "batch_size": 32},
        "data": {"options": {"input_shape": [1, 4, 4], "num_classes": 3, "n_train": 64, "n_test": 32}}}))
    run = python("-m", "sweeps.cli", "run", str(spec), "--storage", str(tmp_path / "res"), env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "1 done, 0 failed" in run.stderr
    assert python("bench/gpu_check.py", "--help", env=env).returncode == 0
