"""Orchestration overhead of the Ray backend against the serial backend, and the dense-cache saving.

    python bench/sweep_overhead.py [--cells 16] [--num-cpus 2] [--epochs 2] [--out DIR]

The same sweep (lenet300100 on digits, magnitude/global at cells/2 sparsities × 2 seeds, finetune
1 epoch) runs three times into fresh storages: serially in this process, then as Ray Tune trials on a
local Ray with `--num-cpus` one-CPU slots, with and without Tune's actor reuse. Reported, with the
serial run as the in-run baseline:

- busy: Σ of the cells' own `total_seconds` (time inside `run_cell`);
- overhead per cell = (wall × slots − busy) / cells: slot-seconds a cell costs beyond its own work
  (Ray: trial actor start, placement groups, Tune bookkeeping; serial: the store check only);
- slot efficiency = busy / (wall × slots);
- dense-cache saving: every cell of a post-training pruner needs the trained dense model of its
  seed; the cache trains it once per seed (`computed.log` counts real trainings), so
  (cells − trainings) × mean dense training time is the time not spent.
Ray's own start (`ray.init`) is timed separately and excluded from the wall time.
Numbers depend on the machine's load: compare only ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, 127.0.0.1-only benchmark cluster
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def make_spec(storage: str, cells: int, epochs: int, finetune_epochs: int = 1) -> Any:
    from sweeps.spec import build_spec

    n = max(cells // 2, 1)
    sparsities = [round(0.3 + 0.65 * i / max(n - 1, 1), 4) for i in range(n)]
    raw = {"name": "overhead", "model": "lenet300100", "dataset": "digits", "pruner": "magnitude/global",
           "sparsity": sparsities, "seed": [0, 1], "train": {"epochs": epochs, "batch_size": 128},
           "prune": {"protocol": "finetune", "finetune_epochs": finetune_epochs}, "resources": {"cpus": 1}}
    return build_spec(raw, storage=storage)


def measure(backend: Any, spec: Any, slots: int) -> dict[str, float]:
    from analysis.load import read_arrow
    from sweeps.dense_cache import DENSE_ITEM, DenseCache
    from sweeps.cells import expand
    from sweeps.progress import Progress
    from sweeps.trial import Where

    cells = expand(spec)
    t0 = time.perf_counter()
    summary = backend.run(cells, Where(storage=spec.storage), progress=Progress(len(cells), stream=io.StringIO()))
    wall = time.perf_counter() - t0
    rows = read_arrow(spec.name, "trials", storage=spec.storage, use_cache=False).to_pylist()
    busy = sum(r["total_seconds"] for r in rows)
    cache = DenseCache(spec.storage)
    keys = [p.name for p in Path(spec.storage, "_cache", "dense").iterdir() if p.is_dir()]
    trainings = sum(cache.computations(k, DENSE_ITEM) for k in keys)
    dense_s = [cache.load(k, DENSE_ITEM)["metrics"]["seconds"] for k in keys]
    return {"cells": len(cells), "failed": len(summary.failed), "wall_s": wall, "slots": slots,
            "busy_s": busy, "overhead_per_cell_s": (wall * slots - busy) / len(cells),
            "slot_efficiency": busy / (wall * slots), "dense_trainings": trainings,
            "dense_train_s": sum(dense_s) / len(dense_s),
            "dense_cache_saved_s": (len(cells) - trainings) * sum(dense_s) / len(dense_s)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=16)
    p.add_argument("--num-cpus", type=int, default=2, help="local Ray slots (one CPU per trial)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--finetune-epochs", type=int, default=1,
                   help="per-cell work: epochs of fine-tuning after pruning (e.g. 400 for ~30-s cells)")
    p.add_argument("--skip-no-reuse", action="store_true", help="measure Ray with actor reuse only")
    p.add_argument("--out", default=None, help="where results go (default: a temporary directory)")
    args = p.parse_args()

    import ray
    import torch

    from sweeps.backends.ray_tune import RayBackend, RayOptions
    from sweeps.backends.serial import SerialBackend

    root = Path(args.out or tempfile.mkdtemp(prefix="sweep-overhead-"))
    torch.set_num_threads(1)  # one CPU per cell in both backends
    serial = measure(SerialBackend(), make_spec(str(root / "serial"), args.cells, args.epochs, args.finetune_epochs), slots=1)

    results = {"serial": serial}
    for reuse in (True,) if args.skip_no_reuse else (True, False):
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
        ray_start = time.perf_counter() - t0
        name = "ray" if reuse else "ray, no actor reuse"
        try:
            spec = make_spec(str(root / name.replace(", ", "-").replace(" ", "-")), args.cells, args.epochs,
                             args.finetune_epochs)
            backend = RayBackend.from_spec(spec, RayOptions(reuse_actors=reuse))
            results[name] = {**measure(backend, spec, slots=args.num_cpus), "ray_start_s": ray_start}
        finally:
            ray.shutdown()

    print(json.dumps(results, indent=2))
    print("\n| backend | cells | slots | wall s | busy s | overhead/cell s | slot efficiency | "
          "dense trainings | dense-cache saved s | wall / serial |\n|---|---|---|---|---|---|---|---|---|---|")
    for name, m in results.items():
        print(f"| {name} | {m['cells']} | {m['slots']} | {m['wall_s']:.1f} | {m['busy_s']:.1f} | "
              f"{m['overhead_per_cell_s']:.2f} | {m['slot_efficiency']:.2f} | {m['dense_trainings']} | "
              f"{m['dense_cache_saved_s']:.1f} | {m['wall_s'] / serial['wall_s']:.1f} |")
    print("\nray start (excluded from wall): " + ", ".join(
        f"{k} {m['ray_start_s']:.1f} s" for k, m in results.items() if "ray_start_s" in m))


if __name__ == "__main__":
    main()
