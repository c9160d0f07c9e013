"""Distributed HVPs and probe-parallel SLQ on a local Ray, against the local backend and torch.func.hessian."""

import numpy as np
import pytest
import ray
import torch
from torch import nn
from torch.nn.utils import prune

from pruning.hvp import LocalHVPBackend, dense_hessian, mean_hvp
from pruning.slq import slq
from sweeps.hvp_ray import (
    RayHVPBackend, RayHVPFactory, WorkerResources, device_from_ray, probe_ranges, shard_bounds,
    slq_probe_parallel,
)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4)).double()


def data(n=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


def batches(x, y, size=8):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]




def test_shards_are_exact_and_disjoint():
    for n, k in [(37, 3), (10, 10), (1000, 7)]:
        b = shard_bounds(n, k)
        covered = [i for a, z in b for i in range(a, z)]
        assert covered == list(range(n))
        assert all(z > a for a, z in b)
    assert probe_ranges(5, 2) == [(0, 2), (2, 3)]
    assert probe_ranges(2, 4) == [(0, 1), (1, 1)]
    with pytest.raises(ValueError, match="hessian.workers"):
        shard_bounds(2, 3)


def test_device_follows_the_assigned_gpus_not_cuda_availability():
    assert device_from_ray([]) == "cpu"
    assert device_from_ray(["3"]) == "cuda:0"  # Ray restricts CUDA_VISIBLE_DEVICES: local index 0


@pytest.mark.slow  # real Ray: HVP actors on a local Ray (make test-fast leaves it out)
def test_sharded_sum_equals_local_and_the_exact_hessian(local_ray):
    model = mlp()
    x, y = data()
    local = LocalHVPBackend(model, None, batches(x, y), batch_size=8)
    dist = RayHVPBackend(model, None, batches(x, y), workers=3, batch_size=8, placement_group=None)
    try:
        assert dist.dim == local.dim and dist.count == len(y) == 37
        assert sorted(s["samples"] for s in dist.shards) == [12, 12, 13]
        V = torch.randn(local.dim, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        S_dist, n_dist = dist.hvp_sum(V)
        S_local, n_local = local.hvp_sum(V)
        assert n_dist == n_local == 37
        torch.testing.assert_close(S_dist, S_local, rtol=1e-10, atol=1e-12)
        H = dense_hessian(model, x, y)
        torch.testing.assert_close(mean_hvp(dist, V), H @ V, rtol=1e-9, atol=1e-11)
    finally:
        dist.close()


@pytest.mark.slow  # real Ray: HVP actors on a local Ray (make test-fast leaves it out)
def test_slq_through_ray_workers_equals_local_slq_on_a_masked_model(local_ray):
    """The trial's model carries torch.nn.utils.prune masks: they must travel to the workers."""
    model = mlp(1)
    mask = (torch.rand(10, 6, generator=torch.Generator().manual_seed(2)) > 0.5).double()
    prune.custom_from_mask(model[0], "weight", mask)
    x, y = data(40, seed=3)
    factory = RayHVPFactory(workers=2, resources=WorkerResources(cpus=1), batch_size=8)
    backend = factory(model=model, loss_fn=None, data=batches(x, y), device="cpu")
    try:
        dist = slq(model, None, batches(x, y), probes=3, iterations=8, seed=5, backend=backend)
        ref = slq(model, None, batches(x, y), probes=3, iterations=8, seed=5, batch_size=8)
    finally:
        factory.close()
    assert dist.zero_mass == ref.zero_mass > 0  # masked weights have zero Hessian rows
    np.testing.assert_allclose(dist.nodes, ref.nodes, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(dist.weights, ref.weights, rtol=1e-7, atol=1e-9)
    assert len(factory.node_ids()) == 1 and factory.lost is None


@pytest.mark.slow  # real Ray: HVP actors on a local Ray (make test-fast leaves it out)
def test_probe_parallel_merge_equals_the_sequential_run(local_ray):
    model = mlp(2)
    x, y = data(30, seed=4)
    seq = slq(model, None, batches(x, y), probes=5, iterations=7, seed=11, batch_size=8)
    par = slq_probe_parallel(model, None, batches(x, y), probes=5, iterations=7, seed=11, parts=2,
                             batch_size=8)
    assert par.probe_ids.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(par.nodes, seq.nodes, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(par.weights, seq.weights, rtol=1e-8, atol=1e-10)
    assert par.trace() == pytest.approx(seq.trace(), rel=1e-9)
