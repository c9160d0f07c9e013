"""One-shot GPU check: everything in prunetune that needs CUDA, in one run, one Markdown report.

    PYTHONPATH=. python bench/gpu_check.py --out DIR [--wheels .whl] [--budget 480]
    make gpu-check [GPU_CHECK_OUT=DIR]

For the day a GPU is lent: the machine needs Python ≥ 3.11 with torch (CUDA build), pandas,
pyarrow, scipy, scikit-learn, matplotlib, pyyaml and pytest — no Ray, no network, no install step.
PyHessian, when it is not installed, is imported from a carried pure-Python wheel (`--wheels`,
default `.whl/`; make it where there is network with `pip wheel --no-deps -w .whl pyhessian==0.1`).

Steps, each in its own subprocess with its own time limit (a hang cannot eat the budget) and
recorded as PASS / FAIL / SKIP with its seconds and the tail of its output:

1. `cuda-tests`: the tests that skip without CUDA (found by reading tests/ for
   `skipif(not torch.cuda.is_available())`), run with pytest;
2. `demo-fp32`, `demo-bf16`: sweeps/configs/demo.yaml through the serial backend on cuda
   (resources.gpus = 1), bf16 autocast off, then on; accuracies side by side;
3. `masks`: effective masks on CUDA vs CPU for LeNet-300-100, LeNet-5, VGG-16 and ResNet-18 at
   sparsities 0.9 / 0.99 / 0.999 — they must be identical;
4. `slq`: bench/slq_vs_pyhessian.py --device cuda --repeats 1 (ours vs PyHessian, same probes and
   iterations, one round each to fit the budget);
5. `throughput`: pruning.train vs a bare loop (bench/train_throughput.py's two loops) for
   LeNet-300-100 and ResNet-18 on CUDA, samples/s.

The report is `DIR/gpu_check.md`; the exit status is 1 if a step failed. Without CUDA it prints one
line and exits 2, writing nothing. `--device cpu --quick` runs the same plumbing on a CPU (smaller
settings) to check this script itself where no GPU is lent; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
EXIT_NO_CUDA = 2
TAIL = 1500  # characters of a step's output kept in the report


@dataclass
class Step:
    name: str
    status: str          # PASS | FAIL | SKIP
    seconds: float
    body: str            # Markdown for the report


# ----------------------------------------------------------------------------- orchestration


def env(wheels: Path) -> dict[str, str]:
    """Subprocess environment: this checkout first, PyHessian from a carried wheel when absent."""
    path = [str(ROOT)]
    try:
        import pyhessian  # noqa: F401  (only asks whether it is installed)
    except ImportError:
        path += [str(w) for w in sorted(wheels.glob("*.whl")) if w.name.lower().startswith("pyhessian-")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*path, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def run(name: str, cmd: list[str], timeout: float, environ: dict[str, str], render=None) -> Step:
    """One step as a subprocess; `render(completed process)` turns a passing step's output into Markdown."""
    if timeout < 20:
        return Step(name, "SKIP", 0.0, "out of time (the check's budget was spent by earlier steps)")
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return Step(name, "FAIL", time.monotonic() - t0, f"timed out after {timeout:.0f} s\n\n```\n{out[-TAIL:]}\n```")
    seconds = time.monotonic() - t0
    if p.returncode != 0:
        return Step(name, "FAIL", seconds, f"exit {p.returncode}\n\n```\n{(p.stdout + p.stderr)[-TAIL:]}\n```")
    return Step(name, "PASS", seconds, render(p) if render else f"```\n{p.stdout[-TAIL:]}\n```")


def cuda_tests() -> list[str]:
    """Node ids of the tests that skip without CUDA (read from the source, nothing imported)."""
    ids = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and any(
                    "skipif" in ast.unparse(d) and "cuda.is_available" in ast.unparse(d) for d in node.decorator_list):
                ids.append(f"tests/{path.name}::{node.name}")
    return ids


def demo_spec(tmp: Path, bf16: bool, device: str, quick: bool) -> Path:
    import yaml

    raw = yaml.safe_load((ROOT / "sweeps" / "configs" / "demo.yaml").read_text())
    raw["name"] = f"demo_{device}_{'bf16' if bf16 else 'fp32'}"
    raw["resources"] = {"cpus": 1, "gpus": 1 if device == "cuda" else 0}
    raw["train"] = {**raw["train"], "bf16": bf16, **({"epochs": 2} if quick else {})}
    if quick:
        raw["seed"] = [0]
    raw["storage"] = str(tmp / "results")
    path = tmp / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def demo_table(tmp: Path, device: str) -> str:
    """Mean test accuracy per pruner and sparsity, bf16 off vs on, and what each sweep cost."""
    import pandas as pd

    from analysis.load import read_arrow

    frames = {}
    for kind in ("fp32", "bf16"):
        df = read_arrow(f"demo_{device}_{kind}", "trials", storage=str(tmp / "results"), use_cache=False).to_pandas()
        frames[kind] = df
    lines = []
    for kind, df in frames.items():
        if df.empty:
            continue
        lines.append(f"- {kind}: {len(df)} cells, {int((df.status == 'failed').sum())} failed, device "
                     f"{df.device.iloc[0]}, {df.total_seconds.sum():.0f} s of cell time")
    if all(not df.empty for df in frames.values()):
        acc = {k: df[df.status != "failed"].groupby(["pruner", "sparsity"], dropna=False).test_acc.mean()
               for k, df in frames.items()}
        t = pd.DataFrame({"fp32": acc["fp32"], "bf16": acc["bf16"]})
        lines += ["", "| pruner | sparsity | test acc fp32 | test acc bf16 | bf16 − fp32 |", "|---|---|---|---|---|"]
        lines += [f"| {p} | {s} | {r.fp32:.4f} | {r.bf16:.4f} | {r.bf16 - r.fp32:+.4f} |"
                  for (p, s), r in t.iterrows()]
    return "\n".join(lines)


def report(out: Path, steps: list[Step], header: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# GPU check ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "", header, "",
             "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.0f} |" for s in steps]
    for s in steps:
        lines += ["", f"## {s.name}: {s.status}", "", s.body]
    path = out / "gpu_check.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="folder of the Markdown report (gpu_check.md)")
    ap.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="carried wheels (PyHessian)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for all steps (default 8 minutes)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="smaller settings (to check this script on a CPU)")
    ap.add_argument("--step", choices=("masks", "throughput"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
              "run it on a machine with a GPU", file=sys.stderr)
        return EXIT_NO_CUDA
    if args.step == "masks":
        print(masks_step(args.device))
        return 0
    if args.step == "throughput":
        print(throughput_step(args.device, args.quick))
        return 0

    start, environ, py = time.monotonic(), env(args.wheels), sys.executable
    left = lambda share: min(share, args.budget - (time.monotonic() - start))  # noqa: E731
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu (plumbing check only)"
    header = (f"device {gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}); Python "
              f"{sys.version.split()[0]}; budget {args.budget:.0f} s{'; quick' if args.quick else ''}")
    steps = []
    tests = cuda_tests()
    if args.device == "cuda":
        steps.append(run("cuda-tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], left(60),
                         environ))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        for bf16 in (False, True):
            spec = demo_spec(tmp, bf16, args.device, args.quick)
            steps.append(run(f"demo-{'bf16' if bf16 else 'fp32'}", [py, "-m", "sweeps.cli", "run", str(spec),
                                                                      "--backend", "serial"], left(100), environ,
                             render=lambda p: "`" + p.stderr.strip().splitlines()[-1] + "`"))
        steps[-1].body += "\n\n" + demo_table(tmp, args.device)
        steps.append(run("masks", [py, __file__, "--out", str(args.out), "--step", "masks", "--device", args.device],
                         left(40), environ, render=lambda p: p.stdout))
        # one round per method (the bench's default is two): 10 subprocesses fit the step's share
        quick = ["--probes", "2", "--iterations", "8"] if args.quick else []
        steps.append(run("slq", [py, str(BENCH / "slq_vs_pyhessian.py"), "--device", args.device, "--repeats", "1",
                                 *quick],
                         left(120), environ, render=lambda p: p.stdout.strip()))
        steps.append(run("throughput", [py, __file__, "--out", str(args.out), "--step", "throughput", "--device",
                                        args.device, *(["--quick"] if args.quick else [])], left(60), environ,
                         render=lambda p: p.stdout))
    path = report(args.out, steps, header)
    print(f"gpu-check: {sum(s.status == 'PASS' for s in steps)}/{len(steps)} steps passed in "
          f"{time.monotonic() - start:.0f} s; report {path}")
    return 1 if any(s.status == "FAIL" for s in steps) else 0


# ----------------------------------------------------------------------------- the in-script steps


MASK_MODELS = [("lenet300100", (1, 28, 28)), ("lenet5", (3, 32, 32)), ("vgg16", (3, 32, 32)),
               ("resnet18", (3, 32, 32))]


def masks_step(device: str) -> str:
    """Effective masks of random masks on `device` vs CPU: identical, layer by layer."""
    import torch

    from pruning import masks as masks_lib
    from pruning import models
    from pruning.sparsity import EffectiveMaskEvaluator

    rows = ["| model | sparsity | layers | identical | CPU s | device s |", "|---|---|---|---|---|---|"]
    bad = []
    for name, shape in MASK_MODELS:
        model = models.build(name, input_shape=shape, num_classes=10)
        cpu_eval = EffectiveMaskEvaluator(model, input_shape=shape)
        dev_eval = EffectiveMaskEvaluator(model.to(device), input_shape=shape)
        for sparsity in (0.9, 0.99, 0.999):
            g = torch.Generator().manual_seed(0)
            m = {n: (torch.rand(p.weight.shape, generator=g) >= sparsity).float()
                 for n, p in masks_lib.prunable_layers(model)}
            t0 = time.perf_counter()
            on_cpu = cpu_eval(m)
            t1 = time.perf_counter()
            on_dev = dev_eval({n: v.to(device) for n, v in m.items()})
            if device == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            same = [torch.equal(on_cpu[n].cpu(), on_dev[n].cpu()) for n in on_cpu]
            if not all(same):
                bad.append(f"{name} s={sparsity}")
            rows.append(f"| {name} | {sparsity} | {len(same)} | {sum(same)}/{len(same)} | {t1 - t0:.3f} | "
                        f"{t2 - t1:.3f} |")
    if bad:
        print("\n".join(rows), file=sys.stderr)
        raise SystemExit(f"effective masks differ between CPU and {device}: {', '.join(bad)}")
    return "\n".join(rows)


def throughput_step(device: str, quick: bool) -> str:
    """samples/s of pruning.train vs the bare loop (bench/train_throughput.py's), best of N rounds."""
    import torch

    sys.path.insert(0, str(BENCH))
    from train_throughput import bare_loop, ours  # noqa: E402  (bench/ is not a package)

    from pruning import data, models

    dev = torch.device(device)
    n = 1_024 if quick else 20_000
    cases = [("lenet300100", {"input_shape": (1, 28, 28), "num_classes": 10, "n_train": n, "n_test": 100}, 100),
             ("resnet18", {"input_shape": (3, 32, 32), "num_classes": 10, "n_train": n // 4, "n_test": 100}, 128)]
    rows = ["| model | data | batch | bare samples/s | ours samples/s | ours / bare |", "|---|---|---|---|---|---|"]
    for name, opts, batch in cases:
        tr, _ = data.load("synthetic", **opts)
        x, y = tr.tensors(dev)
        bare_t, our_t = [], []
        for r in range(2 if quick else 4):  # round 0 warms up (cuDNN autotune, allocator)
            torch.manual_seed(r)
            m1 = models.build(name, input_shape=tr.input_shape, num_classes=tr.num_classes).to(dev)
            m2 = models.build(name, input_shape=tr.input_shape, num_classes=tr.num_classes).to(dev)
            b, o = bare_loop(m1, x, y, batch, 1, dev), ours(m2, tr, batch, 1, dev)
            if r:
                bare_t.append(b)
                our_t.append(o)
        bare_sps, our_sps = len(tr) / min(bare_t), len(tr) / min(our_t)
        rows.append(f"| {name} | synthetic {'×'.join(map(str, opts['input_shape']))}, {len(tr)} | {batch} | "
                    f"{bare_sps:.0f} | {our_sps:.0f} | {our_sps / bare_sps:.3f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
