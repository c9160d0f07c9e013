"""Experiment trackers: every cell of a sweep as one run in MLflow, Weights & Biases or TensorBoard.

    prunetune run SPEC --tracker mlflow [--tracker tensorboard]     (also `resume`; either backend)

One small interface, driven by the progress hooks of both backends (`sweeps.progress.Progress`:
the serial backend calls them in-process, the Ray backend from its driver-side Tune callback with
each trial's reports), so a tracker sees the same thing wherever cells run:

    started(cell)            a run named by the cell's readable label; its axes and resolved config as
                             params (MLflow), config (W&B) or hparams (TensorBoard); cell_id as a tag
    progress(cell, values)   per-epoch metrics of each training phase (`dense/train_loss`, …) and the
                             SLQ and curve counters, as the cell reports them
    finished(cell, row)      the trials row's numbers as final metrics (test accuracy, direct and
                             effective sparsity, the limit columns, cost), then the run ends
    close()                  runs still open (an interrupted sweep) end as killed

Each tool reads its own configuration: MLflow `MLFLOW_TRACKING_URI` (MLflow 3's default: sqlite
./mlflow.db), one experiment per sweep; W&B `WANDB_PROJECT` (default: the sweep's name), `WANDB_MODE`
(`offline` needs no network), `WANDB_DIR`, `WANDB_ENTITY`; TensorBoard has no such variables, so its
event files (written by tensorboardX, which Ray Tune already installs: no extra package) go to
`<storage>/<sweep>/_tensorboard/<cell>` (a hidden name: no result reader looks there;
`./tensorboard/<sweep>` for an object-store sweep), printed when the sweep starts.

Why not Tune's own `MLflowLoggerCallback`/`WandbLoggerCallback`: they log a trial's Tune config,
which here is the grid's cell id alone (the cells reach trials through `tune.with_parameters`), and
they exist only under Tune; ours take the axes from the Cell and serve both backends. (Tune's
automatic TensorBoard files of each trial stay where Tune writes them, under `<sweep>/_tune/`.)

A resumed sweep does not duplicate runs: finished cells never start again, and a cell that was
interrupted while running continues its own run (MLflow: the run tagged with its cell_id; W&B:
the run id made from the sweep and the cell_id, `resume="allow"`; TensorBoard: its directory
starts afresh). MLflow and W&B are the optional extra `tracking` (mlflow-skinny with SQLAlchemy and Alembic for a
local sqlite store, wandb); the core never imports them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sweeps import paths
from sweeps.cells import Cell

# what a cell's reports carry that is worth a curve (Tune adds its own keys to every report)
REPORT_METRICS = ("lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "slq_batch",
                  "slq_iteration", "curve_point", "predicted_removed_frac", "actual_removed_frac_strict",
                  "actual_removed_frac_loss", "slq_iterations")
# columns of the trials row that are the run's identity or bookkeeping, not its results
ROW_SKIP = {"seed", "sparsity", "schema_version", "n_prunable", "n_params"}
PARAM_MAX = 250  # characters of one param value (a limit grid has 200 numbers)


class Tracker(Protocol):
    name: str

    def started(self, cell: Cell) -> None: ...
    def progress(self, cell: Cell, values: Mapping[str, Any]) -> None: ...
    def finished(self, cell: Cell, row: Mapping[str, Any]) -> None: ...
    def close(self) -> None: ...


# the pip package of each tracker's module (what the one-line error tells to install)
PIP_NAME = {"mlflow": "mlflow-skinny", "wandb": "wandb", "tensorboardX": "tensorboardX"}


def _require(module: str, tracker: str) -> Any:
    """The tracking package, or a one-line ValueError saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"--tracker {tracker}: the {module} package is not installed; pip install "
                         f"'prunetune[tracking]' (or pip install {PIP_NAME.get(module, module)})") from None


def params(cell: Cell) -> dict[str, Any]:
    """The cell's axes and resolved config, flat (`train.lr`, `prune.options.rounds`, …)."""
    out: dict[str, Any] = {"sweep": cell.sweep, "cell_id": cell.cell_id}

    def flat(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                flat(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = value

    flat("", cell.config())
    return {k: (v if isinstance(v, (int, float, bool, str)) or v is None else json.dumps(v))
            for k, v in out.items()}


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def report_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """`{phase}/{metric}` of one report (per-epoch records, SLQ and curve counters)."""
    phase = values.get("phase") or "cell"
    return {f"{phase}/{k}": x for k in REPORT_METRICS if (x := _number(values.get(k))) is not None}


def row_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a trials row: accuracy, sparsities, compressions, limit columns, cost."""
    return {k: x for k, v in row.items() if k not in ROW_SKIP and (x := _number(v)) is not None}


def run_id(cell: Cell) -> str:
    """A stable id per sweep and cell (W&B run ids: letters, digits, - and _; ≤ 64 characters)."""
    return f"pt-{hashlib.sha256(cell.sweep.encode()).hexdigest()[:8]}-{cell.cell_id}"


class _Steps:
    """Per-run, per-phase counters: a phase trains several times (IMP's rounds), steps only grow."""

    def __init__(self) -> None:
        self.n: dict[tuple[str, str], int] = {}

    def next(self, cell_id: str, phase: str) -> int:
        k = (cell_id, phase)
        self.n[k] = self.n.get(k, -1) + 1
        return self.n[k]


class MlflowTracker:
    """One MLflow experiment per sweep (`MLFLOW_TRACKING_URI`), one run per cell (through
    `MlflowClient`: no global active run, so concurrent Ray cells do not mix)."""

    name = "mlflow"

    def __init__(self, sweep: str, storage: str) -> None:
        mlflow = _require("mlflow", self.name)
        from mlflow.entities import Metric, Param, RunTag

        self.Metric, self.Param, self.RunTag = Metric, Param, RunTag
        self.client = mlflow.MlflowClient()
        exp = self.client.get_experiment_by_name(sweep)
        self.experiment = exp.experiment_id if exp is not None else self.client.create_experiment(sweep)
        self.runs: dict[str, str] = {}
        self.steps = _Steps()
        self.where = f"MLflow experiment {sweep!r} at {mlflow.get_tracking_uri()}"

    def started(self, cell: Cell) -> None:
        if cell.cell_id in self.runs:  # a retried Ray trial: the same run
            return
        found = self.client.search_runs([self.experiment], f"tags.`prunetune.cell_id` = '{cell.cell_id}'",
                                        max_results=1)
        if found:  # an interrupted earlier attempt: continue its run, do not add one
            run = found[0].info.run_id
            self.client.update_run(run, status="RUNNING")
        else:
            tags = {"prunetune.cell_id": cell.cell_id, "prunetune.sweep": cell.sweep,
                    **{f"prunetune.{k}": str(v) for k, v in _axes(cell).items()}}
            run = self.client.create_run(self.experiment, run_name=cell.label, tags=tags).info.run_id
            self.client.log_batch(run, params=[self.Param(k, str(v)[:PARAM_MAX]) for k, v in params(cell).items()])
        self.runs[cell.cell_id] = run

    def progress(self, cell: Cell, values: Mapping[str, Any]) -> None:
        run = self.runs.get(cell.cell_id)
        metrics = report_metrics(values)
        if run is None or not metrics:
            return
        step = self.steps.next(cell.cell_id, values.get("phase") or "cell")
        now = _millis()
        self.client.log_batch(run, metrics=[self.Metric(k, v, now, step) for k, v in metrics.items()])

    def finished(self, cell: Cell, row: Mapping[str, Any]) -> None:
        run = self.runs.pop(cell.cell_id, None)
        if run is None:
            return
        now = _millis()
        self.client.log_batch(run, metrics=[self.Metric(k, v, now, 0) for k, v in row_metrics(row).items()],
                              tags=[self.RunTag("prunetune.status", str(row.get("status")))])
        self.client.set_terminated(run, status="FAILED" if row.get("status") == "failed" else "FINISHED")

    def close(self) -> None:
        for run in self.runs.values():
            self.client.set_terminated(run, status="KILLED")
        self.runs.clear()


class WandbTracker:
    """One W&B run per cell in project `WANDB_PROJECT` (default: the sweep's name), grouped by sweep."""

    name = "wandb"

    def __init__(self, sweep: str, storage: str) -> None:
        self.wandb = _require("wandb", self.name)
        self.sweep = sweep
        self.project = os.environ.get("WANDB_PROJECT") or sweep
        self.runs: dict[str, Any] = {}
        self.where = f"W&B project {self.project!r} (mode {os.environ.get('WANDB_MODE', 'online')})"

    def started(self, cell: Cell) -> None:
        if cell.cell_id in self.runs:
            return
        self.runs[cell.cell_id] = self.wandb.init(
            project=self.project, group=self.sweep, name=cell.label, id=run_id(cell), resume="allow",
            config=params(cell), tags=[cell.pruner, cell.model, cell.dataset], reinit="create_new")

    def progress(self, cell: Cell, values: Mapping[str, Any]) -> None:
        run = self.runs.get(cell.cell_id)
        if run is not None and (metrics := report_metrics(values)):
            run.log(metrics)

    def finished(self, cell: Cell, row: Mapping[str, Any]) -> None:
        run = self.runs.pop(cell.cell_id, None)
        if run is None:
            return
        run.summary.update({**row_metrics(row), "status": str(row.get("status"))})
        run.finish(exit_code=1 if row.get("status") == "failed" else 0)

    def close(self) -> None:
        for run in self.runs.values():
            run.finish(exit_code=130)
        self.runs.clear()


class TensorBoardTracker:
    """Event files per cell under `<storage>/<sweep>/_tensorboard/<label>-<cell_id>/`."""

    name = "tensorboard"

    def __init__(self, sweep: str, storage: str) -> None:
        self.SummaryWriter = _require("tensorboardX", self.name).SummaryWriter
        self.root = paths.tensorboard_root(storage, sweep)
        self.writers: dict[str, Any] = {}
        self.steps = _Steps()
        self.where = f"TensorBoard event files in {self.root} (tensorboard --logdir {self.root})"

    def directory(self, cell: Cell) -> str:
        label = re.sub(r"[^A-Za-z0-9._=-]+", "_", cell.label).strip("_")
        return os.path.join(self.root, f"{label}-{cell.cell_id}")

    def started(self, cell: Cell) -> None:
        if cell.cell_id in self.writers:
            return
        path = self.directory(cell)
        shutil.rmtree(path, ignore_errors=True)  # an interrupted attempt's events: start afresh
        w = self.SummaryWriter(log_dir=path)
        w.add_text("config", "```\n" + json.dumps(params(cell), indent=1, sort_keys=True) + "\n```")
        self.writers[cell.cell_id] = w

    def progress(self, cell: Cell, values: Mapping[str, Any]) -> None:
        w = self.writers.get(cell.cell_id)
        metrics = report_metrics(values)
        if w is None or not metrics:
            return
        step = self.steps.next(cell.cell_id, values.get("phase") or "cell")
        for k, v in metrics.items():
            w.add_scalar(k, v, step)

    def finished(self, cell: Cell, row: Mapping[str, Any]) -> None:
        w = self.writers.pop(cell.cell_id, None)
        if w is None:
            return
        final = row_metrics(row)
        for k, v in final.items():
            w.add_scalar(f"final/{k}", v, 0)
        hparams = {k: v for k, v in params(cell).items() if isinstance(v, (int, float, str, bool))}
        w.add_hparams(hparams, {f"hparam/{k}": v for k, v in final.items()}, name="hparams")  # a subfolder
        w.close()

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers.clear()


def _axes(cell: Cell) -> dict[str, Any]:
    return {"kind": cell.kind, "model": cell.model, "dataset": cell.dataset, "pruner": cell.pruner,
            "sparsity": cell.sparsity, "target": cell.target, "seed": cell.seed}


def _millis() -> int:
    import time

    return int(time.time() * 1000)


TRACKERS: dict[str, type] = {"mlflow": MlflowTracker, "wandb": WandbTracker, "tensorboard": TensorBoardTracker}


def make_trackers(names: Sequence[str], sweep: str, storage: str) -> list[Tracker]:
    """The trackers `names` (each once, in order) for sweep `sweep`; an unknown name or a missing
    package is a one-line ValueError, before anything runs."""
    out = []
    for name in dict.fromkeys(names):
        if name not in TRACKERS:
            raise ValueError(f"--tracker {name!r}: choose from {', '.join(TRACKERS)}")
        out.append(TRACKERS[name](sweep, storage))
    return out
