"""What the converged limit costs on the real case: SLQ with `iterations: auto` against the fixed 128
steps, and the price of the resolution signal and of the authors' estimator against the SLQ time.

    OMP_NUM_THREADS=1 .venv/bin/python bench/limit_signal_cost.py [--epochs 10] [--max-samples 2000]

LeNet-300-100 on the full Fashion-MNIST (Debian's dataset-fashion-mnist), trained by the LOMP recipe
(SGD lr 0.01 constant, momentum 0.9, batch 128, λ = 5e-5 over every parameter) for `--epochs`, seed 0;
ε by the authors' recipe; the Hessian of the mean loss over the first `--max-samples` training
images, 8 probes. SLQ runs of the same probes: fixed 128 steps (and fixed `--cap` with --fixed-cap), and auto
(from 128, checks every 16, cap `--cap`), whose stopping checks are timed inside the run. Then, on
the auto run's spectrum: the solve, the spread over the last quarter, the jackknife SE and the
authors' estimator, each as seconds and as a share of that run's SLQ seconds. Benchmarks print
ratios measured in the same run; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pruning import masks, models  # noqa: E402
from pruning.data import load  # noqa: E402
from pruning.limit import authors_estimate, batch_loss_std, depth_resolved, epsilon_recipe, limit_equation  # noqa: E402
from pruning.lomp import lomp_config  # noqa: E402
from pruning.slq import slq  # noqa: E402
from pruning.train import TrainConfig, train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--max-samples", type=int, default=2000)
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--cap", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fixed-cap", action="store_true", help="also a fixed run of --cap steps (auto that hits the cap is one)")
    a = ap.parse_args()

    tr, _ = load("fashion_mnist")
    torch.manual_seed(a.seed)
    model = models.build("lenet300100", input_shape=tr.input_shape, num_classes=tr.num_classes)
    cfg = lomp_config(TrainConfig(epochs=a.epochs, batch_size=128, lr=0.01, schedule="constant", eval_every=0),
                      5e-5, l1_scope="all")
    t = time.perf_counter()
    train(model, tr, None, cfg, seed=a.seed)
    print(f"LOMP training, {a.epochs} epochs: {time.perf_counter() - t:.0f} s")
    eps = batch_loss_std(model, tr, batch_size=128, l1=5e-5, seed=a.seed, **epsilon_recipe("batch_loss_std_authors"))
    w = masks.weights(model)
    sub = dataclasses.replace(tr, x=tr.x[:a.max_samples], y=tr.y[:a.max_samples], _device_cache={})
    kw = dict(probes=a.probes, seed=a.seed)

    runs = {}
    for name, iters in (("fixed 128", 128), *(((f"fixed {a.cap}", a.cap),) if a.fixed_cap else ())):
        t = time.perf_counter()
        runs[name] = (slq(model, torch.nn.functional.cross_entropy, sub, iterations=iters, **kw),
                      time.perf_counter() - t, 0.0)
    rule = depth_resolved(w, eps)
    spent = [0.0]

    def until(partial):
        t0 = time.perf_counter()
        try:
            return rule(partial)
        finally:
            spent[0] += time.perf_counter() - t0

    t = time.perf_counter()
    auto = slq(model, torch.nn.functional.cross_entropy, sub, iterations=a.cap, until=until,
               min_iterations=128, check_every=16, **kw)
    runs["auto"] = (auto, time.perf_counter() - t, spent[0])

    print(f"\nε = {eps:.4g}, D = {auto.dim:,}, {a.probes} probes, Hessian over {a.max_samples:,} images\n")
    print("| run | depth | SLQ seconds | × fixed 128 | s* | spread | 2·SE | authors' | stopping checks (s, % of SLQ) |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = runs["fixed 128"][1]
    for name, (r, secs, checks) in runs.items():
        eq = limit_equation(w, r, eps)
        s = eq.solve(r)
        spread = eq.depth_spread(r)
        se = eq.jackknife(r)
        auth = authors_estimate(eq.dist, r, eps)
        print(f"| {name} | {int(r.steps.max())} | {secs:.1f} | "
              f"{secs / base:.2f} | {s:.4f} | {spread:.4f} | {2 * se:.4f} | {auth:.3f} | "
              f"{checks:.2f} ({100 * checks / secs:.2f}%) |")

    r, secs, _ = runs["auto"]
    eq = limit_equation(w, r, eps)
    print(f"\nthe signal on the auto run ({secs:.1f} s of SLQ):\n")
    print("| part | seconds | % of SLQ |")
    print("|---|---|---|")
    for name, fn in (("s* (bisection)", lambda: eq.solve(r)), ("spread over the last quarter", lambda: eq.depth_spread(r)),
                     ("jackknife SE", lambda: eq.jackknife(r)), ("authors' estimator", lambda: authors_estimate(eq.dist, r, eps))):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        print(f"| {name} | {dt:.3f} | {100 * dt / secs:.2f} |")


if __name__ == "__main__":
    main()
