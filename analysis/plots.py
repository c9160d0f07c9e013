"""Figures of a sweep, written as PNG files with matplotlib's Agg canvas (no display, no pyplot state).

Every function takes the loaded frames and an output path, writes one file and returns its path;
`plot_all` writes what the data supports. Curves that average seeds use the same rule as the tables
(`tables.interpolate`: linear in log-compression or sparsity, never extrapolated), so a figure never
shows a value a table would refuse to show.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import matplotlib
from matplotlib.figure import Figure

from analysis.tables import ACC_SCALE, VIEWS, interpolate, ok_rows, replicate_ids

MAX_PANELS = 12          # limit/spectrum panels per figure; more cells are left out (and said so)
GRID_POINTS = 64         # points of the interpolation grid of a mean curve


def _figure(n_panels: int, width: float = 6.5, height: float = 3.6) -> tuple[Figure, list]:
    cols = min(3, max(n_panels, 1))
    rows = math.ceil(max(n_panels, 1) / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel()).tolist()
    for ax in axes:  # 20 distinct colours: the 15 pruners of a paper grid must not share one
        ax.set_prop_cycle(color=matplotlib.colormaps["tab20"].colors)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:max(n_panels, 1)]


def _save(fig: Figure, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _label(pruner: object, target: object) -> str:
    return f"{pruner}" if pd.isna(target) or target == "direct" else f"{pruner} ({target} target)"


def _mean_band(points: pd.DataFrame, x: str, grid: np.ndarray,
               transform: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over replicates (seeds) of interpolated test_acc on `grid` (NaN off support)."""
    per_seed = np.vstack([interpolate(transform(g[x].to_numpy(float)), g["test_acc"].to_numpy(float),
                                      transform(grid))
                          for _, g in points.groupby(replicate_ids(points))])
    with warnings.catch_warnings():  # an all-NaN grid column (off every seed's support) is expected
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_seed, 0), np.nanmin(per_seed, 0), np.nanmax(per_seed, 0)


def accuracy_vs_compression(trials: pd.DataFrame, out: str | os.PathLike,
                            view: str = "direct_compression") -> str:
    """Test accuracy vs compression (log x) per pruner: mean over seeds with a min–max band.

    One panel per model/dataset; `view` is direct_compression or effective_compression. Points at
    inf compression (disconnected nets) cannot sit on a log axis and are left out of the lines.
    """
    if view not in VIEWS:
        raise ValueError(f"view {view!r}: choose from {', '.join(VIEWS)}")
    points = ok_rows(trials)
    groups = list(points.groupby(["model", "dataset"], dropna=False, sort=True))
    fig, axes = _figure(len(groups))
    for ax, ((model, dataset), g) in zip(axes, groups):
        for (pruner, target), p in g.groupby(["pruner", "target"], dropna=False, sort=True):
            x = p[view].to_numpy(float)
            finite = x[np.isfinite(x) & (x > 0)]
            if finite.size == 0:
                continue
            grid = np.geomspace(finite.min(), finite.max(), GRID_POINTS) if finite.max() > finite.min() \
                else finite[:1]
            mean, low, high = _mean_band(p, view, grid, np.log10)
            line, = ax.plot(grid, ACC_SCALE * mean, marker="o" if grid.size == 1 else None,
                            label=_label(pruner, target))
            ax.fill_between(grid, ACC_SCALE * low, ACC_SCALE * high, color=line.get_color(), alpha=0.2)
            ax.scatter(x[np.isfinite(x)], ACC_SCALE * p["test_acc"].to_numpy(float)[np.isfinite(x)],
                       s=8, color=line.get_color(), alpha=0.5)
        ax.set_xscale("log")
        ax.set_xlabel(view)
        ax.set_ylabel("test_acc (%)")
        ax.set_title(f"{model} / {dataset}")
        _outside_legend(ax)
    return _save(fig, out)


def _outside_legend(ax) -> None:
    """Legend to the right of the panel: with 15 pruners an inside legend hides the data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def effective_vs_direct(trials: pd.DataFrame, out: str | os.PathLike) -> str:
    """Effective vs direct compression per pruner, log–log, with the diagonal (effective ≥ direct).

    A disconnected net (effective compression ∞) is drawn as a triangle on the top edge.
    """
    points = ok_rows(trials)
    groups = list(points.groupby(["model", "dataset"], dropna=False, sort=True))
    fig, axes = _figure(len(groups))
    for ax, ((model, dataset), g) in zip(axes, groups):
        d_all, e_all = g["direct_compression"].to_numpy(float), g["effective_compression"].to_numpy(float)
        finite = np.concatenate([d_all[np.isfinite(d_all)], e_all[np.isfinite(e_all)]])
        finite = finite[finite > 0]
        top = finite.max() * 2 if finite.size else 10.0
        disconnected = False
        for (pruner, target), p in g.groupby(["pruner", "target"], dropna=False, sort=True):
            d, e = p["direct_compression"].to_numpy(float), p["effective_compression"].to_numpy(float)
            ok = np.isfinite(d) & np.isfinite(e)
            dots = ax.scatter(d[ok], e[ok], s=14, label=_label(pruner, target))
            cut = np.isfinite(d) & np.isposinf(e)
            if cut.any():
                ax.scatter(d[cut], np.full(cut.sum(), top), marker="^", s=30, color=dots.get_facecolor()[0])
                disconnected = True
        if finite.size:
            lo, hi = finite.min() / 1.5, top * 1.2
            ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="effective = direct")
        ax.set_xscale("log")
        ax.set_yscale("log")
        if disconnected:  # one legend entry for the top-edge triangles, in the pruners' colours
            ax.scatter([], [], marker="^", s=30, color="grey", label="▲ on top: ∞ (disconnected)")
        ax.set_xlabel("direct_compression")
        ax.set_ylabel("effective_compression")
        ax.set_title(f"{model} / {dataset}")
        _outside_legend(ax)
    return _save(fig, out)


def smoothed_density(nodes: np.ndarray, weights: np.ndarray, probes: np.ndarray, grid: np.ndarray,
                     sigma: float) -> np.ndarray:
    """Mean over probes of Σ_j τ_j N(x; θ_j, σ²): for display only (sums use (θ, τ) directly)."""
    n_probes = max(len(np.unique(probes)), 1)
    z = (grid[:, None] - nodes[None, :]) / sigma                      # (grid, nodes)
    return (np.exp(-0.5 * z * z) @ weights) / (sigma * math.sqrt(2 * math.pi) * n_probes)


def _distinct_runs(spectra: pd.DataFrame) -> list[tuple[list[str], pd.DataFrame]]:
    """SLQ runs with distinct (node, weight) content, each with the cells that share it.

    Cells pruned from one dense model share its cached SLQ run; drawing it once per cell would fill
    the figure with copies.
    """
    runs: dict[tuple, tuple[list[str], pd.DataFrame]] = {}
    for (cell_id, hessian_model), g in spectra.groupby(["cell_id", "hessian_model"], dropna=False, sort=True):
        g = g.sort_values(["probe", "node_index"])
        key = (hessian_model, g["node"].round(12).to_numpy().tobytes(), g["weight"].round(12).to_numpy().tobytes())
        runs.setdefault(key, ([], g))[0].append(str(cell_id))
    return list(runs.values())


def spectral_density(spectra: pd.DataFrame, out: str | os.PathLike, *, sigma: float | None = None,
                     cell_ids: list[str] | None = None, trials: pd.DataFrame | None = None) -> str:
    """Hessian spectral density from the stored Ritz nodes and weights, Gaussian-smoothed, log y.

    One panel per distinct SLQ run (identical runs shared by several cells are drawn once). σ
    defaults to 1% of the node range. The deflated zero mass q is not in the nodes; it is printed in
    the panel title. With `trials`, panels are labelled by model/dataset/seed instead of cell_id.
    """
    if sigma is not None and not sigma > 0:
        raise ValueError(f"sigma: {sigma!r} not allowed; must be > 0")
    data = spectra if cell_ids is None else spectra[spectra["cell_id"].isin(cell_ids)]
    runs = _distinct_runs(data)
    labels = {} if trials is None else {str(r.cell_id): _title(pd.Series(r._asdict()))
                                        for r in trials[["cell_id", "model", "dataset", "seed"]].itertuples()}
    fig, axes = _figure(min(len(runs), MAX_PANELS))
    for ax, (cells, g) in zip(axes, runs[:MAX_PANELS]):
        nodes, weights = g["node"].to_numpy(float), g["weight"].to_numpy(float)
        spread = float(nodes.max() - nodes.min()) if nodes.size else 0.0
        s = sigma or (0.01 * spread if spread > 0 else max(abs(float(nodes.mean())) * 0.01, 1e-3))
        grid = np.linspace(nodes.min() - 5 * s, nodes.max() + 5 * s, 800)
        density = smoothed_density(nodes, weights, g["probe"].to_numpy(), grid, s)
        ax.semilogy(grid, np.maximum(density, 1e-12))
        ax.set_ylim(bottom=max(density.max() * 1e-8, 1e-12))
        q = g["zero_mass"].dropna()
        q_text = f", q={q.iloc[0]:.3f}" if len(q) else ""
        shared = f" (+{len(cells) - 1} cells)" if len(cells) > 1 else ""
        ax.set_title(f"{labels.get(cells[0], cells[0])}{shared}: {g['hessian_model'].iloc[0]}{q_text}", fontsize=9)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (smoothed, display only)")
    if len(runs) > MAX_PANELS:
        fig.suptitle(f"first {MAX_PANELS} of {len(runs)} distinct SLQ runs")
    return _save(fig, out)


def _limit_cells(curves: pd.DataFrame, trials: pd.DataFrame) -> list[tuple[pd.Series, pd.DataFrame]]:
    limits = ok_rows(trials, kind="limit").set_index("cell_id", drop=False)
    cells = []
    for cell_id, g in curves.groupby("cell_id", sort=True):
        if cell_id in limits.index:
            row = limits.loc[cell_id]
            row = row.iloc[0] if isinstance(row, pd.DataFrame) else row
            cells.append((row, g.sort_values("removed_frac")))
    return cells


def _limit_lines(ax, row: pd.Series) -> None:
    marks = (("predicted_removed_frac", "predicted", "-", "C3"),
             ("predicted_removed_frac_authors", "authors' estimator", ":", "C3"),
             ("actual_removed_frac_strict", "actual (strict)", "--", "k"),
             ("actual_removed_frac_tol", "actual (tolerance)", ":", "k"),
             ("actual_removed_frac_loss", "actual (loss)", "-.", "C2"))
    for column, label, style, color in marks:
        value = row.get(column)
        if value is not None and not pd.isna(value):
            ax.axvline(float(value), ls=style, color=color, lw=1, label=f"{label} {float(value):.4f}")


def _title(row: pd.Series) -> str:
    seed = "" if pd.isna(row.get("seed")) else f" seed {int(row['seed'])}"
    return f"{row.get('model')} / {row.get('dataset')}{seed}"


def limit_crossing(curves: pd.DataFrame, trials: pd.DataFrame, out: str | os.PathLike) -> str:
    """s against G(R(s)): the predicted limit is where the curve meets the diagonal s = G(R(s)).

    Predicted and actual (strict and tolerance rule) limits are vertical lines; R(s) itself (`r`)
    is drawn dotted against a second axis.
    """
    cells = [(r, g) for r, g in _limit_cells(curves, trials) if g["g_of_r"].notna().any()]
    fig, axes = _figure(min(len(cells), MAX_PANELS))
    for ax, (row, g) in zip(axes, cells[:MAX_PANELS]):
        s = g["removed_frac"].to_numpy(float)
        ax.plot(s, g["g_of_r"].to_numpy(float), label="G(R(s))")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="s")
        _limit_lines(ax, row)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("removed_frac s")
        ax.set_ylabel("g_of_r")
        ax.set_title(_title(row))
        ax.legend(fontsize=7, loc="upper left")
        if g["r"].notna().any():  # R(s) on a second axis: where the distance grows, G falls
            r_ax = ax.twinx()
            r_ax.plot(s, g["r"].to_numpy(float), color="grey", lw=0.8, ls=":")
            r_ax.set_ylabel("r = R(s)", color="grey")
    return _save(fig, out)


def accuracy_vs_sparsity(curves: pd.DataFrame, trials: pd.DataFrame, out: str | os.PathLike) -> str:
    """Test accuracy and test loss of the one-shot pruned LOMP model vs removed fraction, with the
    limit lines (the paper's Figure of the curves; losses on the right axis where stored).

    The dense accuracy (dense_test_acc) is the horizontal reference the accuracy rules read against;
    the training loss with the line dense training loss + ε is what the loss rule reads.
    """
    cells = [(r, g) for r, g in _limit_cells(curves, trials) if g["test_acc"].notna().any()]
    fig, axes = _figure(min(len(cells), MAX_PANELS))
    for ax, (row, g) in zip(axes, cells[:MAX_PANELS]):
        s = g["removed_frac"].to_numpy(float)
        ax.plot(s, ACC_SCALE * g["test_acc"].to_numpy(float), marker=".", label="test_acc")
        dense = row.get("dense_test_acc")
        if dense is not None and not pd.isna(dense):
            ax.axhline(ACC_SCALE * float(dense), color="grey", lw=0.8, label="dense_test_acc")
        _limit_lines(ax, row)
        ax.set_xlabel("removed_frac")
        ax.set_ylabel("test_acc (%)")
        ax.set_title(_title(row))
        handles, labels = ax.get_legend_handles_labels()
        top = ax
        if "test_loss" in g and g["test_loss"].notna().any():
            top = ax.twinx()  # drawn above `ax`: the legend goes on it, or the loss line crosses it
            line, = top.plot(s, g["test_loss"].to_numpy(float), color="C1", lw=1, ls="-.", label="test_loss")
            top.set_ylabel("loss", color="C1")
            handles, labels = handles + [line], labels + ["test_loss (right)"]
            eps = row.get("epsilon")
            if "train_loss" in g and g["train_loss"].notna().any() and eps is not None and not pd.isna(eps):
                train = g["train_loss"].to_numpy(float)
                line, = top.plot(s, train, color="C2", lw=1, label="train_loss")
                level = top.axhline(train[0] + float(eps), color="C2", lw=0.8, ls="--")
                handles += [line, level]
                labels += ["train_loss (right)", "dense train_loss + ε (right)"]
        top.legend(handles, labels, fontsize=7)
    return _save(fig, out)


# ----------------------------------------------------------------------------- plot_all


def _has_points(frames: dict[str, pd.DataFrame]) -> bool:
    t = frames.get("trials")
    return t is not None and not t.empty and not ok_rows(t).empty


def _has_limit_curves(frames: dict[str, pd.DataFrame], column: str) -> bool:
    t, c = frames.get("trials"), frames.get("curves")
    if t is None or c is None or t.empty or c.empty or column not in c or not c[column].notna().any():
        return False
    return bool(c["cell_id"].isin(ok_rows(t, kind="limit")["cell_id"]).any())


@dataclass(frozen=True)
class PlotSpec:
    file: str
    available: Callable[[dict[str, pd.DataFrame]], bool]
    draw: Callable[[dict[str, pd.DataFrame], str], str]


PLOTS: dict[str, PlotSpec] = {
    "accuracy_direct": PlotSpec("accuracy_vs_direct_compression.png", _has_points,
                                lambda f, p: accuracy_vs_compression(f["trials"], p, "direct_compression")),
    "accuracy_effective": PlotSpec("accuracy_vs_effective_compression.png", _has_points,
                                   lambda f, p: accuracy_vs_compression(f["trials"], p, "effective_compression")),
    "compression": PlotSpec("effective_vs_direct_compression.png", _has_points,
                            lambda f, p: effective_vs_direct(f["trials"], p)),
    "spectrum": PlotSpec("hessian_spectral_density.png",
                         lambda f: f.get("spectra") is not None and not f["spectra"].empty,
                         lambda f, p: spectral_density(f["spectra"], p, trials=f.get("trials"))),
    "limit_crossing": PlotSpec("limit_crossing.png", lambda f: _has_limit_curves(f, "g_of_r"),
                               lambda f, p: limit_crossing(f["curves"], f["trials"], p)),
    "accuracy_vs_sparsity": PlotSpec("accuracy_vs_sparsity.png", lambda f: _has_limit_curves(f, "test_acc"),
                                     lambda f, p: accuracy_vs_sparsity(f["curves"], f["trials"], p)),
}


def plot_all(frames: dict[str, pd.DataFrame], out_dir: str | os.PathLike) -> list[str]:
    """Every figure the loaded tables support, written into `out_dir`; the paths written."""
    return [spec.draw(frames, os.path.join(os.fspath(out_dir), spec.file))
            for spec in PLOTS.values() if spec.available(frames)]
