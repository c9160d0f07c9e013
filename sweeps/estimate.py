"""`prunetune estimate SPEC`: what a sweep will cost, measured on this machine before it runs.

    spec → cells → pending (not done in the store) → the work of each cell, counted in units
         → one short probe of every distinct unit here (`measure`): a few optimizer steps per training
           configuration, one pruning call per pruner configuration, a few Hessian-vector products
           and Gram–Schmidt passes where SLQ is on, one evaluation pass, the fixed cost of a cell
         → seconds per cell = Σ count × seconds per unit (`estimate`)
         → CPU- and GPU-hours by `sweeps.cost`'s rule (reserved resources × seconds), and the wall
           time on P slots: cells in grid order, each on the first free slot; a cell that needs a
           dense model another slot is still training waits for it, holding its slot (the dense
           cache's lock does exactly that)

What a cell does, in units (the pipeline of `sweeps/trial_point.py` and `sweeps/trial_limit.py`):
every cell loads its data, builds its model, measures its sparsity and writes its files (`overhead`);
the first cell that needs a dense model trains it (`step` × its optimizer steps, `eval` × its test
evaluations) and every later one only loads it — what the dense cache saves; a point cell prunes
(`prune`: one call of its pruner, timed on a fresh model at the median of its sparsities; rounds or
epochs beyond a few are timed at two small values and extrapolated linearly; IMP's retrainings are
counted as training) and then follows its protocol (masked training, a fine-tune or an evaluation);
SLQ costs its data passes (`hvp`, batches of ≤ 8 probes: one pass per Lanczos step and batch, plus
the zero-row detection and `auto`'s choice of the HVP mode) and its full reorthogonalization
(`reorth`, two Gram–Schmidt passes over k basis rows at step k); a limit cell adds ε (one training
pass), the curve (test and training evaluations and one effective-sparsity pass per point) and its
later rounds. `iterations: auto` is counted at its cap `hessian.max_iterations`: an upper bound.

Why probe rather than model FLOPs: the same cell takes seconds or minutes depending on the machine,
its threads and memory bandwidth, the HVP mode `auto` settles on and the data pipeline; a few real
steps of each configuration capture all of them, and the probe of a whole sweep takes seconds to a
minute. What it cannot see: other work sharing the machine, slots that share cores or memory
bandwidth (each slot is assumed to run at the probe's speed), a GPU it does not have (then
`--per-cell-seconds`, or a probe file made on the GPU: `--save-probe` there, `--probe` here).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import socket
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pruning import data as data_lib
from pruning import masks, models
from pruning.data import Split
from pruning.hvp import LocalHVPBackend
from pruning.pruners import PRUNERS, prune
from pruning.pruners.imp import imp_schedule
from pruning.slq import gram_schmidt
from pruning.sparsity import EffectiveMaskEvaluator, sparsity_report
from pruning.train import TrainConfig, evaluate, run_length, seed_everything, train
from sweeps import store
from sweeps.cells import Cell, LimitPrune, PointPrune, SLQSettings
from sweeps.cost import Reserved, SECONDS_PER_HOUR
from sweeps.dense_cache import DENSE_ITEM, DenseCache
from sweeps.trial_common import dense_key, dense_slq_item, limit_stop_key

log = logging.getLogger(__name__)

PROBE_VERSION = 1
STAND_IN_TEST = 10_000      # test samples of a stand-in for a data set that is not here (published sets: 10k)
KNOB_PROBE = {"rounds": (2, 4), "epochs": None}  # pruner options that scale its cost linearly
RAY_CELL_OVERHEAD_S = 1.2   # slot time per Ray trial beyond the cell (bench/sweep_overhead.py, actor reuse)
EVAL_DEFAULT_BATCH = 1024   # `pruning.train.evaluate`'s batch where the trial does not choose one


# ----------------------------------------------------------------------------- units


@dataclass(frozen=True)
class Unit:
    """One thing the probe times: its kind and what its time depends on (the key of a probe file)."""

    kind: str
    fields: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, kind: str, **fields: Any) -> Unit:
        return cls(kind, tuple(sorted((k, _frozen(v)) for k, v in fields.items())))

    @property
    def key(self) -> str:
        return f"{self.kind}:" + json.dumps(dict(self.fields), sort_keys=True, separators=(",", ":"), default=list)

    def get(self, name: str) -> Any:
        return dict(self.fields)[name]


def _frozen(v: Any) -> Any:
    if isinstance(v, Mapping):
        return tuple(sorted((str(k), _frozen(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(x) for x in v)
    return v


def _thaw(v: Any) -> Any:
    """A `_frozen` mapping (a tuple of (name, value) pairs) back to a dict; anything else as it is."""
    if isinstance(v, tuple) and v and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in v):
        return {k: _thaw(x) for k, x in v}
    return v


def _data_key(dataset: str, options: Mapping[str, Any]) -> str:
    return json.dumps({"dataset": dataset, "data": dict(options)}, sort_keys=True, default=list)


def data_key(cell: Cell) -> str:
    """What a cell's data sizes depend on (the probe file's `data` keys)."""
    return _data_key(cell.dataset, cell.data)


def _net(cell: Cell) -> dict[str, Any]:
    """What a model's speed depends on: the architecture, its variant, the data it reads."""
    return {"model": cell.model, "variant": cell.model_variant, "dataset": cell.dataset, "data": dict(cell.data)}


def _step(cell: Cell, cfg: TrainConfig, masked: bool) -> Unit:
    return Unit.of("step", **_net(cell), batch_size=cfg.batch_size, l1=cfg.l1 > 0, l1_scope=cfg.l1_scope,
                   bf16=cfg.bf16, augment=cfg.augment, masked=masked)


def _eval(cell: Cell, split: str, batch_size: int) -> Unit:
    return Unit.of("eval", **_net(cell), split=split, batch_size=batch_size)


def _hvp(cell: Cell, h: SLQSettings) -> Unit:
    return Unit.of("hvp", **_net(cell), max_samples=h.max_samples, vectors=min(h.probes, 8))


# ----------------------------------------------------------------------------- work per cell


Work = list[tuple[Unit, float]]


@dataclass(frozen=True)
class Sizes:
    """Samples of a data set's splits (from the loaded data, or the probe file)."""

    n_train: int
    n_test: int


def training(cell: Cell, cfg: TrainConfig, sizes: Sizes, *, masked: bool) -> Work:
    """A `pruning.train.train` run of `cfg`: its optimizer steps and its test evaluations."""
    steps, epochs = run_length(cfg, sizes.n_train)
    evals = sum(1 for e in range(epochs) if e == epochs - 1 or (cfg.eval_every and (e + 1) % cfg.eval_every == 0))
    return [(_step(cell, cfg, masked), steps), (_eval(cell, "test", cfg.eval_batch_size), max(evals, 1))]


def slq_run(cell: Cell, h: SLQSettings) -> Work:
    """One SLQ run (`pruning.slq.slq`): data passes and reorthogonalization; `auto` at its cap."""
    m = h.max_iterations if h.adaptive else int(h.iterations)
    batches = math.ceil(h.probes / min(h.probes, 8))
    return [(_hvp(cell, h), 1 + batches * m), (Unit.of("hvp_settle", **_net(cell), max_samples=h.max_samples), 1),
            (Unit.of("reorth", **_net(cell)), h.probes * m * (m + 1) / 2)]


def curve(cell: Cell, points: int) -> Work:
    return [(_eval(cell, "test", EVAL_DEFAULT_BATCH), points), (_eval(cell, "train", EVAL_DEFAULT_BATCH), points),
            (Unit.of("effective", **_net(cell)), points)]


def prune_unit(cell: Cell, sparsity: float) -> Unit:
    p = cell.prune
    assert isinstance(p, PointPrune)
    return Unit.of("prune", **_net(cell), pruner=cell.pruner, target=cell.target, sparsity=sparsity,
                   options=dict(p.options))


def after_prune(cell: Cell, sizes: Sizes) -> Work:
    """`sweeps.trial_point._after_prune`: none | finetune | rewind/train."""
    if cell.protocol == "none":
        return [(_eval(cell, "test", EVAL_DEFAULT_BATCH), 1), (_eval(cell, "train", EVAL_DEFAULT_BATCH), 1)]
    if cell.protocol == "finetune":
        p = cell.prune
        assert isinstance(p, PointPrune)
        cfg = dataclasses.replace(cell.train, epochs=p.finetune_epochs, iterations=None)
        return training(cell, cfg, sizes, masked=True)
    return training(cell, cell.train, sizes, masked=True)


def needs_dense(cell: Cell) -> bool:
    """Whether the cell starts from (or compares with) the dense cache's model."""
    if cell.kind == "limit" or cell.pruner == "dense" or PRUNERS[cell.pruner].when == "after":
        return True
    return cell.hessian is not None and cell.hessian.models in ("dense", "both")


def dense_slq_key(cell: Cell) -> str:
    stop = limit_stop_key(cell.prune) if isinstance(cell.prune, LimitPrune) else None
    return f"{dense_key(cell)}/{dense_slq_item(cell, stop)}"


@dataclass
class CellWork:
    """What one pending cell will do: its units, and whether it trains a dense model (and which)."""

    cell: Cell
    work: Work
    trains_dense: str | None        # the dense key it trains for the cache (None: loads or needs none)
    dense_work: Work                # the part of `work` that is that training (for the wall schedule)
    waits_for: str | None           # the dense key it loads (it waits while another slot trains it)


def cell_work(cell: Cell, sizes: Sizes, trained: set[str], slq_done: set[str],
              median_sparsity: Mapping[str, float]) -> CellWork:
    """The units of `cell`; `trained` / `slq_done` hold the dense models and dense SLQs that exist
    (in the cache, or trained by an earlier cell of this run) and are updated."""
    work: Work = [(Unit.of("overhead", **_net(cell)), 1)]
    dense_work: Work = []
    trains, waits = None, None
    if needs_dense(cell):
        key = dense_key(cell)
        if key in trained:
            waits = key
        else:
            trained.add(key)
            trains = key
            dense_work = training(cell, cell.train, sizes, masked=False)
            work += dense_work
    h = cell.hessian
    if cell.kind == "limit":
        p = cell.prune
        assert isinstance(p, LimitPrune)
        points = len({0.0, *p.limit_grid})
        eps = [] if p.epsilon is not None else [(_eval(cell, "train", cell.train.batch_size), 1)]
        work += eps
        if h is not None and (k := dense_slq_key(cell)) not in slq_done:
            slq_done.add(k)
            work += slq_run(cell, h)
        work += curve(cell, points)
        if p.row_norm_quantiles and h is not None:
            work += [(_hvp(cell, h), math.ceil(p.row_norm_quantiles / min(h.probes, 8)))]
        for _ in range(2, p.limit_rounds + 1):  # each later round: retrain under the mask, ε, SLQ, curve
            work += training(cell, cell.train, sizes, masked=True) + eps
            work += (slq_run(cell, h) if h is not None else []) + curve(cell, points)
        return CellWork(cell, work, trains, dense_work, waits)
    if cell.pruner != "dense":
        s = median_sparsity[_prune_group(cell)]
        work.append((prune_unit(cell, s), 1))
        if cell.pruner == "imp":  # IMP retrains between its rounds (our training, masked)
            p = cell.prune
            assert isinstance(p, PointPrune)
            rounds = len(imp_schedule(1, cell.sparsity, p.options["rate"], p.options.get("rounds"))) - 1
            work += [(u, n * rounds) for u, n in training(cell, cell.train, sizes, masked=True)]
        work += after_prune(cell, sizes)
    if h is not None:
        if h.models in ("dense", "both") and (k := dense_slq_key(cell)) not in slq_done:
            slq_done.add(k)
            work += slq_run(cell, h)
        if h.models in ("pruned", "both"):
            work += slq_run(cell, h)
    return CellWork(cell, work, trains, dense_work, waits)


def _prune_group(cell: Cell) -> str:
    """Cells whose pruning call costs the same (up to the sparsity): one probe for all of them."""
    p = cell.prune
    options = dict(p.options) if isinstance(p, PointPrune) else {}
    return json.dumps([_net(cell), cell.pruner, cell.target, options], sort_keys=True, default=list)


def median_sparsities(cells: Sequence[Cell]) -> dict[str, float]:
    """The sparsity each pruner configuration is probed at: the median of its cells' (IMP: each own,
    its retrainings are counted per sparsity anyway and its scoring is cheap)."""
    groups: dict[str, list[float]] = {}
    for c in cells:
        if c.kind == "point" and c.pruner != "dense":
            groups.setdefault(_prune_group(c), []).append(float(c.sparsity))
    return {g: float(statistics.median_low(sorted(v))) for g, v in groups.items()}


def plan(cells: Sequence[Cell], sizes: Mapping[str, Sizes], storage: str) -> list[CellWork]:
    """The work of every pending cell, in grid order; the dense models and SLQs already in the
    store's cache are loaded, not trained."""
    cache = DenseCache(storage)
    trained = {k for k in {dense_key(c) for c in cells if needs_dense(c)}
               if _exists(cache, k, DENSE_ITEM)}
    slq_done = {k for k in {dense_slq_key(c) for c in cells if c.hessian is not None and needs_dense(c)}
                if _exists(cache, *k.split("/", 1))}
    medians = median_sparsities(cells)
    return [cell_work(c, sizes[data_key(c)], trained, slq_done, medians) for c in cells]


def _exists(cache: DenseCache, key: str, item: str) -> bool:
    import pyarrow.fs as pafs

    return cache.loc.fs.get_file_info(cache.path(key, item)).type == pafs.FileType.File


# ----------------------------------------------------------------------------- the probe


@dataclass
class Probe:
    """Seconds per unit measured on one machine and device (what `--save-probe` writes)."""

    units: dict[str, float] = field(default_factory=dict)
    data: dict[str, dict[str, Any]] = field(default_factory=dict)   # data_key → n_train, n_test, stand_in
    device: str = "cpu"
    device_name: str = "cpu"
    threads: int = 1
    host: str = ""
    torch_version: str = ""
    seconds: float = 0.0              # how long measuring took
    measured: str = "here"            # "here" | the probe file it came from

    def to_json(self) -> dict[str, Any]:
        return {"version": PROBE_VERSION, **{k: v for k, v in dataclasses.asdict(self).items() if k != "measured"}}

    @classmethod
    def load(cls, path: str) -> Probe:
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"--probe {path}: not a readable probe file ({e})") from None
        if not isinstance(raw, dict) or raw.get("version") != PROBE_VERSION:
            raise ValueError(f"--probe {path}: not a probe file of this version (expected version {PROBE_VERSION}; "
                             "make one with `prunetune estimate SPEC --save-probe FILE`)")
        names = {f.name for f in dataclasses.fields(cls)} - {"measured"}
        return cls(**{k: v for k, v in raw.items() if k in names}, measured=path)

    def sizes(self) -> dict[str, Sizes]:
        return {k: Sizes(int(v["n_train"]), int(v["n_test"])) for k, v in self.data.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _typical(fn: Callable[[], Any], device: torch.device, *, quick: float = 0.2) -> float:
    """The median of three runs when one is quick, one run when it is not. The median, not the
    minimum: the estimate predicts what cells will record on this machine, other load included."""
    t = _timed(fn, device)
    if t < quick:
        t = statistics.median([t, *(_timed(fn, device) for _ in range(2))])
    return t


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Bench:
    """The probe's workshop: data loaded once per data set (the real one, or a synthetic stand-in of
    the same shape and size when it is not on this machine), one probe function per unit kind."""

    def __init__(self, device: str, data_root: str | None):
        self.device = torch.device(device)
        self.data_root = data_root
        self.splits: dict[str, tuple[Split, Split]] = {}
        self.stand_in: dict[str, bool] = {}

    def load(self, dataset: str, options: Mapping[str, Any]) -> tuple[Split, Split]:
        key = _data_key(dataset, options)
        if key not in self.splits:
            try:
                self.splits[key] = data_lib.load(dataset, root=self.data_root, **options)
                self.stand_in[key] = False
            except data_lib.DataNotFound:
                shape, classes = data_lib.info(dataset, **options)
                n = data_lib.train_size(dataset, **options) or 50_000
                self.splits[key] = data_lib.load("synthetic", input_shape=list(shape), num_classes=classes,
                                                 n_train=n, n_test=STAND_IN_TEST)
                self.stand_in[key] = True
        return self.splits[key]

    def net(self, u: Unit, *, masked: bool = False, seed: int = 0) -> tuple[torch.nn.Module, Split, Split]:
        tr, te = self.load(u.get("dataset"), _thaw(u.get("data")) or {})
        seed_everything(seed)
        model = models.build(u.get("model"), input_shape=tr.input_shape, num_classes=tr.num_classes,
                             variant=u.get("variant")).to(self.device)
        if masked:
            g = torch.Generator().manual_seed(seed)
            masks.apply_masks(model, {n: (torch.rand(m.weight.shape, generator=g) >= 0.5).to(self.device)
                                      for n, m in masks.prunable_layers(model)})
        return model, tr, te

    # -- one function per unit kind: seconds of one unit

    def overhead(self, u: Unit) -> float:
        """Load the data, build the model, its sparsity report, write a cell's files."""
        d = self.device
        dataset, options = u.get("dataset"), _thaw(u.get("data")) or {}
        model, tr, _ = self.net(u, masked=True)
        stand_in = self.stand_in[_data_key(dataset, options)]
        load = 0.0 if stand_in else _timed(lambda: data_lib.load(dataset, root=self.data_root, **options), d)
        build = _timed(lambda: copy.deepcopy(models.build(u.get("model"), input_shape=tr.input_shape,
                                                          num_classes=tr.num_classes,
                                                          variant=u.get("variant")).state_dict()), d)
        report = sparsity_report(model)
        check = _timed(lambda: sparsity_report(model), d)
        with tempfile.TemporaryDirectory(prefix="prunetune-estimate-") as tmp:
            rows = {"trials": [{"cell_id": "probe", "sweep": "probe", "status": "ok"}], "layers": report.layer_rows()}
            for r in rows["layers"]:
                r.update(cell_id="probe", sweep="probe")
            write = _timed(lambda: store.write_cell(tmp, "probe", "probe", rows), d)
        return load + build + check + write

    def step(self, u: Unit) -> float:
        """Seconds per optimizer step: a few steps to warm up, then the median of five rounds of
        ~0.2 s each (a shared machine's load comes and goes within a second)."""
        model, tr, _ = self.net(u, masked=u.get("masked"))
        cfg = TrainConfig(batch_size=u.get("batch_size"), l1=1e-5 if u.get("l1") else 0.0,
                          l1_scope=u.get("l1_scope"), bf16=u.get("bf16"), augment=u.get("augment"), eval_every=0)

        def run(k: int) -> float:
            c = dataclasses.replace(cfg, iterations=k)
            return _timed(lambda: train(model, tr, None, c, device=self.device), self.device) / k

        k = int(min(200, max(3, 0.2 / max(run(3), 1e-6))))
        return statistics.median(run(k) for _ in range(5))

    def eval(self, u: Unit) -> float:
        model, tr, te = self.net(u)
        split = tr if u.get("split") == "train" else te
        go = lambda: evaluate(model, split, device=self.device, batch_size=u.get("batch_size"))  # noqa: E731
        go()
        return _typical(go, self.device)

    def prune(self, u: Unit) -> float:
        """One call of the pruner on a fresh model (IMP with no-op retraining: counted apart);
        a `rounds`/`epochs` option beyond a few is timed at two small values, extrapolated."""
        name, options = u.get("pruner"), dict(_thaw(u.get("options")) or {})
        knob, points = _knob(name, options)

        def once(opts: dict[str, Any]) -> float:
            times: list[float] = []
            while len(times) < (1 if times and times[0] >= 0.2 else 3):  # as `_typical`
                model, tr, _ = self.net(u)  # a fresh model each time (pruning changes it), built untimed
                extra = {"train_fn": lambda m: None, "rewind_state": model.state_dict()} if name == "imp" else {}
                data = tr if PRUNERS[name].needs_data else None
                times.append(_timed(lambda: prune(model, name, u.get("sparsity"), target=u.get("target"), data=data,
                                                  seed=0, **opts, **extra), self.device))
            return statistics.median(times)

        if knob is None:
            return once(options)
        (a, ta), (b, tb) = ((v, once({**options, **extra})) for v, extra in points)
        slope = max(0.0, (tb - ta) / (b - a))  # noise can make the larger probe the faster one
        return max(tb, ta + (options[knob] - a) * slope)

    def hvp(self, u: Unit) -> float:
        backend, V = self._hvp_backend(u, u.get("vectors"))
        while backend.mode == "auto":  # settle first (`hvp_settle` counts that)
            backend.hvp_sum(V)
        backend.hvp_sum(V)
        return min(_timed(lambda: backend.hvp_sum(V), self.device) for _ in range(2))

    def hvp_settle(self, u: Unit) -> float:
        """What `auto` spends choosing its mode (once per SLQ run): its calls beyond steady ones."""
        backend, V = self._hvp_backend(u, 1)
        if backend.mode != "auto":
            return 0.0
        t, calls = 0.0, 0
        while backend.mode == "auto":
            t += _timed(lambda: backend.hvp_sum(V), self.device)
            calls += 1
        steady = _timed(lambda: backend.hvp_sum(V), self.device)
        return max(t - calls * steady, 0.0)

    def _hvp_backend(self, u: Unit, vectors: int) -> tuple[LocalHVPBackend, torch.Tensor]:
        model, tr, _ = self.net(u)
        n = u.get("max_samples") if "max_samples" in dict(u.fields) else None
        data = tr if n is None or n >= len(tr) else dataclasses.replace(tr, x=tr.x[:n], y=tr.y[:n], _device_cache={})
        backend = LocalHVPBackend(model, torch.nn.functional.cross_entropy, data, device=self.device)
        V = torch.randn(backend.dim, vectors, dtype=backend.dtype, device=self.device)
        return backend, V

    def reorth(self, u: Unit) -> float:
        """Seconds per basis row of one Gram–Schmidt step (two passes, one probe: `gram_schmidt`)."""
        model, _, _ = self.net(u)
        dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
        dtype = next(model.parameters()).dtype
        rows = 32
        Q = torch.randn(1, rows, dim, dtype=dtype, device=self.device)
        w = torch.randn(1, dim, dtype=dtype, device=self.device)
        coef = torch.empty(1, rows, dtype=dtype, device=self.device)
        go = lambda: gram_schmidt(Q, w, coef, rows - 1, [(0, 0)])  # noqa: E731
        go()
        return min(_timed(go, self.device) for _ in range(3)) / rows

    def effective(self, u: Unit) -> float:
        model, tr, _ = self.net(u, masked=True)
        ev = EffectiveMaskEvaluator(model, input_shape=tr.input_shape, dtype=torch.float32)
        m = masks.get_masks(model)
        ev.effective_sparsity(m)
        return _typical(lambda: ev.effective_sparsity(m), self.device)


def _knob(pruner: str, options: Mapping[str, Any]) -> tuple[str | None, list[tuple[int, dict[str, Any]]]]:
    """The option that scales a pruner's cost linearly, when it is large enough to be worth
    extrapolating, with the two (value, options) points to time it at."""
    rounds = options.get("rounds")
    if isinstance(rounds, int) and rounds > 8:
        return "rounds", [(2, {"rounds": 2}), (4, {"rounds": 4})]
    epochs, period = options.get("epochs"), options.get("iter_period")
    if isinstance(epochs, int) and isinstance(period, int) and epochs > 2 * period + 1:
        return "epochs", [(period + 1, {"epochs": period + 1}), (2 * period + 1, {"epochs": 2 * period + 1})]
    return None, []


PROBES: dict[str, Callable[[Bench, Unit], float]] = {
    "overhead": Bench.overhead, "step": Bench.step, "eval": Bench.eval, "prune": Bench.prune, "hvp": Bench.hvp,
    "hvp_settle": Bench.hvp_settle, "reorth": Bench.reorth, "effective": Bench.effective,
}


def measure(cells: Sequence[Cell], *, storage: str, device: str = "cpu", threads: int = 1,
            data_root: str | None = None, on_unit: Callable[[Unit, float], None] | None = None) -> Probe:
    """Time every unit the pending `cells` need, here (see the module docstring)."""
    t0 = time.perf_counter()
    bench = Bench(device, data_root)
    probe = Probe(device=device, threads=int(threads), host=socket.gethostname(), torch_version=torch.__version__,
                  device_name=torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu")
    with _threads(threads):
        for c in cells:
            key = data_key(c)
            if key not in probe.data:
                tr, te = bench.load(c.dataset, c.data)
                probe.data[key] = {"n_train": len(tr), "n_test": len(te), "stand_in": bench.stand_in[key]}
        units = {u.key: u for w in plan(cells, probe.sizes(), storage) for u, _ in w.work}
        for key, u in units.items():
            with warnings.catch_warnings():  # a probe's disconnected mask says nothing about the sweep
                warnings.simplefilter("ignore")
                probe.units[key] = float(PROBES[u.kind](bench, u))
            if on_unit is not None:
                on_unit(u, probe.units[key])
    probe.seconds = time.perf_counter() - t0
    return probe


# ----------------------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    """What `prunetune estimate` prints (and `--json` writes)."""

    cells: int
    done: int
    pending: int
    slots: int
    cpu_hours: float
    gpu_hours: float
    wall_hours: float
    cell_hours: float                    # Σ of the pending cells' seconds (what their rows will sum to)
    dense_trainings: int                 # dense models this run trains
    dense_loads: int                     # cells that load a cached dense model instead of training one
    upper_bound: bool                    # some SLQ counted at the cap of iterations: auto
    measured: str                        # how the seconds were obtained, in words
    per_cell_seconds: dict[str, float] = field(default_factory=dict)
    by_unit: dict[str, float] = field(default_factory=dict)  # seconds per unit kind, summed over cells
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def missing_units(work: Sequence[CellWork], probe: Probe) -> list[str]:
    return sorted({u.key for w in work for u, _ in w.work if u.key not in probe.units})


def schedule(durations: Sequence[float], slots: int, *, dense_ready: Sequence[tuple[str | None, str | None, float]],
             overhead: float = 0.0) -> tuple[float, list[float]]:
    """(wall seconds, each cell's seconds with its waits): cells in order, each on the first free
    slot; a cell that loads a dense model that another slot is still training waits for it
    (`dense_ready[i]` = (key it trains, key it loads, seconds into the cell when its training ends))."""
    free = [0.0] * max(1, slots)
    ready: dict[str, float] = {}
    taken = []
    for d, (trains, loads, dense_end) in zip(durations, dense_ready):
        slot = min(range(len(free)), key=free.__getitem__)
        start = free[slot]
        wait = max(0.0, ready.get(loads, 0.0) - start) if loads is not None else 0.0
        if trains is not None:
            ready[trains] = start + dense_end
        taken.append(d + wait)
        free[slot] = start + d + wait + overhead
    return max(free), taken


def estimate(cells: Sequence[Cell], *, storage: str, reserved: Reserved, slots: int, probe: Probe | None = None,
             per_cell_seconds: float | None = None, backend: str = "serial") -> Estimate:
    """Seconds of every pending cell from `probe` (or `per_cell_seconds` for each), summed into
    CPU-/GPU-hours by `reserved`, and scheduled on `slots` (see the module docstring)."""
    pending = [c for c in cells if not store.is_done(storage, c.sweep, c.cell_id)]
    overhead = RAY_CELL_OVERHEAD_S if backend == "ray" else 0.0
    notes: list[str] = []
    if per_cell_seconds is not None:
        seconds = [float(per_cell_seconds)] * len(pending)
        ready = [(None, None, 0.0)] * len(pending)
        work: list[CellWork] = []
        measured = f"given: {per_cell_seconds:g} s per cell (--per-cell-seconds), not measured"
        dense_trainings = dense_loads = 0
        by_unit: dict[str, float] = {}
    else:
        assert probe is not None
        sizes = probe.sizes()
        lacking = sorted({data_key(c) for c in pending} - set(sizes))
        if lacking:
            raise ValueError(f"--probe {probe.measured}: no data sizes for {lacking[0]}; measure this spec "
                             "with --save-probe on the machine it will run on")
        work = plan(pending, sizes, storage)
        if missing := missing_units(work, probe):
            raise ValueError(f"--probe {probe.measured}: {len(missing)} unit(s) of this sweep were not measured "
                             f"(first: {missing[0]}); measure this spec with --save-probe")
        by_unit = {}
        seconds, ready = [], []
        for w in work:
            s = 0.0
            for u, n in w.work:
                t = n * probe.units[u.key]
                s += t
                by_unit[u.kind] = by_unit.get(u.kind, 0.0) + t
            seconds.append(s)
            head = sum(n * probe.units[u.key] for u, n in w.work[:1])  # the overhead comes first
            ready.append((w.trains_dense, w.waits_for,
                          head + sum(n * probe.units[u.key] for u, n in w.dense_work)))
        dense_trainings = sum(1 for w in work if w.trains_dense)
        dense_loads = sum(1 for w in work if w.waits_for)
        stand_ins = sorted(k for k, v in probe.data.items() if v.get("stand_in"))
        place = "on this machine" if probe.measured == "here" else f"from {probe.measured}"
        measured = (f"measured {place} ({probe.device_name}, {probe.threads} torch thread(s), host {probe.host}) "
                    f"in {probe.seconds:.0f} s: {len(probe.units)} probes")
        if stand_ins:
            notes.append(f"{len(stand_ins)} data set(s) not on the probing machine were timed on synthetic stand-ins "
                         "of the same shape and training-set size (10,000 test images; no augmentation)")
    wall, taken = schedule(seconds, slots, dense_ready=ready, overhead=overhead)
    cell_seconds = sum(taken)
    upper = any(c.hessian is not None and c.hessian.adaptive for c in pending)
    if upper:
        notes.append("iterations: auto counted at its cap hessian.max_iterations (Lanczos steps grow from the "
                     "authors' depth until s* is resolved): an upper bound")
    if slots > 1:
        notes.append(f"{slots} slots assumed to run at the probe's speed each; slots that share cores or memory "
                     "bandwidth run slower")
    if overhead:
        notes.append(f"Ray: {overhead:g} s of slot time per cell added to the wall time (bench/sweep_overhead.py)")
    return Estimate(
        cells=len(cells), done=len(cells) - len(pending), pending=len(pending), slots=slots,
        cpu_hours=reserved.cpus * cell_seconds / SECONDS_PER_HOUR,
        gpu_hours=reserved.gpus * cell_seconds / SECONDS_PER_HOUR,
        wall_hours=wall / SECONDS_PER_HOUR, cell_hours=cell_seconds / SECONDS_PER_HOUR,
        dense_trainings=dense_trainings, dense_loads=dense_loads, upper_bound=upper, measured=measured,
        per_cell_seconds={c.cell_id: t for c, t in zip(pending, taken)}, by_unit=by_unit, notes=notes)


def save_probe(probe: Probe, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(probe.to_json(), f, indent=1, sort_keys=True)
