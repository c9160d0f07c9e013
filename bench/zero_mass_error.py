"""How wrong is G(R) from SLQ, with and without the zero-mass correction, against the exact spectrum?

    .venv/bin/python bench/zero_mass_error.py [--probes 8] [--iterations 64] [--samples 600]

Nets: an MLP 64→24→10 (1,810 parameters, as in issue #7) on the first `samples` digits, trained by
`pruning.train` (SGD, constant lr) in three variants: "plain" (no L1), "lomp" (L1 λ=2e-3, which
kills hidden units) and "dead10" (plain with 10 hidden units forced dead by a −1000 bias). The
Hessian of the mean training loss is formed exactly (torch.func.hessian, float64) and diagonalized
(eigvalsh); SLQ runs with `deflate=False` (plain) and `deflate=True` (zero rows removed, q added).
Printed: q found vs exact zero rows and near-zero eigenvalues; |G_slq − G_exact| over R for ε = the
net's batch-loss std and ε = 0.01; and the predicted removable fraction s* = G(R(s*)) with the exact
spectrum, plain SLQ, corrected SLQ and the corrected Gauss–Radau rule (`SLQResult.radau`; with the
Gauss rule it brackets each probe's quadratic form on a PSD spectrum, not the exact trace, so it is
a diagnostic); the corrected prediction's resolution (spread of s*(k) over the last quarter of the
run, jackknife SE, the flag) and the exact `drop` s* with and without the zero-curvature tolerance. Feeds docs/zero_mass.md.
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pruning import masks as masks_lib  # noqa: E402
from pruning.data import load  # noqa: E402
from pruning.hvp import dense_hessian  # noqa: E402
from pruning.slq import SLQResult, slq  # noqa: E402
from pruning.limit import batch_loss_std, g_of_r, limit_equation, predict_limit  # noqa: E402
from pruning.train import TrainConfig, train  # noqa: E402

RADII = (0.5, 1, 2, 4, 8, 16, 32, 64, 128)


def exact_spectrum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Exact eigenvalues of the Hessian over all parameters, and the Hessian itself."""
    H = dense_hessian(model, x, y, [n for n, _ in model.named_parameters()])
    return torch.linalg.eigvalsh(H).numpy(), H


def as_slq(ev: np.ndarray) -> SLQResult:
    """The exact spectrum in SLQResult form: one 'probe', every eigenvalue a node of weight 1/D."""
    d = len(ev)
    return SLQResult(nodes=ev[None, :], weights=np.full((1, d), 1.0 / d), steps=np.array([d]),
                     probe_ids=np.array([0]), dim=d, full_dim=d, zero_mass=0.0, seed=0, iterations=d)


def make_nets(train_split, seed: int) -> dict[str, nn.Module]:
    nets = {}
    for name, l1 in (("plain", 0.0), ("lomp", 2e-3)):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
        cfg = TrainConfig(epochs=60, batch_size=64, lr=0.05, momentum=0.9, weight_decay=0.0, l1=l1,
                          schedule="constant", eval_every=0)
        train(model, train_split, None, cfg, seed=seed)
        nets[name] = model
    dead = copy.deepcopy(nets["plain"])
    with torch.no_grad():
        dead[1].bias[:10] = -1e3
    nets["dead10"] = dead
    return nets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=64)
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    full, _ = load("digits")
    n = args.samples
    sub = dataclasses.replace(full, x=full.x[:n], y=full.y[:n], _device_cache={})
    nets = make_nets(sub, args.seed)
    print(f"# zero-mass bench: MLP 64-24-10 on {n} digits, SLQ {args.probes} probes × {args.iterations} "
          f"iterations, seed {args.seed}\n")
    for name, model32 in nets.items():
        t0 = time.perf_counter()
        eps_net = batch_loss_std(model32, sub, batch_size=64)
        model = copy.deepcopy(model32).double().eval()
        x, y = sub.tensors()
        x = x.double()
        ev, H = exact_spectrum(model, x, y)
        kw = dict(probes=args.probes, iterations=args.iterations, seed=args.seed)
        plain = slq(model, None, [(x, y)], deflate=False, **kw)
        fixed = slq(model, None, [(x, y)], deflate=True, **kw)
        radau = fixed.radau()  # Gauss–Radau rule, node at 0 (a diagnostic, not a bound)
        exact = as_slq(ev)
        zero_rows = float((H == 0).all(dim=1).double().mean())
        rel = np.abs(ev) / np.abs(ev).max()
        print(f"## {name}: D={len(ev)}, q found {fixed.zero_mass:.4f}, exact zero rows {zero_rows:.4f}, "
              f"|λ|<1e-8: {np.mean(np.abs(ev) < 1e-8):.3f}, |λ|/λmax<1e-6: {np.mean(rel < 1e-6):.3f}, "
              f"λmax {ev.max():.4g}, λmin {ev.min():.4g}, batch-loss std ε {eps_net:.4g} "
              f"({time.perf_counter() - t0:.0f} s)\n")
        for eps in (eps_net, 0.01):
            print(f"ε = {eps:.4g}\n")
            print("| R | G exact | G plain SLQ | err plain | G corrected | err corrected | Radau (corrected) |")
            print("|---|---|---|---|---|---|---|")
            for r in RADII:
                ge, gp, gf, gr = (g_of_r(s, eps, r) for s in (exact, plain, fixed, radau))
                print(f"| {r} | {ge:.4f} | {gp:.4f} | {gp - ge:+.4f} | {gf:.4f} | {gf - ge:+.4f} | {gr:.4f} |")
            w = masks_lib.weights(model)
            preds = {k: predict_limit(w, s, eps) for k, s in
                     (("exact", exact), ("plain", plain), ("corrected", fixed), ("corrected Radau", radau))}
            print("\npredicted removable fraction s* (R(s*)): " + ", ".join(
                f"{k} {p.removed_frac:.4f} ({p.r:.3g})" for k, p in preds.items()) + "\n")
            c = preds["corrected"]
            print(f"resolution of corrected SLQ: spread of s*(k) over the last quarter {c.removed_frac_spread:.4f}, "
                  f"jackknife SE {c.removed_frac_se:.4f}, unresolved {c.unresolved}; "
                  f"|error| {abs(c.removed_frac - preds['exact'].removed_frac):.4f}")
            drop = {k: limit_equation(w, exact, eps, policy="drop", zero_tol=z).solve(exact)
                    for k, z in (("zero_tol=0 (old)", 0.0), ("default", None))}
            print("exact s* under drop: " + ", ".join(f"{k} {v:.4f}" for k, v in drop.items()) + "\n")


if __name__ == "__main__":
    main()
