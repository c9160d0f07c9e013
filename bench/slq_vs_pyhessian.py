"""SLQ speed and agreement: prunetune's `slq` vs PyHessian's `density`, same model/data/probes/iterations.

    .venv/bin/pip install pyhessian          # bench-only; never a runtime dependency
    .venv/bin/python bench/slq_vs_pyhessian.py [--probes 8] [--iterations 64] [--cases lenet resnet]
                                              [--device cpu|cuda]

Cases: LeNet-300-100 on digits (1,437 training images, 8×8), LeNet-300-100 on the full Fashion-MNIST
(`lenet_fashion`: 60,000 images, 28×28, D = 266,610; Debian's dataset-fashion-mnist) and a small CIFAR-shaped ResNet (option-A
basic blocks, 8/16/32 channels, one block per stage, BatchNorm) on 16 synthetic 3×32×32 images. Every
method runs in its own subprocess (clean peak-RSS, no shared caches), one at a time:
- ours: `pruning.slq.slq` over all parameters (BN included, as PyHessian does), no deflation;
- floor: the same number of bare `hvp_sum` calls (B directions each) in the HVP mode `slq` settled on;
  our SLQ time minus this floor is Lanczos itself (reorthogonalization, scalars, bookkeeping);
- modes: per HVP mode, the best of 3 timed passes after a first one (which builds caches);
- pyhessian_batch: PyHessian with the whole training set as its single batch (graph kept);
- pyhessian_loader: PyHessian's data-loader mode over 4 batches (recomputes per product); with
  `--loader-batch-sizes 200` also at other batch sizes (200: its example script's default);
- roofline (ReLU MLPs only): the GEMM arithmetic of one `mlp_rop` pass (`mlp_rop_gemm_flops`) and this
  machine's float32 GEMM rate on the pass's largest GEMM, timed here: `iterations` passes at that
  rate are the fastest any exact R-operator SLQ in float32 could run; PyHessian's times over that
  bound are the highest ratios reachable on this machine.
PyHessian 0.1 calls `torch.eig`, removed from torch: we install a shim in this process only, mapping
`torch.eig(T, eigenvectors=True)` to `torch.linalg.eigh` (T is symmetric tridiagonal), returning
eigenvalues in PyHessian's (n, 2) real/imaginary layout.
Ratios are PyHessian time / our time, measured in the same run. Timed numbers only, no asserts.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pruning.data import load  # noqa: E402
from pruning.hvp import HVP_MODES, STRUCTURED_MODES, LocalHVPBackend  # noqa: E402
from pruning.slq import SLQResult, slq  # noqa: E402
from pruning.hvp_mlp import mlp_chain  # noqa: E402
from pruning.models import CifarBasicBlock, build  # noqa: E402


def small_resnet(num_classes: int = 10) -> nn.Module:
    """A CIFAR-shaped ResNet small enough for a 2-core bench: stem 8, stages 8/16/32, one block each."""
    blocks, in_planes = [], 8
    for planes, stride in [(8, 1), (16, 2), (32, 2)]:
        blocks.append(CifarBasicBlock(in_planes, planes, stride))
        in_planes = planes
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), *blocks,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


def setup(case: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    if case == "lenet":
        train, _ = load("digits")
        model = build("lenet300100", input_shape=train.input_shape, num_classes=10)
    elif case == "lenet_fashion":  # the real-data case: 60,000 Fashion-MNIST images, D = 266,610
        train, _ = load("fashion_mnist")
        model = build("lenet300100", input_shape=train.input_shape, num_classes=10)
    elif case == "resnet":
        train, _ = load("synthetic", input_shape=(3, 32, 32), num_classes=10, n_train=16, n_test=8)
        model = small_resnet()
        with torch.no_grad():  # non-trivial BN statistics for the eval-mode operator
            model.train()
            model(train.tensors()[0])
    else:
        raise ValueError(f"case {case!r}: choose from lenet, lenet_fashion, resnet")
    x, y = train.tensors()
    return model.eval(), x, y


def _shim_torch_eig() -> None:
    def eig(t: torch.Tensor, eigenvectors: bool = False):
        w, v = torch.linalg.eigh(t)
        return torch.stack([w, torch.zeros_like(w)], dim=1), v

    torch.eig = eig  # type: ignore[attr-defined]


def mlp_rop_gemm_flops(model: nn.Module, n: int, b: int) -> int:
    """Floating-point operations of the GEMMs in one `mlp_rop` pass (`pruning.hvp_mlp.MLPHVP`) over
    n samples and b directions, counted from its equations: the first layer has the two products
    with the data (h V_lᵀ forward, ġ_lᵀ h backward), every later layer six (the tangent through W_l
    forward and back, the two with V_l, the two weight products). Elementwise work is left out."""
    flops = 0
    for l, lin in enumerate(m for m in model.modules() if isinstance(m, nn.Linear)):
        out, fan_in = lin.weight.shape
        k = fan_in + int(lin.bias is not None)
        flops += 2 * (2 * n * k * b * out)            # h V_lᵀ and ġ_lᵀ h (bias column included)
        if l:
            flops += 4 * (2 * n * b * fan_in * out)   # ḣ W_lᵀ, g_lᵀ ḣ, ġ_l W_l, g_l V_l
    return flops


def gemm_rate(m: int, k: int, n: int, repeats: int = 5) -> float:
    """This machine's float32 GEMM rate (FLOP/s) on an (m, k) @ (k, n) product: the best of `repeats`."""
    a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    torch.mm(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best


def spectrum_stats(nodes: np.ndarray, weights: np.ndarray, dim: int) -> dict:
    r = SLQResult(nodes=nodes, weights=weights, steps=np.full(len(nodes), nodes.shape[1]),
                  probe_ids=np.arange(len(nodes)), dim=dim, full_dim=dim, zero_mass=0.0, seed=0,
                  iterations=nodes.shape[1])
    per_probe = dim * (r.weights * r.nodes).sum(axis=1)  # Hutchinson estimate of each probe
    return {"lambda_max": r.lambda_max(), "lambda_min": r.lambda_min(), "trace": r.trace(),
            "trace_se": float(per_probe.std(ddof=1) / np.sqrt(len(per_probe)))}


def sync(device: torch.device) -> None:
    """CUDA kernels run asynchronously: a timer must wait for them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_one(method: str, case: str, probes: int, iterations: int, device: str = "cpu") -> dict:
    dev = torch.device(device)
    model, x, y = setup(case)
    model, x, y = model.to(dev), x.to(dev), y.to(dev)
    names = [n for n, _ in model.named_parameters()]
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    out: dict = {"method": method, "case": case, "device": str(dev),
                 "dim": sum(p.numel() for p in model.parameters()), "n": len(y)}
    sync(dev)
    t0 = time.perf_counter()
    if method == "ours":
        r = slq(model, nn.functional.cross_entropy, [(x, y)], probes=probes, iterations=iterations,
                params=names, deflate=False, batch_probes=probes, device=dev)
        out.update(spectrum_stats(r.nodes, r.weights, r.dim), hvp_mode=r.info["hvp_mode"],
                   hvp_seconds=r.hvp_seconds, passes=r.data_passes)
    elif method.startswith("floor:"):  # floor:<mode picked by ours>
        be = LocalHVPBackend(model, None, [(x, y)], params=names, mode=method.split(":")[1], device=dev)
        V = torch.randn(be.dim, probes, device=dev)
        for _ in range(iterations):
            be.hvp_sum(V)
        out.update(hvp_mode=be.mode)
    elif method == "roofline":
        from pruning.hvp_mlp import CHUNK_ROWS

        first = next(m for m in model.modules() if isinstance(m, nn.Linear))
        rate = gemm_rate(min(CHUNK_ROWS, len(y)), first.in_features + 1, probes * first.out_features)
        flops = mlp_rop_gemm_flops(model, len(y), probes)
        out.update(gemm_flops_per_pass=flops, gemm_rate=rate, bound_seconds=iterations * flops / rate)
    elif method == "modes":
        eligible = [m for m in STRUCTURED_MODES if not isinstance(mlp_chain(model, None), str)]
        for mode in (*HVP_MODES, *eligible):
            be = LocalHVPBackend(model, None, [(x, y)], params=names, mode=mode, device=dev)
            V = torch.randn(be.dim, probes, device=dev)
            tb = time.perf_counter()
            be.hvp_sum(V)  # first pass: includes the cache build of the cached modes
            sync(dev)
            out[mode + "_first"] = time.perf_counter() - tb
            times = []
            for _ in range(3):
                tm = time.perf_counter()
                be.hvp_sum(V)
                sync(dev)
                times.append(time.perf_counter() - tm)
            out[mode] = min(times)
    else:
        _shim_torch_eig()
        from pyhessian import hessian as pyh

        crit = nn.CrossEntropyLoss()
        if method == "pyhessian_batch":
            h = pyh(model, crit, data=(x, y), cuda=dev.type == "cuda")
        else:  # pyhessian_loader (4 batches) or pyhessian_loader:<batch size>
            n = len(y)
            step = int(method.split(":")[1]) if ":" in method else math.ceil(n / 4)
            h = pyh(model, crit, dataloader=[(x[i : i + step], y[i : i + step]) for i in range(0, n, step)],
                    cuda=dev.type == "cuda")
        torch.manual_seed(1)
        ev, w = h.density(iter=iterations, n_v=probes)
        out.update(spectrum_stats(np.array(ev, dtype=np.float64), np.array(w, dtype=np.float64), out["dim"]))
    sync(dev)
    out["seconds"] = time.perf_counter() - t0
    if dev.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["peak_rss_over_setup_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=64)
    ap.add_argument("--cases", nargs="+", default=["lenet", "resnet"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i] (the GPU goal: ≥ 5× over PyHessian)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="interleaved rounds; the table shows each method's fastest (noise only adds time)")
    ap.add_argument("--loader-batch-sizes", type=int, nargs="*", default=[],
                    help="also run PyHessian's data-loader mode at these batch sizes (200: its example's default)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write all results to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(args.one, args.cases[0], args.probes, args.iterations, args.device)))
        return
    results = []
    for case in args.cases:
        res: dict = {}
        mlp = not isinstance(mlp_chain(setup(case)[0], None), str)
        loaders = [f"pyhessian_loader:{bs}" for bs in args.loader_batch_sizes]
        for rnd in range(args.repeats):
            for method in ("modes", *(["roofline"] if mlp else []), "ours", "floor", "pyhessian_batch",
                           "pyhessian_loader", *loaders):
                if method in ("modes", "roofline") and rnd:
                    continue
                if method == "floor":
                    method = "floor:" + res["ours"]["hvp_mode"]
                cmd = [sys.executable, __file__, "--one", method, "--cases", case, "--probes", str(args.probes),
                       "--iterations", str(args.iterations), "--threads", str(args.threads),
                       "--device", args.device]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                key = method if method.startswith("pyhessian") else method.split(":")[0]
                r["all_seconds"] = res.get(key, {}).get("all_seconds", []) + [r["seconds"]]
                if key not in res or r["seconds"] < res[key]["seconds"]:
                    res[key] = r
                else:
                    res[key]["all_seconds"] = r["all_seconds"]
                print(f"  {case}/{method} round {rnd}: {r['seconds']:.1f} s", file=sys.stderr, flush=True)
        results.append(res)
        o, f, pb, pl = res["ours"], res["floor"], res["pyhessian_batch"], res["pyhessian_loader"]
        print(f"\n## {case}: D={o['dim']}, {args.probes} probes × {args.iterations} iterations, "
              f"{args.device}, {args.threads} threads, best of {args.repeats}; HVP mode picked: {o['hvp_mode']}")
        if "peak_gpu_mb" in o:
            print("peak GPU memory MB: " + ", ".join(f"{k} {res[k]['peak_gpu_mb']:.0f}"
                                                     for k in ("ours", "floor", "pyhessian_batch", "pyhessian_loader")))
        print("| method | seconds (best; all) | PyHessian / ours | peak RSS MB (over setup) | λmax | λmin | "
              "trace ± s.e. |")
        print("|---|---|---|---|---|---|---|")
        rows = [("ours (slq)", o), ("PyHessian single batch", pb), ("PyHessian data loader (4 batches)", pl)]
        rows += [(f"PyHessian data loader (batch {m.split(':')[1]}, {math.ceil(o['n'] / int(m.split(':')[1]))} batches)",
                  res[m]) for m in loaders]
        for name, r in rows:
            print(f"| {name} | {r['seconds']:.2f} ({', '.join(f'{t:.1f}' for t in r['all_seconds'])}) | "
                  f"{r['seconds'] / o['seconds']:.2f}× | "
                  f"{r['peak_rss_mb']:.0f} ({r['peak_rss_over_setup_mb']:.0f}) | {r['lambda_max']:.4g} | "
                  f"{r['lambda_min']:.4g} | {r['trace']:.4g} ± {r['trace_se']:.2g} |")
        print(f"| bare HVP floor ({f['hvp_mode']}, same passes) | {f['seconds']:.2f} "
              f"({', '.join(f'{t:.1f}' for t in f['all_seconds'])}) | — | "
              f"{f['peak_rss_mb']:.0f} ({f['peak_rss_over_setup_mb']:.0f}) | | | |")
        share = (o["seconds"] - f["seconds"]) / o["seconds"]
        print(f"\nours / floor = {o['seconds'] / f['seconds']:.3f} (time outside the HVPs: {100 * share:.1f}% "
              f"of our SLQ time; in-run HVP time {o['hvp_seconds']:.2f} s)")
        if "roofline" in res:
            rf = res["roofline"]
            print(f"roofline: {rf['gemm_flops_per_pass'] / 1e9:.0f} GFLOP of GEMMs per pass of {args.probes} directions, "
                  f"float32 GEMM rate here {rf['gemm_rate'] / 1e9:.0f} GFLOP/s → {args.iterations} passes take at least "
                  f"{rf['bound_seconds']:.1f} s (ours at {100 * rf['bound_seconds'] / o['seconds']:.0f}% of that bound); "
                  "highest reachable ratios: " + ", ".join(f"{name} {r['seconds'] / rf['bound_seconds']:.2f}×"
                                                          for name, r in rows[1:]))
        m = res["modes"]
        print("HVP modes, one pass of " + str(args.probes) + " directions (s): " + ", ".join(
            f"{k} {m[k]:.3f} (first {m[k + '_first']:.3f})" for k in (*HVP_MODES, *STRUCTURED_MODES) if k in m))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
