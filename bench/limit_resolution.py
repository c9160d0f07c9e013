"""Does the resolution signal of the pruning limit work? SLQ predictions against exact spectra.

    .venv/bin/python bench/limit_resolution.py [--seeds 0 1 2] [--samples 600] [--out DIR]

Nets: the MLP 64→24→10 (1,810 parameters) of bench/zero_mass_error.py on the first `samples`
digits, in its three variants (plain, lomp: L1 kills hidden units, dead10: 10 hidden units dead).
The exact spectrum (torch.func.hessian in float64 + eigvalsh) gives the exact s*; SLQ runs with 8
probes per seed to 256 steps, and every depth m of DEPTHS is read from the same run (its leading
m×m Jacobi blocks: what a run of m steps gives). For each net, seed, ε (down to 1e-3: the authors'
rule gives ~1.4e-3 on digits) and depth: the error of s*, the resolution signal (spread of s*(k)
over the last quarter, 2·SE over probes), the flag, and the authors' estimator (probe 0, 128 steps,
their binning). Then `iterations: auto` (from 64 steps, checks every 16, cap 512): the depth it
stops at and its error. Then `drop`: its s* per depth against the exact drop s*, and whether the
prediction refused it (negative curvature carrying more than the tolerance of G at R(s*)). Prints markdown tables (docs/zero_mass.md) and writes rows.csv under --out.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from zero_mass_error import as_slq, exact_spectrum, make_nets  # noqa: E402

from pruning import masks as masks_lib  # noqa: E402
from pruning.data import load  # noqa: E402
from pruning.limit import RESOLUTION_TOL, depth_resolved, limit_equation, predict_limit, truncated  # noqa: E402
from pruning.slq import slq  # noqa: E402

EPSILONS = (1e-3, 1.5e-3, 5e-3, 1e-2, 5e-2)
DEPTHS = (16, 32, 64, 128, 192, 256)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--out", default="bench/out/limit_resolution")
    args = ap.parse_args()
    torch.set_num_threads(2)
    full, _ = load("digits")
    sub = dataclasses.replace(full, x=full.x[: args.samples], y=full.y[: args.samples], _device_cache={})
    nets = make_nets(sub, 0)
    x, y = sub.tensors()
    x = x.double()
    rows, auto_rows, drop_rows = [], [], []
    t_all = time.perf_counter()
    for name, net32 in nets.items():
        model = copy.deepcopy(net32).double().eval()
        exact_ev, _ = exact_spectrum(model, x, y)
        exact = as_slq(exact_ev)
        w = masks_lib.weights(model)
        for seed in args.seeds:
            run = slq(model, None, [(x, y)], probes=args.probes, iterations=max(DEPTHS), seed=seed)
            for eps in EPSILONS:
                s_exact = predict_limit(w, exact, eps).removed_frac
                drop_exact = limit_equation(w, exact, eps, policy="drop").solve(exact)
                eq_drop = limit_equation(w, run, eps, policy="drop")
                for m in DEPTHS:
                    t0 = time.perf_counter()
                    p = predict_limit(w, truncated(run, m) if m < run.iterations else run, eps)
                    rows.append(dict(net=name, seed=seed, eps=eps, m=m, exact=s_exact, s=p.removed_frac,
                                     err=p.removed_frac - s_exact, spread=p.removed_frac_spread,
                                     two_se=2 * p.removed_frac_se, flagged=p.unresolved,
                                     authors=p.authors_removed_frac, seconds=time.perf_counter() - t0))
                    if m >= 128:
                        d = predict_limit(w, truncated(run, m) if m < run.iterations else run, eps, policy="drop")
                        s_drop = eq_drop.solve(truncated(run, m) if m < run.iterations else run)  # refused or not
                        drop_rows.append(dict(net=name, seed=seed, eps=eps, m=m, exact=drop_exact, s=s_drop,
                                              err=s_drop - drop_exact, share=d.negative_share,
                                              refused=d.removed_frac is None, flagged=d.unresolved))
                t0 = time.perf_counter()
                until = depth_resolved(w, eps)
                auto = slq(model, None, [(x, y)], probes=args.probes, iterations=512, seed=seed, until=until,
                           min_iterations=64, check_every=16)
                p = predict_limit(w, auto, eps)
                auto_rows.append(dict(net=name, seed=seed, eps=eps, depth=auto.iterations, exact=s_exact,
                                      err=p.removed_frac - s_exact, spread=p.removed_frac_spread,
                                      flagged=p.unresolved, seconds=time.perf_counter() - t0))
            print(f"# {name} seed {seed} done ({time.perf_counter() - t_all:.0f} s)", file=sys.stderr, flush=True)

    import pandas as pd
    df, auto, drop = pd.DataFrame(rows), pd.DataFrame(auto_rows), pd.DataFrame(drop_rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "rows.csv", index=False)
    auto.to_csv(out / "auto.csv", index=False)
    drop.to_csv(out / "drop.csv", index=False)
    tol = RESOLUTION_TOL
    bad = df[df.err.abs() > tol]
    print(f"# resolution signal on exact spectra: {len(df)} predictions (3 nets × {len(args.seeds)} probe seeds × "
          f"{len(EPSILONS)} ε × {len(DEPTHS)} depths), tolerance {tol}\n")
    print(f"off by more than the tolerance: {len(bad)}, of them flagged: {int(bad.flagged.sum())}\n")
    print("| depth m | predictions | |error| > tol | flagged of those | |error| ≤ 0.003 | flagged of those | "
          "median |error| ours | median |error| authors' estimator |")
    print("|---|---|---|---|---|---|---|---|")
    for m, g in df.groupby("m"):
        big, good = g[g.err.abs() > tol], g[g.err.abs() <= 0.003]
        print(f"| {m} | {len(g)} | {len(big)} | {int(big.flagged.sum())} | {len(good)} | {int(good.flagged.sum())} | "
              f"{g.err.abs().median():.4f} | {(g.authors - g.exact).abs().median():.4f} |")
    print("\n| net | predictions | |error| > tol | flagged of those | |error| ≤ 0.003 at m ≥ 128 | flagged of those |")
    print("|---|---|---|---|---|---|")
    for n, g in df.groupby("net", sort=False):
        big, good = g[g.err.abs() > tol], g[(g.err.abs() <= 0.003) & (g.m >= 128)]
        print(f"| {n} | {len(g)} | {len(big)} | {int(big.flagged.sum())} | {len(good)} | {int(good.flagged.sum())} |")
    print(f"\nseconds per prediction (signal + authors' estimator included): median {df.seconds.median():.2f}\n")
    print("## iterations: auto (from 64 steps, checks every 16, cap 512)\n")
    print("| net | ε | depth used (per seed) | |error| (per seed) | flagged |")
    print("|---|---|---|---|---|")
    for (n, e), g in auto.groupby(["net", "eps"], sort=False):
        print(f"| {n} | {e:g} | {', '.join(str(d) for d in g.depth)} | "
              f"{', '.join(f'{abs(v):.4f}' for v in g.err)} | {', '.join('yes' if f else 'no' for f in g.flagged)} |")
    print("\n## drop at m = 128, 192, 256 (its s* solved whether refused or not)\n")
    print("| net | ε | exact drop s* | drop s* over depths (min–max) | negative share | refused | "
          "reported with |error| > tol |")
    print("|---|---|---|---|---|---|---|")
    for (n, e), g in drop.groupby(["net", "eps"], sort=False):
        missed = int(((g.err.abs() > tol) & ~g.refused.astype(bool)).sum())
        print(f"| {n} | {e:g} | {g.exact.iloc[0]:.4f} | {g.s.min():.4f}–{g.s.max():.4f} | "
              f"{g.share.min():.3f}–{g.share.max():.3f} | {int(g.refused.sum())}/{len(g)} | {missed} |")
    print(f"\n# total {time.perf_counter() - t_all:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
