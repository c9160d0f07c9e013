"""Storage on a real S3 server: moto's server mode on 127.0.0.1, reached only through the standard
AWS environment variables (endpoint, keys, region), never through a file in the repository.

    a sweep on the Ray backend with --storage s3://bucket/prefix: rows, status, tables, plot, resume
    a truncated `trials` object: skipped with a warning, its cell redone, the others untouched
    a writer SIGKILLed mid-upload (multipart): no key appears, nothing counts as done
    no credential in any stored object (spec.yaml, rows, Tune's state), URIs with credentials refused

The commit protocol these check is the store's (sweeps/store.py): one upload of the final key,
`trials` last, readers parse before they trust.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

import boto3  # the cluster extra (`ray up` on AWS)
import moto.server as moto_server  # the dev extra: a local S3 server

from sweeps import paths, store  # noqa: E402
from sweeps.cli import main  # noqa: E402
from analysis.load import read_arrow  # noqa: E402

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[1]
BUCKET = "prunetune-test"


@pytest.fixture
def s3(monkeypatch):
    """A fresh moto S3 server on 127.0.0.1 (its own port), one bucket, and the AWS variables that
    point every client at it (random keys, so a leak can be searched for)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL_S3": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": f"AKIA{secrets.token_hex(8).upper()}",
           "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30), "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    paths.filesystem.cache_clear()  # a client built for another endpoint must not be reused
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"])
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client, env
    finally:
        paths.filesystem.cache_clear()
        server.stop()


def objects(client, prefix=""):
    """key → (ETag, LastModified) of every object under `prefix`."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out.update({o["Key"]: (o["ETag"], o["LastModified"]) for o in page.get("Contents", [])})
    return out


def cli_env(extra):
    return {**os.environ, **extra, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
            "RAY_USAGE_STATS_ENABLED": "0"}


def prunetune(*args, env, cwd, timeout=400):
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], env=cli_env(env), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


SPEC = {"name": "s3sweep", "model": "lenet300100", "dataset": "digits",
        "pruner": ["random/uniform", "magnitude/global"], "sparsity": [0.5, 0.8], "seed": [0],
        "train": {"epochs": 1, "batch_size": 128}}


def test_a_ray_sweep_on_s3_status_tables_plot_and_resume_after_a_truncated_object(s3, tmp_path, capsys,
                                                                                  monkeypatch):
    client, env = s3
    storage = f"s3://{BUCKET}/sweeps"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))

    run = prunetune("run", str(spec_file), "--backend", "ray", "--storage", storage, "--num-cpus", "1",
                    env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "4 done, 0 failed" in run.stderr
    rows = read_arrow("s3sweep", "trials", storage=storage, use_cache=False).to_pylist()
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    keys = objects(client)
    assert "sweeps/s3sweep/spec.yaml" in keys
    assert any(k.startswith("sweeps/_tune/s3sweep/run-") for k in keys)       # Tune's state on S3 too
    assert any(k.startswith("sweeps/_cache/dense/") for k in keys)            # the dense cache as well
    assert not [k for k in keys if k.startswith("sweeps/s3sweep/") and Path(k).name.startswith(".")]  # no temp keys

    # the read side, in this process, with the other standard endpoint variable
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", env["AWS_ENDPOINT_URL_S3"])
    paths.filesystem.cache_clear()
    assert main(["status", "s3sweep", "--storage", storage]) == 0
    assert "4 cells — 4 done, 0 diverged, 0 failed, 0 pending" in capsys.readouterr().out
    assert main(["tables", f"{storage}/s3sweep", "--table", "compression"]) == 0
    table = capsys.readouterr().out
    assert "random/uniform" in table and "magnitude/global" in table
    assert main(["plot", f"{storage}/s3sweep", "--out", str(tmp_path / "figs")]) == 0
    assert list((tmp_path / "figs").glob("*.png"))

    # a torn object: the first half of one cell's trials file
    victim = next(r["cell_id"] for r in rows if r["pruner"] == "random/uniform" and r["sparsity"] == 0.8)
    key = f"sweeps/s3sweep/trials/{victim}.parquet"
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    client.put_object(Bucket=BUCKET, Key=key, Body=body[: len(body) // 2])
    before = {k: v for k, v in objects(client, "sweeps/s3sweep/").items() if k != key}
    with pytest.warns(UserWarning, match=rf"skipping unreadable result file .*{victim}\.parquet"):
        assert not store.is_done(storage, "s3sweep", victim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["status", "s3sweep", "--storage", storage]) == 0
    assert "3 done, 0 diverged, 0 failed, 1 pending" in capsys.readouterr().out

    resumed = prunetune("resume", "s3sweep", "--storage", storage, "--num-cpus", "1", env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"skipping unreadable result file {BUCKET}/{key}" in resumed.stderr
    assert "1 done, 0 failed, 3 already done" in resumed.stderr
    after = objects(client, "sweeps/s3sweep/")
    assert store.trial_row(storage, "s3sweep", victim)["status"] == "ok"       # redone, whole again
    others = {k: v for k, v in before.items()
              if victim not in k and not k.endswith(("spec.yaml", "/"))}  # "/": directory markers
    assert len([k for k in others if "/trials/" in k]) == 3
    assert {k: after.get(k) for k in others} == others                      # same ETag, same time

    # no credential in anything stored: spec.yaml, Parquet rows, Tune's experiment state, caches
    for k in objects(client):
        data = client.get_object(Bucket=BUCKET, Key=k)["Body"].read()
        assert env["AWS_SECRET_ACCESS_KEY"].encode() not in data, k
        assert env["AWS_ACCESS_KEY_ID"].encode() not in data, k


WRITER = """
import os, sys
import pyarrow as pa
from sweeps import store
storage, cell_id, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
row = {"cell_id": cell_id, "sweep": "torn", "status": "ok", "error": os.urandom(n).hex()}
buf = pa.BufferOutputStream()
import pyarrow.parquet as pq
pq.write_table(store.to_table("trials", [row]), buf, compression="none")
data = buf.getvalue().to_pybytes()
print(len(data), flush=True)
store.write_bytes(storage, store.table_path(storage, "torn", "trials", cell_id), data)
print("committed", flush=True)
"""


def test_a_writer_killed_mid_upload_leaves_nothing_a_reader_counts_as_done(s3, tmp_path):
    """A 24 MB trials file (pyarrow uploads it in parts) written by `store.write_bytes` in a
    subprocess, SIGKILLed once its multipart upload is under way: the key never appears."""
    client, env = s3
    storage = f"s3://{BUCKET}/sweeps"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, storage, "c0ffee", str(12 * 2**20)],
                              env=cli_env(env), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 120
        while not client.list_multipart_uploads(Bucket=BUCKET).get("Uploads"):
            assert writer.poll() is None, writer.communicate()
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.01)
        writer.send_signal(signal.SIGKILL)
        out, _ = writer.communicate(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert "committed" not in out
    assert [k for k in objects(client, "sweeps/torn/") if not k.endswith("/")] == []  # directory markers only
    assert store.stored_ids(storage, "torn") == [] and not store.is_done(storage, "torn", "c0ffee")
    assert read_arrow("torn", "trials", storage=storage, use_cache=False).num_rows == 0
    # what is left is an incomplete multipart upload, invisible to readers (a lifecycle rule reclaims it)
    [upload] = client.list_multipart_uploads(Bucket=BUCKET)["Uploads"]
    assert upload["Key"] == "sweeps/torn/trials/c0ffee.parquet"


def test_storage_uris_with_credentials_are_refused_before_anything_is_written(tmp_path):
    for uri in ("s3://AKIAEXAMPLE:secret@bucket/sweeps", "s3://bucket/sweeps?secret_key=x&access_key=y"):
        with pytest.raises(ValueError, match=r"^storage: the URI carries credentials") as e:
            paths.filesystem(uri)
        assert "AKIAEXAMPLE" not in str(e.value)  # the message never echoes a credential
    assert paths.credentials_problem("s3://bucket/sweeps?region=us-east-1") is None
    assert paths.credentials_problem(str(tmp_path)) is None
