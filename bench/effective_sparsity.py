"""Benchmark: one effective-mask evaluation vs one forward+backward of the real model (batch 1).

Why this baseline: the pruners' effective-target bisection (docs/algorithms.md §3) evaluates ~⌈log2 N⌉
candidate masks; its cost should be a small multiple of what training spends on one step of one
sample. Everything is measured in the same run, interleaved (baseline, evaluation, baseline, ...) so
that load from other processes hits both alike; medians of `--repeats`.

Reported per model (random Bernoulli masks at `--sparsity`):
  fwd+bwd      the dense real model, eval mode, batch 1, cross-entropy backward (float32)
  eval         `EffectiveMaskEvaluator.__call__` (the linearized copy built once, outside the timing)
  search       a full bisection for the largest k (removals in a random global order) whose
               effective sparsity is ≤ the target; its evaluation count is printed too
and the ratios eval / fwd+bwd and search / fwd+bwd.

    .venv/bin/python bench/effective_sparsity.py                      # CPU, 1 thread, both dtypes
    .venv/bin/python bench/effective_sparsity.py --device cuda --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pruning import masks as masks_lib  # noqa: E402
from pruning import models  # noqa: E402
from pruning.sparsity import EffectiveMaskEvaluator  # noqa: E402

CASES = {  # model -> (input shape, classes): MNIST and CIFAR-100 shapes
    "lenet300100": ((1, 28, 28), 10),
    "vgg19": ((3, 32, 32), 100),
    "resnet50": ((3, 32, 32), 100),
}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def random_order(model: torch.nn.Module, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A random global removal order: the rank of every prunable weight in [0, N)."""
    layers = masks_lib.prunable_layers(model)
    sizes = [m.weight.numel() for _, m in layers]
    g = torch.Generator().manual_seed(seed)
    ranks = torch.randperm(sum(sizes), generator=g).to(device).split(sizes)
    return {n: r.view_as(m.weight) for (n, m), r in zip(layers, ranks)}


def search(evaluator: EffectiveMaskEvaluator, ranks: dict[str, torch.Tensor], target: float) -> int:
    """Largest k with E(first k removed) ≤ target, by bisection on the integer k; returns #evals."""
    lo, hi, evals = 0, sum(r.numel() for r in ranks.values()), 0   # E(lo) ≤ target always
    while lo < hi:
        k = (lo + hi + 1) // 2
        evals += 1
        if evaluator.effective_sparsity({n: r >= k for n, r in ranks.items()}) <= target:
            lo = k
        else:
            hi = k - 1
    return evals


def bench_model(name: str, dtype: torch.dtype, args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    shape, classes = CASES[name]
    model = models.build(name, input_shape=shape, num_classes=classes).to(device).eval()
    g = torch.Generator().manual_seed(args.seed)
    candidate = {n: (torch.rand(m.weight.shape, generator=g) >= args.sparsity).to(device)
                 for n, m in masks_lib.prunable_layers(model)}
    x = torch.randn(1, *shape, device=device)
    y = torch.zeros(1, dtype=torch.long, device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    build = timed(lambda: EffectiveMaskEvaluator(model, dtype=dtype), device)
    evaluator = EffectiveMaskEvaluator(model, dtype=dtype)
    for _ in range(2):  # warm-up (allocator, kernels)
        step()
        evaluator(candidate)
    base, evals = [], []
    for _ in range(args.repeats):
        base.append(timed(step, device))
        evals.append(timed(lambda: evaluator(candidate), device))
    ranks = random_order(model, args.seed, device)
    n_evals = [0]
    search_s = timed(lambda: n_evals.__setitem__(0, search(evaluator, ranks, args.sparsity)), device)
    base.append(timed(step, device))
    fb, ev = statistics.median(base), statistics.median(evals)
    return {"N": masks_lib.count_prunable(model), "build_s": build, "fwd_bwd_ms": fb * 1e3,
            "eval_ms": ev * 1e3, "ratio": ev / fb, "search_evals": n_evals[0],
            "search_s": search_s, "search_ratio": search_s / fb,
            "effective": evaluator.effective_sparsity(candidate)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CASES), help=f"comma list from {list(CASES)}")
    parser.add_argument("--dtypes", default="float64,float32", help=f"comma list from {list(DTYPES)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (same for both)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    names = args.models.split(",")
    dtypes = args.dtypes.split(",")
    for value, known, field in [(names, CASES, "--models"), (dtypes, DTYPES, "--dtypes")]:
        bad = [v for v in value if v not in known]
        if bad:
            parser.error(f"{field} {bad}: choose from {sorted(known)}")
    torch.set_num_threads(args.threads)
    print(f"# device={args.device} threads={args.threads} torch={torch.__version__} "
          f"sparsity={args.sparsity} repeats={args.repeats}")
    print("| model | dtype | N | fwd+bwd ms | eval ms | eval / fwd+bwd | search evals | search s "
          "| search / fwd+bwd | build s | effective sparsity |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        for dt in dtypes:
            r = bench_model(name, DTYPES[dt], args)
            print(f"| {name} | {dt} | {r['N']:,} | {r['fwd_bwd_ms']:.1f} | {r['eval_ms']:.1f} | "
                  f"{r['ratio']:.2f}× | {r['search_evals']} | {r['search_s']:.2f} | "
                  f"{r['search_ratio']:.1f}× | {r['build_s']:.2f} | {r['effective']:.4f} |",
                  flush=True)


if __name__ == "__main__":
    main()
