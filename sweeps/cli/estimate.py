"""`prunetune estimate SPEC`: CPU-hours, GPU-hours and wall time of a sweep before it runs
(`sweeps.estimate`: a short probe of every distinct configuration on this machine, extrapolated).

    prunetune estimate SPEC [--slots N] [--json]                     measured here
    prunetune estimate SPEC --device cuda --save-probe FILE           on a GPU machine: keep the probe
    prunetune estimate SPEC --probe FILE | --per-cell-seconds S       where the sweep's GPUs are not
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

import torch

from sweeps.cells import expand
from sweeps.cli.common import Exit, UserError, add_backend_arguments, add_data_root, add_storage, ray_options
from sweeps.cost import Reserved, reserved_by_bundles, reserved_by_serial, trial_bundles
from sweeps.estimate import Estimate, Probe, estimate, measure, save_probe
from sweeps.progress import duration
from sweeps.spec import Spec, load_spec
from sweeps.store import is_done


def reserved_of(spec: Spec) -> Reserved:
    """What the spec's backend will hold for each cell (`sweeps.cost`)."""
    r = spec.resources
    if spec.backend == "ray":
        workers = spec.hessian.workers if spec.hessian.enabled else 1
        return reserved_by_bundles(trial_bundles(r.cpus, r.gpus, workers))
    return reserved_by_serial(r.cpus, "cuda" if r.gpus > 0 else "cpu")


def default_slots(spec: Spec, options: Any, reserved: Reserved) -> int:
    """Serial: 1. A local Ray: as many trials as its CPUs (and GPUs) hold at once. A cluster: ask."""
    if spec.backend != "ray":
        return 1
    if options is not None and options.cluster_address():
        raise UserError("--slots: a cluster's size is its own; give --slots N (trials running at once)")
    cpus = options.num_cpus if options is not None and options.num_cpus is not None else os.cpu_count() or 1
    gpus = options.num_gpus if options is not None and options.num_gpus is not None else torch.cuda.device_count()
    slots = math.floor(cpus / reserved.cpus) if reserved.cpus else 1
    if reserved.gpus:
        slots = min(slots, math.floor(gpus / reserved.gpus))
    if options is not None and options.max_concurrent:
        slots = min(slots, options.max_concurrent)
    return max(1, slots)


def cmd_estimate(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, storage=args.storage, backend=args.backend)
    options = ray_options(args, spec.backend)
    if args.probe and args.per_cell_seconds is not None:
        raise UserError("--probe, --per-cell-seconds: give one of them (a measured probe, or your own figure)")
    if args.per_cell_seconds is not None and not (math.isfinite(args.per_cell_seconds) and args.per_cell_seconds > 0):
        raise UserError(f"--per-cell-seconds: {args.per_cell_seconds}; expected a number > 0")
    if args.slots is not None and args.slots < 1:
        raise UserError(f"--slots: {args.slots}; expected an integer ≥ 1")
    reserved = reserved_of(spec)
    slots = args.slots or default_slots(spec, options, reserved)
    cells = expand(spec)
    probe = None
    if args.probe:
        probe = Probe.load(args.probe)
    elif args.per_cell_seconds is None:
        device = args.device or ("cuda" if spec.resources.gpus > 0 else "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError(f"resources.gpus: {spec.resources.gpus:g} per cell, and this machine has no GPU: estimate "
                            "cannot time what it does not have; give --per-cell-seconds S, or --probe FILE made on "
                            "the GPU by `prunetune estimate SPEC --device cuda --save-probe FILE` (make gpu-check "
                            "writes one per GPU config)")
        pending = [c for c in cells if not is_done(spec.storage, c.sweep, c.cell_id)]
        quiet = args.json
        if not quiet:
            print(f"sweep {spec.name!r}: probing {len(pending)} pending cell(s) on {device}…", file=sys.stderr)
        probe = measure(pending, storage=spec.storage, device=device, threads=max(1, int(spec.resources.cpus)),
                        data_root=args.data_root or spec.data.root)
    if args.save_probe and probe is not None:
        save_probe(probe, args.save_probe)
    est = estimate(cells, storage=spec.storage, reserved=reserved, slots=slots, probe=probe,
                   per_cell_seconds=args.per_cell_seconds, backend=spec.backend)
    if args.json:
        print(json.dumps({"sweep": spec.name, "backend": spec.backend, **est.to_json()}, indent=1, sort_keys=True))
    else:
        print(text(spec, est))
    return Exit.OK


def text(spec: Spec, est: Estimate) -> str:
    """The human report: the count, what the cache saves, the figures, how they were measured."""
    lines = [f"sweep {spec.name!r}: {est.cells} cells, {est.done} already done, {est.pending} to run on backend "
             f"{spec.backend!r} ({est.slots} slot{'s' if est.slots != 1 else ''})"]
    if est.dense_trainings or est.dense_loads:
        lines.append(f"dense cache: {est.dense_trainings} dense model(s) trained, loaded by {est.dense_loads} more "
                     f"cell(s) instead of training their own")
    bound = " (upper bound)" if est.upper_bound else ""
    lines.append(f"estimate{bound}: {est.cpu_hours:.3g} CPU-hours, {est.gpu_hours:.3g} GPU-hours; cells' time "
                 f"{duration(est.cell_hours * 3600)}, wall ≈ {duration(est.wall_hours * 3600)} on {est.slots} slot(s)")
    if est.by_unit:
        total = sum(est.by_unit.values()) or 1.0
        parts = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(est.by_unit.items(), key=lambda kv: -kv[1])
                          if v / total >= 0.01)
        lines.append(f"where the time goes: {parts}")
    lines.append(f"how: {est.measured}")
    lines += [f"note: {n}" for n in est.notes]
    lines.append("trust: within ×2 of what the cells record on CPU sweeps like the tested ones (tests/test_estimate.py, "
                 "docs/benchmarks.md); other load on this machine during the probe or the run moves it")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("estimate", help="CPU-/GPU-hours and wall time of a sweep, measured here before it runs")
    e.add_argument("spec", help="the sweep's YAML spec")
    add_storage(e)
    add_data_root(e)
    add_backend_arguments(e)
    e.add_argument("--slots", type=int, default=None, metavar="N",
                   help="cells running at once (default: serial 1; a local Ray: what its CPUs/GPUs hold)")
    e.add_argument("--json", action="store_true",
                   help="one JSON object: cells, cpu_hours, gpu_hours, wall_hours, slots, per-cell seconds, …")
    e.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where to probe (default: cuda when the spec asks for GPUs, else cpu)")
    e.add_argument("--per-cell-seconds", type=float, default=None, metavar="S",
                   help="skip the probe: every pending cell takes S seconds (your own measurement)")
    e.add_argument("--probe", default=None, metavar="FILE",
                   help="use the timings of a probe file (--save-probe on the machine the sweep will run on)")
    e.add_argument("--save-probe", default=None, metavar="FILE", help="write this probe's timings to FILE (JSON)")
    e.set_defaults(func=cmd_estimate)


__all__ = ["cmd_estimate", "register", "reserved_of", "text"]
