"""Data-parallel Hessian-vector products on Ray: one actor per exact data shard, a summing coordinator.

    driver (trial)                                   HVP worker actors (one bundle each)
    RayHVPBackend.hvp_sum(V (D, B)) ── ray.put(V) ──▶ shard k: LocalHVPBackend(model, shard_k).hvp_sum(V)
                      Σ_k S_k, Σ_k n_k ◀──────────── (S_k (D, B), n_k)

Why shards and sums (pruning/hvp.py `HVPBackend`): the Hessian of the *mean* loss over the data
is (Σ_i ∇²ℓ_i) / n, so each worker returns the *sum* over its samples and its count, and the sum of
the sums over an exact, non-overlapping partition equals the local backend's result up to float
rounding, whatever the number of workers. The model travels once through the object store; each
worker keeps its shard and its (cached) linearization for the whole Lanczos run.

Why the current placement group: a trial reserves one bundle for itself and one per HVP worker
(`sweeps/backends/ray_tune.py`), so the workers start inside resources the trial already holds and
never wait for, or steal from, other trials. Outside a placement group (tests, notebooks) the
workers are plain actors with the given resources.

A worker lost mid-SLQ (its node died) raises `HVPWorkerLost`; the trial records it as failed and
the Tune trainable re-raises it so that Tune retries the trial (`FailureConfig.max_failures`).
Probe parallelism (`slq_probe_parallel`) is the other axis: disjoint probe ranges as Ray tasks,
joined with `SLQResult.merge` (probe j's start vector depends only on (seed, j)).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from torch import Tensor, nn

from pruning.hvp import LocalHVPBackend, restoring
from pruning.slq import SLQResult, slq, zero_rows

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]


class HVPWorkerLost(RuntimeError):
    """An HVP worker actor died (node lost, OOM); the trial should be retried, not trusted."""


def device_from_ray(gpu_ids: Sequence[Any] | None = None) -> str:
    """The torch device of this Ray worker: cuda:0 when Ray assigned a GPU, else cpu.

    Why not `torch.cuda.is_available()`: a CPU-only trial on a GPU node must stay on CPU, and Ray
    restricts CUDA_VISIBLE_DEVICES to the assigned GPUs, so the first visible one is local index 0.
    """
    ids = ray.get_gpu_ids() if gpu_ids is None else gpu_ids
    return "cuda:0" if len(ids) > 0 else "cpu"


def materialize(data: Any, batch_size: int) -> tuple[Tensor, Tensor]:
    """All samples of a Split (normalized, fixed order, no augmentation) or of an iterable of batches."""
    if hasattr(data, "batches"):
        it = data.batches(batch_size, shuffle=False, device="cpu", augment=False)
    else:
        it = data
    batches = [(x.cpu(), y.cpu()) for x, y in it]
    if sum(len(y) for _, y in batches) == 0:
        raise ValueError("data: empty data set; the Hessian needs at least one sample")
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def detached_copy(model: nn.Module) -> nn.Module:
    """A CPU copy of `model` in eval mode that pickles, torch.nn.utils.prune masks included.

    Why the memo: a masked layer's `weight` is a non-leaf tensor (weight_orig × weight_mask,
    recomputed by a forward pre-hook), which deepcopy and pickle refuse; handing deepcopy a
    detached copy of each such tensor keeps the caller's model untouched.
    """
    memo = {id(t): t.detach().clone() for m in model.modules()
            for t in vars(m).values() if isinstance(t, Tensor) and not t.is_leaf}
    return copy.deepcopy(model, memo).cpu().eval()


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """[start, stop) of `shards` contiguous, non-overlapping, exhaustive ranges of n samples."""
    if shards < 1:
        raise ValueError(f"hessian.workers: {shards}; must be ≥ 1")
    if n < shards:
        raise ValueError(f"hessian.workers: {shards} workers for {n} samples; need ≥ 1 sample each")
    edges = [round(k * n / shards) for k in range(shards + 1)]
    return list(zip(edges[:-1], edges[1:]))


def to_batches(x: Tensor, y: Tensor, batch_size: int) -> list[Batch]:
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


@ray.remote
class HVPShardWorker:
    """Holds one shard and the model; answers `hvp_sum` with its shard's sum and count."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, *, loss_fn: Callable | None,
                 params: Any, batch_size: int, mode: str):
        self.device = device_from_ray()
        self.backend = LocalHVPBackend(model, loss_fn, to_batches(x, y, batch_size), params=params,
                                       device=self.device, batch_size=batch_size, mode=mode)

    def describe(self) -> dict[str, Any]:
        """Where this shard lives (node, device) and what it covers, for placement checks and logs."""
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "device": self.device, "dim": self.backend.dim,
                "samples": self.backend.count, "mode": self.backend.mode}

    def hvp_sum(self, V: Tensor) -> tuple[Tensor, int]:
        S, n = self.backend.hvp_sum(V)
        return S.cpu(), n


@dataclass
class WorkerResources:
    """What each HVP worker asks for: its own bundle of the trial's placement group (or a plain actor)."""

    cpus: float = 1.0
    gpus: float = 0.0


class RayHVPBackend:
    """The coordinator: an `HVPBackend` whose products are the sums of the shard workers' products."""

    def __init__(self, model: nn.Module, loss_fn: Callable | None, data: Any, *, workers: int,
                 resources: WorkerResources | None = None, params: Any = None, batch_size: int = 1024,
                 mode: str = "auto", bundle_offset: int = 1, placement_group: Any = "current"):
        res = resources or WorkerResources()
        x, y = materialize(data, batch_size)
        bounds = shard_bounds(len(y), workers)
        pg = ray.util.get_current_placement_group() if placement_group == "current" else placement_group
        model_ref = ray.put(detached_copy(model))
        self.workers = []
        for k, (a, b) in enumerate(bounds):
            options: dict[str, Any] = {"num_cpus": res.cpus, "num_gpus": res.gpus}
            if pg is not None:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=bundle_offset + k)
            self.workers.append(HVPShardWorker.options(**options).remote(
                model_ref, x[a:b].clone(), y[a:b].clone(), loss_fn=loss_fn, params=params,
                batch_size=batch_size, mode=mode))
        self.shards = self._get([w.describe.remote() for w in self.workers])
        dims = {s["dim"] for s in self.shards}
        if len(dims) != 1:
            raise ValueError(f"hessian workers: dims {sorted(dims)} differ; shards must share the parameters")
        self.dim = dims.pop()
        self.count = sum(s["samples"] for s in self.shards)
        self.dtype = next(p.dtype for p in model.parameters())
        self.mode = f"ray×{workers}:{self.shards[0]['mode']}"
        log.info("ray hvp backend: %d workers on nodes %s, dim=%d samples=%d", workers,
                 sorted({s['node_id'][:8] for s in self.shards}), self.dim, self.count)

    @property
    def node_ids(self) -> list[str]:
        return [s["node_id"] for s in self.shards]

    def _get(self, refs: list[Any]) -> list[Any]:
        try:
            return ray.get(refs)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError) as e:
            raise HVPWorkerLost(f"an HVP worker was lost: {type(e).__name__}") from e

    def hvp_sum(self, V: Tensor) -> tuple[Tensor, int]:
        """(Σ over all shards of Σ_i ∇²ℓ_i V, total count); V is (D, B)."""
        if V.ndim != 2 or V.shape[0] != self.dim:
            raise ValueError(f"V: shape {tuple(V.shape)}, expected ({self.dim}, B)")
        ref = ray.put(V.detach().cpu())
        parts = self._get([w.hvp_sum.remote(ref) for w in self.workers])
        acc = torch.float64 if V.dtype == torch.float64 else parts[0][0].dtype
        total = sum(S.to(acc) for S, _ in parts)
        return total.to(V.device), sum(n for _, n in parts)

    def close(self) -> None:
        """Stop the workers now (they would otherwise live until the trial's placement group ends)."""
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers = []


@dataclass
class RayHVPFactory:
    """The `hvp_backend_factory` of `sweeps.trial.run_cell` for the Ray backend.

    Called once per SLQ run with (model, loss_fn, data, device); keeps every backend it made so the
    trainable can close them, learn where they ran, and tell a lost worker from a bug of the cell.
    """

    workers: int
    resources: WorkerResources = field(default_factory=WorkerResources)
    batch_size: int = 1024
    made: list[RayHVPBackend] = field(default_factory=list)
    lost: HVPWorkerLost | None = None

    def __call__(self, *, model: nn.Module, loss_fn: Callable | None, data: Any,
                 device: str = "cpu", params: Any = None) -> RayHVPBackend:
        backend = _Watched(self, model, loss_fn, data, workers=self.workers, resources=self.resources,
                           params=params, batch_size=self.batch_size)
        self.made.append(backend)
        return backend

    def node_ids(self) -> list[str]:
        return sorted({n for b in self.made for n in b.node_ids})

    def close(self) -> None:
        for b in self.made:
            b.close()


class _Watched(RayHVPBackend):
    """Records a lost worker in the factory (run_cell turns every exception into a failed row)."""

    def __init__(self, factory: RayHVPFactory, *args: Any, **kwargs: Any):
        self.factory = factory
        try:
            super().__init__(*args, **kwargs)
        except HVPWorkerLost as e:
            factory.lost = e
            raise

    def _get(self, refs: list[Any]) -> list[Any]:
        try:
            return super()._get(refs)
        except HVPWorkerLost as e:
            self.factory.lost = e
            raise


# ----------------------------------------------------------------------------- probe parallelism


@ray.remote
def _slq_part(model: nn.Module, loss_fn: Callable | None, x: Tensor, y: Tensor, *, probes: int,
              iterations: int, seed: int, probe_offset: int, keep: Tensor | None, params: Any,
              batch_size: int) -> SLQResult:
    return slq(model, loss_fn, to_batches(x, y, batch_size), probes=probes, iterations=iterations,
               seed=seed, probe_offset=probe_offset, keep=keep, deflate=keep is not None, params=params,
               device=device_from_ray(), batch_size=batch_size)


def probe_ranges(probes: int, parts: int) -> list[tuple[int, int]]:
    """(offset, count) of `parts` disjoint probe ranges covering 0..probes−1 (empty ones dropped)."""
    return [(a, b - a) for a, b in shard_bounds(probes, min(parts, probes))]


def slq_probe_parallel(model: nn.Module, loss_fn: Callable | None, data: Any, *, probes: int,
                       iterations: int, seed: int = 0, parts: int = 2, params: Any = None,
                       batch_size: int = 1024, deflate: bool = True, zero_tol: float = 1e-10,
                       zero_probes: int = 2, cpus: float = 1.0, gpus: float = 0.0) -> SLQResult:
    """SLQ with its probes split over `parts` Ray tasks, merged in probe order.

    The zero-row detection runs once here and its `keep` mask goes to every part, so all parts
    deflate the same coordinates (merge requires the same operator); the merged result equals the
    sequential `slq(..., probes=probes)` up to float rounding.
    """
    x, y = materialize(data, batch_size)
    keep = None
    if deflate:
        with restoring(model):  # the caller's model keeps its mode and device
            local = LocalHVPBackend(model, loss_fn, to_batches(x, y, batch_size), params=params,
                                    batch_size=batch_size)
            keep = ~zero_rows(local, probes=zero_probes, seed=seed, tol=zero_tol)
    model_ref, x_ref, y_ref = ray.put(detached_copy(model)), ray.put(x), ray.put(y)
    task = _slq_part.options(num_cpus=cpus, num_gpus=gpus)
    refs = [task.remote(model_ref, loss_fn, x_ref, y_ref, probes=count, iterations=iterations, seed=seed,
                        probe_offset=offset, keep=keep, params=params, batch_size=batch_size)
            for offset, count in probe_ranges(probes, parts)]
    return SLQResult.merge(ray.get(refs))
