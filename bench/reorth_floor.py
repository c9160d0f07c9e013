"""What the prescribed reorthogonalization costs by itself, next to the HVPs it sits between.

    .venv/bin/python bench/reorth_floor.py [--case lenet] [--probes 8] [--iterations 64] [--repeats 2]
    OMP_WAIT_POLICY=passive .venv/bin/python bench/reorth_floor.py     # torch's OpenMP workers sleep

SLQ's time outside its Hessian-vector products is mostly the full reorthogonalization that
docs/algorithms.md §6 prescribes: two classical Gram–Schmidt passes per step against each probe's basis.
This replays that access pattern on the bench case of `slq_vs_pyhessian.py`: every step runs the real
`hvp_sum` on B directions (timed: the floor), then one reorthogonalization variant over the B bases
(B × (k+1) × D, float32, filled with random rows: the cost does not depend on their values):
- cgs2: what `pruning.slq.lanczos` does on a CPU (`gram_schmidt`: one gemv per probe and pass);
- cgs1: one pass (the lower bound of any full reorthogonalization);
- cgs2_threads: cgs2 with the probes split over two Python threads (same operations per probe).
It also runs one real `slq` and counts how often the DGKS/Kahan–Parlett test (β_k < ‖H q_k‖/√2)
would ask for the second pass: a conditional second pass saves only the steps where it does not.
Printed: seconds per variant, its share of the HVP floor measured in the same loop. No asserts.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pruning.hvp import LocalHVPBackend  # noqa: E402
from pruning.slq import gram_schmidt, slq  # noqa: E402
from slq_vs_pyhessian import setup  # noqa: E402


def replay(backend: LocalHVPBackend, B: int, m: int, variant: str, pool: ThreadPoolExecutor) -> tuple[float, float]:
    """(HVP seconds, reorthogonalization seconds) over m steps of B directions."""
    D = backend.dim
    Q = torch.randn(B, m, D)
    coef = torch.empty(B, m)
    V = torch.randn(D, B)
    hvp = reo = 0.0
    for k in range(m):
        t0 = time.perf_counter()
        HV, _ = backend.hvp_sum(V)
        t1 = time.perf_counter()
        w = HV.T.contiguous()
        t2 = time.perf_counter()
        if variant == "cgs2_threads":
            list(pool.map(lambda part: gram_schmidt(Q, w, coef, k, part),
                          [[(p, p) for p in range(i, B, 2)] for i in (0, 1)]))
        else:
            gram_schmidt(Q, w, coef, k, [(p, p) for p in range(B)], passes=1 if variant == "cgs1" else 2)
        t3 = time.perf_counter()
        hvp += t1 - t0
        reo += t3 - t2
    return hvp, reo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="lenet", choices=["lenet", "resnet"])
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, x, y = setup(args.case)
    names = [n for n, _ in model.named_parameters()]
    r = slq(model, nn.functional.cross_entropy, [(x, y)], probes=args.probes, iterations=args.iterations,
            params=names, deflate=False, batch_probes=args.probes)
    backend = LocalHVPBackend(model, None, [(x, y)], params=names, mode=r.info["hvp_mode"])
    B, m = args.probes, args.iterations
    a, b = r.alphas, r.betas
    b_prev = np.concatenate([np.zeros((len(b), 1)), b[:, :-1]], axis=1)
    hq = np.sqrt(a**2 + b**2 + b_prev**2)   # ‖H q_k‖ in exact arithmetic
    second = float((b < hq / np.sqrt(2)).mean())
    print(f"## {args.case}: D={backend.dim}, {B} probes × {m} steps, HVP mode {backend.mode}, "
          f"{args.threads} torch threads")
    print(f"slq in this process: {r.seconds:.2f} s, of which HVPs {r.hvp_seconds:.2f} s "
          f"({100 * (1 - r.hvp_seconds / r.seconds):.1f}% outside)")
    print(f"DGKS test asks for the second pass in {100 * second:.1f}% of the steps\n")
    print("| variant | HVP floor s | reorth s (best) | reorth / floor |")
    print("|---|---|---|---|")
    with ThreadPoolExecutor(2) as pool:
        for variant in ("cgs2", "cgs1", "cgs2_threads"):
            runs = [replay(backend, B, m, variant, pool) for _ in range(args.repeats)]
            hvp = min(h for h, _ in runs)
            reo = min(s for _, s in runs)
            print(f"| {variant} | {hvp:.2f} | {reo:.3f} | {100 * reo / hvp:.1f}% |")


if __name__ == "__main__":
    main()
