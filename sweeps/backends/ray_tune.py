"""The Ray Tune backend: every pending cell is one Tune trial of a grid search, on one machine or a cluster.

    cells ─▶ skip the done ones (store) ─▶ check resources ─▶ Tuner(grid over cells, one placement
    group per trial: bundle 0 = the trial, bundles 1..W = its HVP workers) ─▶ fit() ─▶ compare the
    store with the grid ─▶ RunSummary (every missing or failed cell named by its cell_id)

Why Tune and still our own store: Tune schedules trials on the resources they declare (fractional
GPUs, multi-node placement groups), retries trials whose process or node died
(`FailureConfig.max_failures`), shows live per-epoch metrics and can restore an interrupted
experiment. But Tune's trial ids are random and its result.json can be missing or stale after a
crash, so what is *done* is decided only by our atomic per-cell Parquet (`sweeps.store`): a trial
whose cell is already done returns at once, and the summary is read back from the store.

Devices come from `ray.get_gpu_ids()` (cuda:0 when Ray assigned a GPU share), never from
`torch.cuda.is_available()`: on a GPU node a trial that asked for no GPU must stay on CPU.
A local Ray is always our own (`address="local"`), advertises 127.0.0.1 and has no dashboard unless
asked for one (then on 127.0.0.1); Ray 2.60's gRPC servers still listen on all interfaces, which
Ray's token authentication (default for local Ray since 2.59) protects: see docs/cluster.md.

What a user watches: the grid is over cell ids (the cells themselves reach the trials once, through
`tune.with_parameters`), so Tune's table shows the whole `cell_id` in its parameter column; each
trial is named by its cell's axes (`lenet300100/digits random/uniform direct s=0.5 seed=0`,
`trial_label`); the metric columns are the per-epoch `epoch`, `train_loss`, `test_loss`, `test_acc`
(Tune's table shows the first four numeric metrics it sees, so every report starts with these
four). Trial directories, and every key on disk, stay the cell_id.

Why `reuse_actors` by default: a fresh process per trial re-imports torch and reloads its data set,
seconds per cell that dwarf a small cell's own work (bench/sweep_overhead.py measures both). A
reused process changes no result: every cell seeds all RNGs from its own config first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ray
from ray import tune

from sweeps import store
from sweeps.backends.base import RayOptions, RunSummary, pending_cells
from sweeps.cells import Cell
from sweeps.hvp_ray import RayHVPFactory, WorkerResources, device_from_ray
from sweeps.paths import is_uri, tune_root
from sweeps.trial import Where, one_line, run_cell

if TYPE_CHECKING:
    from sweeps.progress import Progress
    from sweeps.spec import Spec

log = logging.getLogger(__name__)

FINAL = "cell_finished"      # metric of a trial's last report: its cell's trials row is written
RUN_PREFIX = "run-"


# ----------------------------------------------------------------------------- the trial


TABLE_METRICS = ("epoch", "train_loss", "test_loss", "test_acc")  # the progress table's columns


def _report(metrics: dict[str, Any]) -> None:
    """Per-epoch metrics into Tune's progress view as they happen (only plain finite values).

    Every report starts with `TABLE_METRICS` (None where a report has no value): Tune's table
    shows the first four numeric metrics of the first result it sees, whichever report that is.
    """
    plain = {k: v for k, v in metrics.items()
             if isinstance(v, (int, str)) or (isinstance(v, float) and math.isfinite(v))}
    tune.report({**{k: plain.get(k) for k in TABLE_METRICS}, **plain})


def config_cell_id(config: Mapping[str, Any]) -> str | None:
    """The cell id of a trial's config (`{"cell_id": …}`; experiments stored before the grid was
    over ids carry the whole cell as `{"cell": {…}}`)."""
    if "cell_id" in config:
        return config["cell_id"]
    return (config.get("cell") or {}).get("cell_id")


def cell_trainable(config: dict[str, Any], *, cells: Mapping[str, dict[str, Any]], where: Where,
                   hessian_workers: int, worker_resources: WorkerResources,
                   run_fn: Callable[..., dict[str, Any]] = run_cell) -> None:
    """One Tune trial = one cell: rebuild the Cell, run it (it writes its Parquet), report the outcome.

    A cell that is already done (a restored experiment, a retry after the row was written) returns
    at once: finished cells are never run twice; so does a restored trial whose cell the current
    spec no longer has. A lost HVP worker is re-raised after the failed row is written so that Tune
    retries the trial; the retry's row replaces it.
    """
    cell_id = config_cell_id(config)
    payload = config.get("cell") or cells.get(cell_id)
    if payload is None:
        _report({"cell_id": cell_id, "status": "not-in-spec", FINAL: 1})
        return
    cell = Cell.from_dict(payload)
    if store.is_done(where.storage, cell.sweep, cell.cell_id):
        _report({"cell_id": cell.cell_id, "status": "already-done", FINAL: 1})
        return
    factory = RayHVPFactory(hessian_workers, worker_resources) if hessian_workers > 1 else None
    try:
        row = run_fn(cell, where, device=device_from_ray(), report=_report, hvp_backend_factory=factory,
                     backend="ray")
    finally:
        if factory is not None:
            factory.close()
    if factory is not None and factory.lost is not None:
        raise factory.lost
    final = {k: row.get(k) for k in ("cell_id", "status", "test_acc", "direct_sparsity",
                                      "effective_sparsity", "total_seconds")}
    if factory is not None:
        final["hvp_nodes"] = ",".join(factory.node_ids())
    _report({**final, FINAL: 1})


def trial_dirname(trial: Any) -> str:
    """Trial directories are named by cell_id (Tune's own trial ids are random)."""
    return config_cell_id(trial.config)


def trial_label(cell: Mapping[str, Any]) -> str:
    """What a person reads in Tune's table and logs: `model/dataset pruner target s=… seed=…`.

    From the cell's plain dict (`Cell.to_dict`); limit cells, which have no single sparsity, say
    `limit`. Not unique on its own (cells can differ in training settings only): the parameter
    column beside it shows the cell_id.
    """
    sparsity = "limit" if cell.get("sparsity") is None else f"s={cell['sparsity']:.4g}"
    return (f"{cell['model']}/{cell['dataset']} {cell['pruner']} {cell['target']} {sparsity} "
            f"seed={cell['seed']}")


@dataclasses.dataclass(frozen=True)
class TrialNames:
    """Tune's `trial_name_creator`: cell_id → label (a picklable object: Tune stores it)."""

    labels: Mapping[str, str]

    def __call__(self, trial: Any) -> str:
        cell_id = config_cell_id(trial.config)
        return self.labels.get(cell_id, cell_id)


def progress_reporter() -> Any:
    """Tune's legacy CLIReporter with our columns, only where Tune uses it (RAY_AIR_NEW_OUTPUT=0);
    the default console output (Ray ≥ 2.7) ignores a reporter and reads names and columns as above."""
    if os.environ.get("RAY_AIR_NEW_OUTPUT", "1") != "0":
        return None
    return tune.CLIReporter(parameter_columns=["cell_id"],
                            metric_columns=["training_iteration", *TABLE_METRICS], max_report_frequency=30)


# ----------------------------------------------------------------------------- progress


class ProgressCallback(tune.Callback):
    """Driver-side: one result line per finished cell as soon as its trial's last report arrives."""

    def __init__(self, cells: dict[str, Cell], storage: str, progress: Progress | None):
        self.cells, self.storage, self.progress = cells, storage, progress
        self.reported: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the experiment
        return {**self.__dict__, "progress": None}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        cell = self.cells.get(config_cell_id(trial.config))
        if cell is not None and self.progress is not None:
            self.progress.started(cell)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get(FINAL):
            self.finish(result["cell_id"])

    def finish(self, cell_id: str) -> None:
        cell = self.cells.get(cell_id)
        if cell is None or cell_id in self.reported or self.progress is None:
            return
        row = store.trial_row(self.storage, cell.sweep, cell_id)
        if row is not None:
            self.reported.add(cell_id)
            self.progress.finished(cell, row)


# ----------------------------------------------------------------------------- the backend


def local_gpus() -> int:
    """GPUs this machine would give a local Ray (what Ray's own detection finds)."""
    import torch

    return torch.cuda.device_count()


def trial_bundles(cpus: float, gpus: float, hessian_workers: int) -> list[dict[str, float]]:
    """One placement-group bundle for the trial, one per HVP worker (each the trial's own CPUs/GPUs)."""
    one = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}
    extra = hessian_workers if hessian_workers > 1 else 0
    return [dict(one) for _ in range(1 + extra)]


def placement_problems(bundles: list[dict[str, float]], num_cpus: float, num_gpus: float) -> list[str]:
    """Why a Ray of `num_cpus` CPUs and `num_gpus` GPUs on one node could never place a trial."""
    out = []
    cpus, gpus, n = bundles[0]["CPU"], bundles[0].get("GPU", 0.0), len(bundles)
    need_gpu = sum(b.get("GPU", 0.0) for b in bundles)
    need_cpu = sum(b["CPU"] for b in bundles)
    if need_gpu > num_gpus:
        out.append(f"resources.gpus: each trial needs {need_gpu:g} GPU(s) ({gpus:g} × {n} bundles) but the local "
                   f"Ray has {num_gpus:g}; set gpus: 0, pass --num-gpus, or --address of a cluster with GPUs")
    if need_cpu > num_cpus:
        out.append(f"resources.cpus: each trial needs {need_cpu:g} CPU(s) ({cpus:g} × {n} bundles) but the local "
                   f"Ray has {num_cpus:g}; lower cpus or hessian.workers, or pass --num-cpus")
    return out


class RayBackend:
    """Runs cells as Tune trials; see the module docstring."""

    name = "ray"

    def __init__(self, *, cpus: float = 1.0, gpus: float = 0.0, hessian_workers: int = 1,
                 options: RayOptions | None = None, callbacks: Sequence[tune.Callback] = (),
                 run_fn: Callable[..., dict[str, Any]] = run_cell):
        """Values as `check` and the spec's sections accept them (`run_spec` asks `check` first)."""
        self.cpus, self.gpus, self.hessian_workers = float(cpus), float(gpus), int(hessian_workers)
        self.options = options or RayOptions()
        self.callbacks = list(callbacks)
        self.run_fn = run_fn
        self.results: tune.ResultGrid | None = None  # of the last fit(), for inspection

    @classmethod
    def check(cls, spec: Spec, options: RayOptions | None = None) -> list[str]:
        """What Ray could never run: a GPU share above 1 that is not whole, and, on a local Ray (no
        cluster address), a trial larger than the Ray this machine would start."""
        options = options or RayOptions()
        gpus = spec.resources.gpus
        if gpus > 1 and not float(gpus).is_integer():
            return [f"resources.gpus: {gpus}; Ray takes fractions below 1 or whole GPUs"]
        if options.cluster_address():
            return []  # a cluster's size is its own (and it may autoscale)
        num_cpus = options.num_cpus if options.num_cpus is not None else os.cpu_count() or 1
        num_gpus = options.num_gpus if options.num_gpus is not None else local_gpus()
        return placement_problems(trial_bundles(spec.resources.cpus, gpus, _workers(spec)), num_cpus, num_gpus)

    @classmethod
    def from_spec(cls, spec: Spec, options: RayOptions | None = None, **kwargs: Any) -> RayBackend:
        return cls(cpus=spec.resources.cpus, gpus=spec.resources.gpus, hessian_workers=_workers(spec),
                   options=options, **kwargs)

    # -- resources

    def bundles(self) -> list[dict[str, float]]:
        return trial_bundles(self.cpus, self.gpus, self.hessian_workers)

    def placement(self) -> tune.PlacementGroupFactory:
        return tune.PlacementGroupFactory(self.bundles(), strategy="PACK")

    def check_local(self, num_cpus: float, num_gpus: float) -> None:
        """Refuse a trial that the local Ray of this size (started, or found running) could never place."""
        if problems := placement_problems(self.bundles(), num_cpus, num_gpus):
            raise ValueError(problems[0])

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Ray connected (or started) for the block, checked for this backend's trials, shut down
        after it only if this block started it."""
        started = self.connect()
        try:
            self.check_connected()
            yield
        finally:
            if started:
                ray.shutdown()

    def connect(self) -> bool:
        """Join the cluster or start a local Ray (127.0.0.1, no dashboard unless asked); True if we did.

        An already initialized Ray (a test, a notebook) is used as it is and left running.
        """
        if ray.is_initialized():
            return False
        address = self.options.cluster_address()
        if address:
            ray.init(address=address, log_to_driver=True)
            return True
        num_cpus = self.options.num_cpus if self.options.num_cpus is not None else os.cpu_count() or 1
        num_gpus = self.options.num_gpus if self.options.num_gpus is not None else local_gpus()
        self.check_local(num_cpus, num_gpus)
        # address="local": a new Ray of our own, even when another one runs on this machine
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                 include_dashboard=self.options.dashboard, dashboard_host="127.0.0.1",
                 _node_ip_address="127.0.0.1")
        return True

    def check_connected(self) -> None:
        """On an initialized local Ray (not a cluster, which may autoscale), the same refusal."""
        if self.options.cluster_address():
            return
        total = ray.cluster_resources()
        if len(ray.nodes()) == 1:
            self.check_local(total.get("CPU", 0.0), total.get("GPU", 0.0))

    # -- running

    def trainable(self, where: Where, cells: Sequence[Cell]) -> Any:
        """The Tune trainable with its resources and `cells` (also what `resume` hands to
        `Tuner.restore`, with every cell of the spec)."""
        fn = tune.with_parameters(cell_trainable, cells={c.cell_id: c.to_dict() for c in cells}, where=where,
                                  hessian_workers=self.hessian_workers,
                                  worker_resources=WorkerResources(self.cpus, self.gpus), run_fn=self.run_fn)
        return tune.with_resources(fn, self.placement())

    def tuner(self, cells: Sequence[Cell], where: Where, callback: ProgressCallback) -> tune.Tuner:
        run_name = f"{RUN_PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
        names = TrialNames({c.cell_id: trial_label(c.to_dict()) for c in cells})
        return tune.Tuner(
            self.trainable(where, cells),
            param_space={"cell_id": tune.grid_search([c.cell_id for c in cells])},
            tune_config=tune.TuneConfig(max_concurrent_trials=self.options.max_concurrent,
                                        reuse_actors=self.options.reuse_actors,
                                        trial_name_creator=names, trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=run_name, storage_path=tune_root(where.storage, cells[0].sweep),
                                      failure_config=tune.FailureConfig(max_failures=self.options.max_failures),
                                      callbacks=[callback, *self.callbacks], verbose=1,
                                      progress_reporter=progress_reporter()),
        )

    def run(self, cells: Sequence[Cell], where: Where, *, progress: Progress) -> RunSummary:
        """Run the pending cells as one Tune experiment; the store decides what is done."""
        summary = RunSummary()
        todo = pending_cells(cells, where.storage, summary, progress)
        if not todo:
            return summary
        where = absolute(where)
        callback = ProgressCallback({c.cell_id: c for c in todo}, where.storage, progress)
        with self.session():
            self.results = self.tuner(todo, where, callback).fit()
        return collect(todo, where, self.results, summary, callback)


def _workers(spec: Spec) -> int:
    return spec.hessian.workers if spec.hessian.enabled else 1


def absolute(where: Where) -> Where:
    """The data root as the driver sees it, absolute: trials run in their own directories.

    Resolved here (spec, else $PRUNETUNE_DATA, else the loader's default) so that every trial
    process, on any node, looks in the same place as the user's shell would."""
    from pruning.data import DEFAULT_ROOT

    root = where.data_root or os.environ.get("PRUNETUNE_DATA") or str(DEFAULT_ROOT)
    if not is_uri(root):
        root = os.path.abspath(os.path.expanduser(root))
    return dataclasses.replace(where, data_root=root)


def root_cause(error: BaseException) -> BaseException:
    """The exception raised in the trial, out of Ray's RayTaskError wrappers."""
    seen = set()
    while getattr(error, "cause", None) is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.cause
    return error


def tune_errors(results: Any) -> dict[str, str]:
    """cell_id → one-line error of every errored Tune result (a trial that crashed or exhausted retries)."""
    out = {}
    for r in results or []:
        if r.error is not None and r.config and config_cell_id(r.config) is not None:
            out[config_cell_id(r.config)] = re.sub(r"\x1b\[[0-9;]*m", "", one_line(root_cause(r.error)))
    return out


def collect(cells: Sequence[Cell], where: Where, results: Any, summary: RunSummary,
            callback: ProgressCallback) -> RunSummary:
    """Compare the store with the grid: done, failed (with the row's error) or missing (with Tune's).

    Cells the live callback did not print (finished before a restore, or its report was lost)
    get their result line here, so every finished cell is shown exactly once.
    """
    errors = tune_errors(results)
    for cell in cells:
        cid = cell.cell_id
        row = store.trial_row(where.storage, cell.sweep, cid)
        if row is None:
            summary.failed.append(cid)
            summary.errors[cid] = errors.get(cid) or ("no result: the trial did not finish (interrupted?); "
                                                      "run `prunetune resume` to continue")
            continue
        callback.finish(cid)
        if row["status"] == "failed":
            summary.failed.append(cid)
            summary.errors[cid] = str(row.get("error")) + (f" (tune: {errors[cid]})" if cid in errors else "")
        else:
            summary.done.append(cid)
    return summary
