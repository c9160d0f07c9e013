"""`prunetune`: validate, status, demo (on a tiny spec), data download errors, the console entry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweeps.cli import run as cli_run
from sweeps.cli import main

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {"input_shape": [1, 4, 4], "num_classes": 3, "n_train": 96, "n_test": 48}


def tiny_spec(tmp_path: Path, **changes) -> Path:
    raw = {"name": "tiny", "model": "lenet300100", "dataset": "synthetic",
           "pruner": ["dense", "magnitude/global"], "sparsity": [0.5, 0.9], "seed": [0, 1],
           "data": {"options": OPTIONS}, "train": {"epochs": 1, "batch_size": 32},
           "prune": {"protocol": "none"}, **changes}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_validate_reports_the_grid(tmp_path, capsys):
    spec = tiny_spec(tmp_path, storage=str(tmp_path / "r"))
    assert main(["validate", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "OK — sweep 'tiny', 6 cells" in out  # 2 dense + 2 seeds × 2 sparsities
    assert not (tmp_path / "r").exists()  # validation writes nothing


def test_storage_flag_overrides_the_spec(tmp_path, capsys):
    spec = tiny_spec(tmp_path, storage="/proc/nowhere")
    assert main(["validate", str(spec)]) == 2
    assert main(["validate", str(spec), "--storage", str(tmp_path / "ok")]) == 0
    assert str(tmp_path / "ok") in capsys.readouterr().out


def test_many_problems_many_lines(tmp_path, capsys):
    spec = tiny_spec(tmp_path, seed=-1, target="x", pruner="nope")
    assert main(["validate", str(spec)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)


def test_missing_spec_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: spec: cannot read") and len(err.strip().splitlines()) == 1


def test_status_of_an_unknown_sweep(tmp_path, capsys):
    assert main(["status", "ghost", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no sweep 'ghost'" in err and len(err.strip().splitlines()) == 1


def test_status_of_a_sweep_not_yet_run(tmp_path, capsys, monkeypatch):
    spec = tiny_spec(tmp_path, storage=str(tmp_path / "r"))
    assert main(["status", str(spec)]) == 2  # no spec.yaml stored yet
    assert "spec.yaml is missing" in capsys.readouterr().err


def test_data_download_of_an_embedded_set_is_a_user_error(tmp_path, capsys):
    assert main(["data", "download", "digits", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument name: invalid choice: 'digits' (choose from 'mnist'")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_demo_runs_and_summarises(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_run, "demo_spec_path", lambda: tiny_spec(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "results" / "tiny" / "trials").is_dir()  # ./results by default
    # one summary line per pruner and sparsity, averaged over the two seeds
    lines = [line.split() for line in out.splitlines()]
    rows = [row for row in lines if row[:1] == ["lenet300100"]]
    assert {(r[1], r[2]) for r in rows} >= {("dense", "0"), ("magnitude/global", "0.5"),
                                            ("magnitude/global", "0.9")}
    assert all(r[-1] == "2" for r in rows)  # seeds


def test_demo_spec_is_packaged_and_valid(capsys):
    path = cli_run.demo_spec_path()
    assert path.name == "demo.yaml" and path.exists()
    assert main(["validate", str(path)]) == 0


@pytest.mark.slow  # a subprocess importing torch
def test_ray_is_not_imported_by_the_serial_path(tmp_path):
    code = ("import sys; from sweeps.cli import main; "
            f"rc = main(['run', {str(tiny_spec(tmp_path, storage=str(tmp_path / 'r'), pruner='dense'))!r}]); "
            "assert rc == 0, rc; assert 'ray' not in sys.modules, 'ray imported'")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
def test_console_entry_point_exit_codes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PRUNETUNE_STORAGE": str(tmp_path / "r")}
    bad = ROOT / "tests" / "bad_specs" / "negative_seed.yaml"
    r = subprocess.run([sys.executable, "-m", "sweeps.cli", "validate", str(bad)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip() == "error: seed: -1 is negative; seeds are integers ≥ 0"
    r = subprocess.run([sys.executable, "-m", "sweeps.cli", "frobnicate"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_progress_lines_and_eta():
    import io

    from sweeps.cells import expand
    from sweeps.progress import Progress, duration
    from sweeps.spec import build_spec

    cell = expand(build_spec({"name": "p", "model": "lenet300100", "pruner": "magnitude/global",
                              "sparsity": 0.9, "storage": "/tmp"}))[0]
    now = [100.0]
    out = io.StringIO()
    p = Progress(4, stream=out, clock=lambda: now[0], tty=False)
    p.skipped(cell)
    p.started(cell)
    now[0] += 30.0
    p.finished(cell, {"status": "ok", "test_acc": 0.91234, "direct_compression": 10.0,
                      "effective_compression": float("inf"), "total_seconds": 30.0})
    assert p.eta() == pytest.approx(60.0)  # 30 s per cell, 2 cells left
    p.started(cell)
    now[0] += 10.0
    p.finished(cell, {"status": "failed", "error": "ValueError: boom"})
    lines = out.getvalue().splitlines()
    assert lines[0] == ("ok lenet300100/digits magnitude/global s=0.9 seed=0  acc 0.9123  direct x10  "
                        "effective xinf  (30s)  [2/4, 1 already done] ETA 1m00s")
    assert lines[1].startswith("FAILED lenet300100/digits magnitude/global s=0.9 seed=0: ValueError: boom")
    assert "\r" not in out.getvalue() and "\033" not in out.getvalue()  # plain text off a terminal
    assert [duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_status_of_a_sweep_in_an_object_store(tmp_path, capsys):
    from sweeps.paths import SweepRef, locate_sweep

    assert locate_sweep("s3://bucket/results/my_sweep/", None) == SweepRef("s3://bucket/results", "my_sweep")
    spec = tiny_spec(tmp_path, pruner="dense", seed=0, storage="mock:///b/r")
    assert main(["run", str(spec)]) == 0
    assert main(["status", "mock:///b/r/tiny"]) == 0
    assert "1 cells — 1 done" in capsys.readouterr().out
