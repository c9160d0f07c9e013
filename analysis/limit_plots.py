"""Figures of the pruning-limit report (`analysis.limit_report`), PNG through matplotlib's Agg canvas.

One panel per model/data set with the seeds overlaid (one colour each), so that a 6-model × 3-seed
sweep fits one figure; the per-cell curves (accuracy and test loss, the crossing s = G(R(s))) are
`analysis.plots`' figures, written once per model/data set.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis import plots
from analysis.limit_report import ALL_LAYERS, _join
from analysis.tables import GROUP, ok_rows


def _panels(frame: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    return list(frame.groupby(GROUP, sort=True))[: plots.MAX_PANELS]


def _figure(n_panels: int) -> tuple[Figure, list]:
    """`plots._figure` with ten strong colours: here the lines are seeds, not 15 pruners."""
    fig, axes = plots._figure(n_panels)
    for ax in axes:
        ax.set_prop_cycle(color=matplotlib.colormaps["tab10"].colors)
    return fig, axes


def _finish(ax, xlabel: str, ylabel: str, model: object, dataset: object) -> None:
    """The labels, title and legend every panel of the limit report has."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{model} / {dataset}")
    ax.legend(fontsize=7)


def _seed_label(seed: object) -> str:
    return f"seed {int(seed)}" if not pd.isna(seed) else "seed ?"


def effective_along_curve(curves: pd.DataFrame, trials: pd.DataFrame, out: str) -> str:
    """Effective vs direct removed fraction along each one-shot global-magnitude curve (ours), with
    the diagonal and the predicted and actual limits marked in effective terms."""
    joined = _join(curves[curves["effective_sparsity"].notna()], trials)
    limits = ok_rows(trials, kind="limit").set_index("cell_id")
    panels = _panels(joined)
    fig, axes = _figure(len(panels))
    for ax, ((model, dataset), g) in zip(axes, panels):
        for (cell, seed), c in g.groupby(["cell_id", "seed"], sort=True):
            c = c.sort_values("removed_frac")
            line, = ax.plot(c["removed_frac"], c["effective_sparsity"], label=_seed_label(seed))
            row = limits.loc[cell]
            for direct, effective, marker in (("predicted_removed_frac", "predicted_effective_removed_frac", "o"),
                                              ("actual_removed_frac_tol", "actual_effective_removed_frac_tol", "s")):
                if not pd.isna(row.get(effective)):
                    ax.scatter([row[direct]], [row[effective]], marker=marker, color=line.get_color(), zorder=3)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="effective = direct")
        ax.scatter([], [], marker="o", color="grey", label="predicted limit")
        ax.scatter([], [], marker="s", color="grey", label="actual limit (tolerance)")
        _finish(ax, "removed_frac (direct)", "effective_sparsity", model, dataset)
    return plots._save(fig, out)


def weight_scaling(scaling: pd.DataFrame, trials: pd.DataFrame, out: str) -> str:
    """Predicted removed fraction vs the factor the trained weights are multiplied by."""
    joined = _join(scaling, trials)
    panels = _panels(joined)
    fig, axes = _figure(len(panels))
    for ax, ((model, dataset), g) in zip(axes, panels):
        for seed, c in g.groupby("seed", sort=True):
            c = c.sort_values("factor")
            ax.plot(c["factor"], c["predicted_removed_frac"], marker="o", label=_seed_label(seed))
        _finish(ax, "weight factor (Hessian spectrum held fixed)", "predicted_removed_frac", model, dataset)
    return plots._save(fig, out)


def weight_histograms(weights: pd.DataFrame, trials: pd.DataFrame, out: str) -> str:
    """Fraction of the trained prunable weights per log10|w| bin (all layers), log y, seeds overlaid.

    The end bins (|w| below 1e-12, exact zeros included; |w| ≥ 100) have no finite width: their
    share is written in the legend instead of drawn."""
    joined = _join(weights[weights["layer"] == ALL_LAYERS], trials)
    panels = _panels(joined)
    fig, axes = _figure(len(panels))
    for ax, ((model, dataset), g) in zip(axes, panels):
        for (_, seed), c in g.groupby(["cell_id", "seed"], sort=True):
            total = c["count"].sum()
            inner = c[np.isfinite(c["log10_low"]) & np.isfinite(c["log10_high"])].sort_values("bin")
            under = c[~np.isfinite(c["log10_low"])]["count"].sum() / total
            label = _seed_label(seed) + (f" ({100 * under:.1f}% below 1e-12)" if under > 0 else "")
            if len(inner):
                ax.stairs(*_contiguous(inner, total), label=label)
        ax.set_yscale("log")
        _finish(ax, "log10 |w|", "fraction of weights per bin (0.05)", model, dataset)
    return plots._save(fig, out)


def _contiguous(bins: pd.DataFrame, total: float) -> tuple[np.ndarray, np.ndarray]:
    """(fraction per bin, edges) over every bin from the first to the last stored one: the store
    leaves empty bins out, and `stairs` needs them (NaN: no step drawn on the log axis)."""
    b = bins["bin"].to_numpy(int)
    width = float(bins["log10_high"].iloc[0] - bins["log10_low"].iloc[0])
    values = np.full(b.max() - b.min() + 1, np.nan)
    values[b - b.min()] = bins["count"].to_numpy(float) / total
    edges = float(bins["log10_low"].iloc[0]) + width * (np.arange(len(values) + 1) - (b[0] - b.min()))
    return values, edges


def hessian_row_norms(rows: pd.DataFrame, trials: pd.DataFrame, out: str) -> str:
    """Exact Hessian row L1 norms at the |w| quantiles (the appendix's figure): sorted by |w|, log y.
    Exactly zero rows cannot sit on a log axis; their number is in the legend."""
    joined = _join(rows, trials)
    panels = _panels(joined)
    fig, axes = _figure(len(panels))
    for ax, ((model, dataset), g) in zip(axes, panels):
        for (_, seed), c in g.groupby(["cell_id", "seed"], sort=True):
            c = c.sort_values("quantile")
            zero = int((c["row_l1"] <= 0).sum())
            label = _seed_label(seed) + (f" ({zero} zero rows)" if zero else "")
            ax.plot(c["quantile"], c["row_l1"].where(c["row_l1"] > 0), marker=".", label=label)
        ax.set_yscale("log")
        _finish(ax, "quantile of |w| (prunable weights, ascending)", "row L1 norm of the Hessian", model, dataset)
    return plots._save(fig, out)


def limit_rounds(rounds: pd.DataFrame, trials: pd.DataFrame, out: str) -> str:
    """Predicted (solid) and actual (tolerance rule, dashed) removed fraction per pruning round."""
    joined = _join(rounds[rounds["status"] == "ok"], trials)
    panels = _panels(joined)
    fig, axes = _figure(len(panels))
    for ax, ((model, dataset), g) in zip(axes, panels):
        for seed, c in g.groupby("seed", sort=True):
            c = c.sort_values("round")
            line, = ax.plot(c["round"], c["predicted_removed_frac"], marker="o", label=f"{_seed_label(seed)} predicted")
            ax.plot(c["round"], c["actual_removed_frac_tol"], marker="s", ls="--", color=line.get_color(),
                    label=f"{_seed_label(seed)} actual (tolerance)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _finish(ax, "round", "removed_frac (of all prunable weights)", model, dataset)
    return plots._save(fig, out)


def _has(frame: pd.DataFrame | None, trials: pd.DataFrame, column: str) -> bool:
    return frame is not None and not frame.empty and column in frame and frame[column].notna().any() \
        and not _join(frame, trials).empty


REPORT_PLOTS: dict[str, tuple[str, str, Callable[[pd.DataFrame, pd.DataFrame, str], str]]] = {
    # file: (stored table, column that must hold values, figure)
    "effective_limit.png": ("curves", "effective_sparsity", effective_along_curve),
    "weight_scaling.png": ("scaling", "predicted_removed_frac", weight_scaling),
    "weight_histograms.png": ("weights", "count", weight_histograms),
    "hessian_row_norms.png": ("hessian_rows", "row_l1", hessian_row_norms),
    "limit_rounds.png": ("rounds", "predicted_removed_frac", limit_rounds),
}


def plot_report(frames: dict[str, pd.DataFrame], out: str) -> list[str]:
    """Every figure of the report the frames support, into `out`: per model/data set the accuracy
    and test-loss curves and the crossing plot, then the `REPORT_PLOTS`."""
    trials, curves = frames["trials"], frames.get("curves")
    written = []
    limits = ok_rows(trials, kind="limit")
    for (model, dataset), g in limits.groupby(GROUP, sort=True):
        subset = trials[trials["cell_id"].isin(g["cell_id"])]
        tag = f"{model}_{dataset}".replace("/", "-")
        if plots._has_limit_curves({"trials": subset, "curves": curves}, "test_acc"):
            written.append(plots.accuracy_vs_sparsity(curves, subset, os.path.join(out, f"curves_{tag}.png")))
        if plots._has_limit_curves({"trials": subset, "curves": curves}, "g_of_r"):
            written.append(plots.limit_crossing(curves, subset, os.path.join(out, f"crossing_{tag}.png")))
    for file, (table, column, draw) in REPORT_PLOTS.items():
        if _has(frames.get(table), trials, column):
            written.append(draw(frames[table], trials, os.path.join(out, file)))
    return written
