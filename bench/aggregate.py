"""Benchmark: read a large synthetic store and build every analysis table end to end.

    .venv/bin/python bench/aggregate.py [--files 5000] [--rows-per-file 20] [--keep DIR]

A store of 100,000 trial rows in 5,000 Parquet files (the central schema) is generated into a temp
dir (not timed), then timed: `analysis.load.read_arrow` (a thread pool reading and stacking
batches of files), the conversion to pandas, and each table built and rendered to Markdown. The
baseline, measured in the same run, is the obvious loop
`pandas.concat(pandas.read_parquet(f) for f in files)`; the ratio is printed.
Goal on the 2-core dev machine: read + compute < 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import tables as T  # noqa: E402
from analysis.load import read_arrow, resolve, table_files  # noqa: E402
from sweeps.schema import SCHEMA_VERSION, TRIALS  # noqa: E402

MODELS = ("lenet5", "vgg16", "resnet20", "fc5")
DATASETS = ("cifar10", "cifar100")
PRUNERS = ("random/uniform", "random/erk", "random/igq", "random/smart_ratio", "magnitude/global",
           "magnitude/igq", "lamp", "snip", "synflow", "grasp", "imp", "lomp", "dense")
SPARSITIES = np.array([0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995])


def synthetic_trials(n: int, seed: int = 0) -> pa.Table:
    """n plausible trial rows: point and limit cells, ∞ effective compressions, failed cells."""
    rng = np.random.default_rng(seed)
    model = rng.choice(MODELS, n)
    pruner = rng.choice(PRUNERS, n)
    sparsity = np.where(pruner == "dense", 0.0, rng.choice(SPARSITIES, n))
    kind = np.where(rng.random(n) < 0.02, "limit", "point")
    status = rng.choice(["ok", "failed", "diverged"], n, p=[0.97, 0.02, 0.01])
    direct = 1.0 / (1.0 - sparsity)
    effective = direct * (1.0 + rng.lognormal(0.0, 1.0, n) * (sparsity > 0.9))
    effective[rng.random(n) < 0.01] = np.inf
    acc = np.clip(0.95 - 0.04 * np.log10(direct) ** 2 + rng.normal(0, 0.01, n), 0.1, 1.0)
    limit = kind == "limit"
    pred = np.where(limit, rng.uniform(0.9, 0.99, n), np.nan)
    actual = np.where(limit, pred + rng.normal(0, 0.01, n), np.nan)
    cols = {
        "cell_id": [f"{i:012x}" for i in range(n)],
        "sweep": ["bench"] * n, "kind": kind, "model": model, "dataset": rng.choice(DATASETS, n),
        "pruner": pruner, "target": rng.choice(["direct", "effective"], n), "sparsity": sparsity,
        "seed": rng.integers(0, 5, n), "status": status,
        "config": [json.dumps({"epochs": 160, "lr": 0.1, "batch_size": 128, "i": int(i)}) for i in range(n)],
        "n_prunable": np.full(n, 14_715_584), "direct_sparsity": sparsity,
        "effective_sparsity": 1.0 - 1.0 / effective, "direct_compression": direct,
        "effective_compression": effective, "test_acc": np.where(status == "failed", np.nan, acc),
        "test_loss": rng.uniform(0.1, 2.0, n), "lomp_l1": np.where(limit, 5e-5, np.nan),
        "epsilon": np.where(limit, 0.02, np.nan), "epsilon_source": np.where(limit, "batch_loss_std", None),
        "eigen_policy": np.where(limit, "abs", None), "zero_mass": np.where(limit, 0.3, np.nan),
        "predicted_removed_frac": pred, "predicted_kept_frac": 1 - pred,
        "band_kept_frac_low": 1 - pred - 0.01, "band_kept_frac_high": 1 - pred + 0.01,
        "trace_bound_removed_frac": pred - 0.2, "actual_removed_frac_strict": actual,
        "actual_kept_frac_strict": 1 - actual, "actual_removed_frac_tol": actual + 0.002,
        "actual_kept_frac_tol": 1 - actual - 0.002, "limit_tolerance_pp": np.where(limit, 0.1, np.nan),
        "schema_version": np.full(n, SCHEMA_VERSION, dtype=np.int32),
    }
    arrays = [pa.array(cols[f.name], f.type, from_pandas=True) if f.name in cols else pa.nulls(n, f.type)
              for f in TRIALS]
    return pa.Table.from_arrays(arrays, schema=TRIALS)


def write_store(root: Path, files: int, rows_per_file: int) -> Path:
    trials = synthetic_trials(files * rows_per_file)
    directory = root / "bench" / "trials"
    directory.mkdir(parents=True)
    (root / "bench" / "spec.yaml").write_text("name: bench\n")
    for i in range(files):
        pq.write_table(trials.slice(i * rows_per_file, rows_per_file), directory / f"{i:06d}.parquet")
    return root / "bench"


def timed(fn):
    """(value, wall seconds, CPU seconds of this process): CPU time shows contention on a shared box."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def age(paths: list[Path]) -> None:
    """Backdate the generated files: files younger than analysis.read_cache.RACY_NS are never cached."""
    past = time.time() - 3600
    for p in paths:
        os.utime(p, (past, past))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=5000)
    p.add_argument("--rows-per-file", type=int, default=20)
    p.add_argument("--keep", default=None, help="generate into (and reuse) this directory")
    p.add_argument("--skip-baseline", action="store_true", help="skip the slow pandas-loop baseline")
    args = p.parse_args()

    tmp = None if args.keep else tempfile.TemporaryDirectory()
    root = Path(args.keep or tmp.name)
    sweep = root / "bench"
    if not sweep.exists():
        _, gen, _ = timed(lambda: write_store(root, args.files, args.rows_per_file))
        print(f"generated {args.files} files × {args.rows_per_file} rows in {gen:.1f} s (not timed)")
    shutil.rmtree(sweep / "_analysis", ignore_errors=True)
    for old in (sweep / "trials").glob("new*.parquet"):
        old.unlink()
    age(list((sweep / "trials").glob("*.parquet")))

    store = resolve(str(sweep))
    files = [path for _, path in table_files(store, "trials")]
    rows = []

    def report(label: str, wall: float, cpu: float) -> None:
        rows.append((label, wall, cpu))
        print(f"{label:58s} {wall:7.2f} s wall {cpu:7.2f} s CPU")

    if not args.skip_baseline:
        _, wall, cpu = timed(lambda: pd.concat([pd.read_parquet(f) for f in files], ignore_index=True))
        report("baseline: pandas.read_parquet loop + concat", wall, cpu)
    needed = T.columns_needed(list(T.TABLE_SPECS))["trials"]
    _, cold_all, cpu = timed(lambda: read_arrow(store, "trials", use_cache=False))
    report("read cold, all columns (no cache)", cold_all, cpu)
    _, cold, cpu = timed(lambda: read_arrow(store, "trials", use_cache=False, columns=needed))
    report(f"read cold, the tables' {len(needed)} columns (no cache)", cold, cpu)
    _, first, cpu = timed(lambda: read_arrow(store, "trials", columns=needed))
    report("read cold, the tables' columns, writing the cache", first, cpu)
    _, warm, cpu = timed(lambda: read_arrow(store, "trials", columns=needed))
    report("read warm (cache valid)", warm, cpu)
    extra, new = synthetic_trials(50 * args.rows_per_file, seed=1), []
    for i in range(50):
        new.append(sweep / "trials" / f"new{i:03d}.parquet")
        pq.write_table(extra.slice(i * args.rows_per_file, args.rows_per_file), new[-1])
    age(new)
    _, incr, cpu = timed(lambda: read_arrow(store, "trials", columns=needed))
    report("read after 50 new files (1%)", incr, cpu)
    table = read_arrow(store, "trials", columns=needed)
    trials, t_pandas, cpu = timed(table.to_pandas)
    report("to pandas", t_pandas, cpu)
    frames = {"trials": trials, "curves": None}
    compute = {}
    for name in T.TABLE_SPECS:
        _, compute[name], cpu = timed(lambda: T.render(name, T.build(name, frames), "md"))
        report(f"table {name}: build + render md", compute[name], cpu)
    t_compute = sum(compute.values())

    print(f"store: {len(files) + 50} files, {len(trials):,} trial rows, {len(TRIALS)} columns "
          f"({len(needed)} read by the tables)")
    tail = t_pandas + t_compute
    print("end to end (read + pandas + all 4 tables), goal < 5 s:")
    print(f"  warm, unchanged store:   {warm + tail:6.2f} s")
    print(f"  warm, 1% new files:      {incr + tail:6.2f} s")
    print(f"  cold, writing the cache: {first + tail:6.2f} s")
    print(f"  cold, all columns:       {cold_all + tail:6.2f} s   (no projection, no cache)")
    shutil.rmtree(sweep / "_analysis", ignore_errors=True)
    for i, argv in enumerate([["--no-cache"], [], []]):
        command = [sys.executable, "-m", "sweeps.cli", "tables", str(sweep), "--table", "all", *argv]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        label = ("cold, --no-cache", "cold, writing the cache", "warm")[i]
        print(f"  `prunetune tables --table all` as a command ({label}, interpreter start included): "
              f"{time.perf_counter() - start:6.2f} s")
    if not args.skip_baseline:
        print(f"ratios vs the pandas loop: cold {rows[0][1] / cold_all:.1f}x (all columns), "
              f"{rows[0][1] / first:.1f}x (the tables' columns), warm {rows[0][1] / warm:.0f}x")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
