"""The dense-model cache (sweeps.dense_cache): computed once per key, atomic, safe when processes race, stale locks broken."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest
import torch

from sweeps.dense_cache import DENSE_ITEM, DenseCache, dense_fields, key_of


def slow_value(seconds: float = 0.0) -> dict:
    time.sleep(seconds)
    return {"state": {"w": torch.arange(6.0).view(2, 3)}, "metrics": {"test_acc": 0.75, "loss": float("inf")}}


def test_key_covers_exactly_what_determines_the_model():
    base = dict(model="lenet300100", dataset="digits", data_options={}, seed=0, train={"epochs": 2, "l1": 0.0})
    k = key_of(dense_fields(**base))
    assert k == key_of(dense_fields(**{**base, "data_options": {}}))
    for change in ({"seed": 1}, {"model": "fc5"}, {"data_options": {"n_train": 9}},
                   {"train": {"epochs": 2, "l1": 5e-5}}):
        assert key_of(dense_fields(**{**base, **change})) != k


def test_computed_once_then_loaded(tmp_path):
    cache = DenseCache(str(tmp_path))
    calls = []
    v1, fresh1 = cache.get_or_compute("k", DENSE_ITEM, lambda: calls.append(1) or slow_value())
    v2, fresh2 = cache.get_or_compute("k", DENSE_ITEM, lambda: calls.append(1) or slow_value())
    assert (fresh1, fresh2) == (True, False) and calls == [1]
    assert torch.equal(v2["state"]["w"], torch.arange(6.0).view(2, 3))
    assert v2["metrics"] == {"test_acc": 0.75, "loss": float("inf")}
    assert cache.computations("k") == 1
    assert sorted(os.listdir(tmp_path / "_cache" / "dense" / "k")) == ["computed.log", DENSE_ITEM]


def test_damaged_entry_is_recomputed(tmp_path):
    cache = DenseCache(str(tmp_path))
    cache.get_or_compute("k", DENSE_ITEM, slow_value)
    path = tmp_path / "_cache" / "dense" / "k" / DENSE_ITEM
    path.write_bytes(path.read_bytes()[:40])
    _, fresh = cache.get_or_compute("k", DENSE_ITEM, slow_value)
    assert fresh and cache.computations("k") == 2


def test_loading_never_runs_pickled_code(tmp_path):
    cache = DenseCache(str(tmp_path))
    os.makedirs(tmp_path / "_cache" / "dense" / "k")
    torch.save({"x": slow_value}, tmp_path / "_cache" / "dense" / "k" / DENSE_ITEM)  # a function object
    assert cache.load("k", DENSE_ITEM) is None  # refused by weights_only=True


def test_lock_of_a_dead_process_is_broken(tmp_path):
    cache = DenseCache(str(tmp_path), stale_after=3600)
    d = tmp_path / "_cache" / "dense" / "k"
    d.mkdir(parents=True)
    p = mp.get_context("fork").Process(target=lambda: None)
    p.start()
    p.join()
    import socket

    (d / f".{DENSE_ITEM}.lock").write_text(f"{socket.gethostname()} {p.pid}")
    t0 = time.monotonic()
    _, fresh = cache.get_or_compute("k", DENSE_ITEM, slow_value)
    assert fresh and time.monotonic() - t0 < 5
    assert not (d / f".{DENSE_ITEM}.lock").exists()


def test_lock_without_heartbeat_goes_stale(tmp_path):
    cache = DenseCache(str(tmp_path), stale_after=0.5, poll=0.05)
    d = tmp_path / "_cache" / "dense" / "k"
    d.mkdir(parents=True)
    (d / f".{DENSE_ITEM}.lock").write_text("another-host 1")
    _, fresh = cache.get_or_compute("k", DENSE_ITEM, slow_value)
    assert fresh


def _race(root: str, barrier, out) -> None:
    barrier.wait()
    value, fresh = DenseCache(root, poll=0.05).get_or_compute("k", DENSE_ITEM, lambda: slow_value(1.0))
    out.put((fresh, value["metrics"]["test_acc"]))


def test_two_processes_racing_compute_once(tmp_path):
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, out)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(fresh for fresh, _ in results) == [False, False, True]
    assert {acc for _, acc in results} == {0.75}
    assert DenseCache(str(tmp_path)).computations("k") == 1


def test_object_store_cache():
    cache = DenseCache("mock:///bucket/r")
    _, fresh1 = cache.get_or_compute("k", DENSE_ITEM, slow_value)
    v, fresh2 = cache.get_or_compute("k", DENSE_ITEM, slow_value)
    assert (fresh1, fresh2) == (True, False) and cache.computations("k") == 1
    assert torch.equal(v["state"]["w"], torch.arange(6.0).view(2, 3))


@pytest.mark.parametrize("item", ["slq-abc.pt"])
def test_items_are_counted_separately(tmp_path, item):
    cache = DenseCache(str(tmp_path))
    cache.get_or_compute("k", DENSE_ITEM, slow_value)
    cache.get_or_compute("k", item, slow_value)
    assert cache.computations("k", DENSE_ITEM) == 1 and cache.computations("k", item) == 1
