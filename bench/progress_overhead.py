"""What reporting progress inside a long cell costs: each loop with its progress hook against the same
loop without it, in the same run.

    OMP_NUM_THREADS=1 python bench/progress_overhead.py [--repeats 5] [--quick]

Three loops of a cell, LeNet-300-100 on digits (1,437 training images), one torch thread:

* training (`pruning.train.train`, 3 epochs): `on_epoch` forwarding each epoch's record to a serial
  sweep's `sweeps.progress.Progress` (its per-cell line throttle, a tracker-less sweep) — what
  `sweeps.trial_common.reporter` does;
* SLQ (`pruning.slq.slq`, 2 probes × 32 Lanczos steps): `progress` at its default period (a clock
  read per step, a report every 2 s) and at period 0 (a report every step: the worst case);
* the one-shot pruning curve (`pruning.lomp.pruning_curve`, 10 points): `progress` at period 0.

Rounds alternate off / on so that the load of a shared machine hits both alike; the figure is the
median over rounds of on/off (1.00 = free). On a loaded machine that ratio is noise of tens of
percent either way, so the hook is also timed alone, as each loop calls it (20,000 calls, best of
3): its calls × its own time / the loop's time is the share it adds, which load can only inflate.
A table in Markdown goes to stdout (docs/benchmarks.md records it).
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import time
from collections.abc import Callable

import torch

from pruning import data, models
from pruning.lomp import pruning_curve
from pruning.clock import Throttle
from pruning.slq import slq
from pruning.train import TrainConfig, train
from sweeps.cells import expand
from sweeps.progress import Progress
from sweeps.spec import build_spec


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired(off: Callable[[], object], on: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """(median off seconds, median on seconds, median of the per-round ratios on/off)."""
    offs, ons = [], []
    off()  # warm up both
    on()
    for _ in range(repeats):
        offs.append(timed(off))
        ons.append(timed(on))
    return statistics.median(offs), statistics.median(ons), statistics.median(b / a for a, b in zip(offs, ons))


def per_call(fn: Callable[[], object], n: int = 20000) -> float:
    """Seconds of one call of a progress hook, timed alone over `n` calls (the best of 3 rounds: the
    hook's own work, which the load of a shared machine can only inflate)."""
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small loops, 2 rounds: plumbing only")
    args = ap.parse_args()
    repeats = 2 if args.quick else args.repeats
    torch.set_num_threads(1)
    tr, te = data.load("digits")
    torch.manual_seed(0)
    model = models.build("lenet300100", input_shape=tr.input_shape, num_classes=tr.num_classes)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    epochs, probes, steps, points = (1, 2, 8, 4) if args.quick else (3, 2, 32, 10)

    spec = build_spec({"name": "bench", "model": "lenet300100", "dataset": "digits", "pruner": ["dense"], "seed": 0})
    [cell] = expand(spec)
    progress = Progress(1, stream=io.StringIO(), tty=False)
    progress.started(cell)
    cfg = TrainConfig(epochs=epochs, batch_size=64, eval_every=1)

    def train_with(on_epoch):
        model.load_state_dict(init)
        return train(model, tr, te, cfg, seed=0, on_epoch=on_epoch)

    def to_progress(record: dict) -> None:
        progress.cell_progress(cell, {"phase": "dense", "epochs": epochs,
                                      **{k: v for k, v in record.items() if isinstance(v, (int, float, str))}})

    loss = torch.nn.functional.cross_entropy
    sink: list[dict] = []
    grid = [i / points for i in range(points)]
    record = {"epoch": 1, "lr": 0.1, "train_loss": 0.5, "train_acc": 0.8, "test_loss": 0.6, "test_acc": 0.79,
              "seconds": 1.0}
    # each loop's hook as it runs inside it, called alone (SLQ: the step's closure, as pruning.slq builds it)
    quiet, loud = Throttle(sink.append, 2.0), Throttle(sink.append, 0.0)
    cases = [
        ("training, every epoch to the serial progress", lambda: train_with(None), lambda: train_with(to_progress),
         lambda: to_progress(record), epochs),
        ("SLQ, progress every 2 s (default)",
         lambda: slq(model, loss, tr, probes=probes, iterations=steps, seed=0),
         lambda: slq(model, loss, tr, probes=probes, iterations=steps, seed=0, progress=sink.append),
         lambda: quiet({"slq_batch": 1, "slq_batches": 1, "slq_iteration": 3, "slq_max_iterations": steps}), steps),
        ("SLQ, a report every step",
         lambda: slq(model, loss, tr, probes=probes, iterations=steps, seed=0),
         lambda: slq(model, loss, tr, probes=probes, iterations=steps, seed=0, progress=sink.append,
                     progress_every=0.0),
         lambda: loud({"slq_batch": 1, "slq_batches": 1, "slq_iteration": 3, "slq_max_iterations": steps}), steps),
        ("curve, a report every point",
         lambda: pruning_curve(model, tr, te, grid),
         lambda: pruning_curve(model, tr, te, grid, progress=sink.append, progress_every=0.0),
         lambda: loud({"curve_point": 1, "curve_points": points}), points),
    ]
    print(f"LeNet-300-100 on digits, 1 thread, {repeats} rounds; training {epochs} epochs, SLQ {probes} probes × "
          f"{steps} steps, curve {points} points\n")
    print("| loop | without (s) | with (s) | with / without (median of rounds) | hook calls | hook's own time "
          "(µs per call) | hook's share of the loop |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    for name, off, on, hook, calls in cases:  # a row as soon as it is measured
        t_off, t_on, ratio = paired(off, on, repeats)
        one = per_call(hook)
        sink.clear()
        print(f"| {name} | {t_off:.3f} | {t_on:.3f} | {ratio:.3f} | {calls} | {one * 1e6:.2f} | "
              f"{calls * one / t_off:.1e} |", flush=True)

if __name__ == "__main__":
    main()
