"""Every analysis of *How Sparse Can We Prune* from what the limit cells store, as tables (pure
functions of the loaded frames) and one command that writes them with their figures.

    prunetune limit-report SWEEP [--storage ROOT] [--out DIR]

Tables (tidy frames; `sections` shows them):
1. `limit` / `limit_summary`: predicted vs actual limit per seed and over seeds (`analysis.tables`);
2. `limit_effective` (ours): the same limits restated as effective removed fractions: global
   magnitude pruning disconnects weights at high sparsity, which count as removed too;
3. `scaling`: the predicted limit for the trained weights × 1…5 with the Hessian spectrum held
   fixed (the paper's weight-magnitude experiment, factor 1 = the prediction);
4. `weight_tv`: the total-variation distance between the log10|w| histograms of different seeds;
5. `hessian_rows`: per cell, how the exact Hessian rows' L1 norms follow |w| (Spearman ρ);
6. `rounds`: iterative pruning, the predicted and actual limits of each round.
Figures (`analysis.limit_plots`): the accuracy and test-loss curves with the limit lines (one file
per model/data set), the crossing s = G(R(s)), the effective sparsity along the curve, the scaling,
the weight histograms, the sorted Hessian row norms and the rounds. `analysis.output.write_limit_report`
writes both.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from analysis import tables as T
from analysis.tables import GROUP, Section, fmt_frac, fmt_mean_std, fmt_pp, ok_rows

ALL_LAYERS = "(all)"  # pruning.limit_analyses.ALL_LAYERS (analysis imports no torch)
REPORT_TABLES = ("trials", "curves", "weights", "scaling", "hessian_rows", "rounds")
ID = ["model", "dataset", "seed"]


def _limit_ids(trials: pd.DataFrame) -> pd.DataFrame:
    """cell_id, sweep, model, dataset, seed of the finished limit cells."""
    columns = [c for c in ("cell_id", "sweep", *ID) if c in trials.columns]
    return ok_rows(trials, kind="limit", columns=columns)


def _join(frame: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Rows of a per-cell table for finished limit cells, with model, dataset and seed."""
    ids = _limit_ids(trials)
    if frame is None or frame.empty:
        return pd.DataFrame(columns=["cell_id", *ID])
    on = ["cell_id", "sweep"] if "sweep" in frame.columns and "sweep" in ids.columns \
        and frame["sweep"].notna().all() else ["cell_id"]
    extra = [c for c in ids.columns if c not in on and c in frame.columns]
    return frame.drop(columns=extra).merge(ids, on=on, how="inner")


# ----------------------------------------------------------------------------- 2. effective terms

EFFECTIVE_PAIRS = (("predicted_removed_frac", "predicted_effective_removed_frac"),
                   ("actual_removed_frac_strict", "actual_effective_removed_frac_strict"),
                   ("actual_removed_frac_tol", "actual_effective_removed_frac_tol"),
                   ("actual_removed_frac_loss", "actual_effective_removed_frac_loss"))


def limit_effective_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per limit cell: each limit as a direct and as an effective removed fraction, and
    disconnected_pp_* = 100·(effective − direct): the share of the weights that the mask at that
    limit leaves without an input→output path (they compute nothing, so they are removed too).
    delta_effective_pp_* = 100·(actual − predicted) in effective terms."""
    columns = [c for pair in EFFECTIVE_PAIRS for c in pair]
    T._require(trials, [*GROUP, "seed", *columns], "trials")
    out = ok_rows(trials, kind="limit", columns=T._with_sweep([*GROUP, "seed", *columns], trials)).copy()
    for direct, effective in EFFECTIVE_PAIRS:
        name = direct.replace("_removed_frac", "")
        out[f"disconnected_pp_{name}"] = 100.0 * (out[effective].astype(float) - out[direct].astype(float))
    for rule in T.LIMIT_RULES:
        out[f"delta_effective_pp_{rule}"] = 100.0 * (out[f"actual_effective_removed_frac_{rule}"].astype(float)
                                                     - out["predicted_effective_removed_frac"].astype(float))
    return out.sort_values([*GROUP, "seed"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- 3. scaling


def scaling_table(scaling: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1) and seed count of the predicted removed fraction per model/data set and
    weight factor (the spectrum held fixed)."""
    rows = _join(scaling, trials)
    columns = [*GROUP, "factor", "mean", "std", "n_seeds"]
    if rows.empty:
        return T._empty(columns)
    stats = []
    for (model, dataset, factor), g in rows.groupby([*GROUP, "factor"], sort=True):
        mean, std, n = T._mean_std(g["predicted_removed_frac"].to_numpy(float))
        stats.append([model, dataset, float(factor), mean, std, n])
    return pd.DataFrame(stats, columns=columns)


# ----------------------------------------------------------------------------- 4. weight distributions


def tv_distance(a: Mapping[int, float], b: Mapping[int, float]) -> float:
    """Total-variation distance ½ Σ_bins |p − q| of two histograms given as {bin: count}; each is
    normalized by its own total first (bins absent from one count 0 there)."""
    na, nb = float(sum(a.values())), float(sum(b.values()))
    if na <= 0 or nb <= 0:
        raise ValueError("histograms: each needs a positive total count")
    return 0.5 * sum(abs(a.get(k, 0) / na - b.get(k, 0) / nb) for k in set(a) | set(b))


def _config_key(trials: pd.DataFrame) -> pd.Series:
    """The resolved config without its seed: cells that differ only by seed share it."""
    def key(text: object) -> str:
        if not isinstance(text, str) or not text:
            return ""
        config = json.loads(text)
        config.pop("seed", None)
        return json.dumps(config, sort_keys=True)

    if "config" not in trials.columns:
        return pd.Series([""] * len(trials), index=trials.index)
    return trials["config"].map(key)


def weight_tv_table(weights: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """TV distance between the trained weight histograms of every pair of seeds of the same
    configuration, per layer and over all layers ("(all)"). Columns: model, dataset, layer,
    seed_a, seed_b, tv."""
    columns = [*GROUP, "layer", "seed_a", "seed_b", "tv"]
    limits = ok_rows(trials, kind="limit")
    if weights is None or weights.empty or limits.empty:
        return T._empty(columns)
    keys = limits.assign(config_key=_config_key(limits))[["cell_id", *ID, "config_key"]]
    rows = weights.merge(keys, on="cell_id", how="inner")
    out = []
    for (model, dataset, _, layer), g in rows.groupby([*GROUP, "config_key", "layer"], sort=True):
        hists = {int(seed): dict(zip(h["bin"].astype(int), h["count"].astype(float)))
                 for seed, h in g.groupby("seed", sort=True)}
        for sa, sb in itertools.combinations(sorted(hists), 2):
            out.append([model, dataset, layer, sa, sb, tv_distance(hists[sa], hists[sb])])
    frame = pd.DataFrame(out, columns=columns)
    order = frame["layer"].ne(ALL_LAYERS)  # the overall histogram first in each model
    return frame.assign(_o=order).sort_values([*GROUP, "_o", "layer", "seed_a", "seed_b"], kind="stable") \
        .drop(columns="_o").reset_index(drop=True)


# ----------------------------------------------------------------------------- 5. Hessian rows


def hessian_rows_table(rows: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Per limit cell: how many rows were formed, how many are exactly zero, the Spearman rank
    correlation of |w| and the row L1 norm, and the median row L1 norm of the lower and upper
    halves of the |w| quantiles (the appendix's point: small weights sit in flat directions)."""
    columns = [*ID, "n_rows", "n_zero_rows", "spearman_abs_weight_row_l1", "row_l1_median_low_half",
               "row_l1_median_high_half"]
    joined = _join(rows, trials)
    if joined.empty:
        return T._empty(columns)
    out = []
    for (model, dataset, seed, _), g in joined.groupby([*ID, "cell_id"], sort=True):
        low, high = g[g["quantile"] < 0.5]["row_l1"], g[g["quantile"] >= 0.5]["row_l1"]
        rho = g["abs_weight"].rank().corr(g["row_l1"].rank()) if len(g) > 1 else np.nan
        out.append([model, dataset, seed, len(g), int((g["row_l1"] == 0).sum()), rho,
                    low.median() if len(low) else np.nan, high.median() if len(high) else np.nan])
    return pd.DataFrame(out, columns=columns)


# ----------------------------------------------------------------------------- 6. rounds


def rounds_table(rounds: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Every round of every limit cell with its model, data set and seed; delta_removed_pp_* =
    100·(actual − predicted) of that round."""
    joined = _join(rounds, trials)
    if joined.empty:
        return T._empty([*ID, "round"])
    for rule in T.LIMIT_RULES:
        joined[f"delta_removed_pp_{rule}"] = 100.0 * (joined[f"actual_removed_frac_{rule}"].astype(float)
                                                      - joined["predicted_removed_frac"].astype(float))
    keep = [*ID, "round", "status", "removed_frac_before", "dense_test_acc", "predicted_removed_frac",
            "actual_removed_frac_strict", "actual_removed_frac_tol", "actual_removed_frac_loss",
            "delta_removed_pp_strict", "delta_removed_pp_tol", "delta_removed_pp_loss", "predicted_unresolved",
            "slq_iterations", "epsilon", "zero_mass"]
    return joined[keep].sort_values([*ID, "round"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- display


def _frame(tidy: pd.DataFrame, formats: Mapping[str, Callable[[object], str] | None]) -> pd.DataFrame:
    return pd.DataFrame({c: T._text(tidy[c], f) for c, f in formats.items() if c in tidy.columns})


def _seed(v: object) -> str:
    return "" if pd.isna(v) else str(int(v))


def _mean_std_sections(tidy: pd.DataFrame, value_columns: list[str], fmt: Callable[[float], str],
                       title: str) -> list[Section]:
    rows = []
    for key, g in tidy.groupby(GROUP, sort=True):
        row = [*key, str(len(g))]
        for c in value_columns:
            mean, std, _ = T._mean_std(g[c].to_numpy(float))
            row.append(fmt_mean_std(mean, std, fmt))
        rows.append(row)
    return [Section(title, pd.DataFrame(rows, columns=[*GROUP, "n_seeds", *value_columns]))] if rows else []


def effective_sections(tidy: pd.DataFrame) -> list[Section]:
    if tidy.empty:
        return []
    per_seed = _frame(tidy, {"model": None, "dataset": None, "seed": _seed,
                             **{c: fmt_frac for pair in EFFECTIVE_PAIRS for c in pair},
                             "disconnected_pp_predicted": fmt_pp, "delta_effective_pp_tol": fmt_pp})
    summary = _mean_std_sections(tidy, ["predicted_effective_removed_frac", "actual_effective_removed_frac_tol"],
                                 fmt_frac, "limits in effective terms over seeds (mean ± std)")
    return [Section("limits as direct and effective removed fractions (ours: disconnected weights count "
                    "as removed)", per_seed), *summary]


def scaling_sections(tidy: pd.DataFrame) -> list[Section]:
    if tidy.empty:
        return []
    tidy = tidy.assign(cell=[fmt_mean_std(m, s) for m, s in zip(tidy["mean"], tidy["std"])])
    out = []
    for key, g in tidy.groupby(GROUP, sort=True):
        row = {"model": key[0], "dataset": key[1], "n_seeds": str(int(g["n_seeds"].max()))}
        row.update({f"factor={T.fmt_level(f)}": c for f, c in zip(g["factor"], g["cell"])})
        out.append(row)
    return [Section("predicted removed fraction for the trained weights × factor (Hessian spectrum held "
                    "fixed)", pd.DataFrame(out).fillna(""))]


def tv_sections(tidy: pd.DataFrame) -> list[Section]:
    if tidy.empty:
        return []
    overall = tidy[tidy["layer"] == ALL_LAYERS]
    pairs = _frame(overall, {"model": None, "dataset": None, "seed_a": _seed, "seed_b": _seed,
                             "tv": lambda v: f"{float(v):.4f}"})
    per_layer = tidy.groupby([*GROUP, "layer"], sort=False)["tv"].agg(["mean", "max", "count"]).reset_index()
    layers = pd.DataFrame({"model": per_layer["model"], "dataset": per_layer["dataset"], "layer": per_layer["layer"],
                           "pairs": per_layer["count"].astype(str),
                           "tv_mean": per_layer["mean"].map(lambda v: f"{v:.4f}"),
                           "tv_max": per_layer["max"].map(lambda v: f"{v:.4f}")})
    return [Section("total-variation distance between the seeds' log10|w| histograms (all layers)", pairs),
            Section("total-variation distance per layer (mean and max over seed pairs)", layers)]


def hessian_rows_sections(tidy: pd.DataFrame) -> list[Section]:
    if tidy.empty:
        return []
    general = lambda v: "" if pd.isna(v) else f"{float(v):.3g}"  # noqa: E731
    return [Section("exact Hessian rows at |w| quantiles: L1 norms against |w|", _frame(tidy, {
        "model": None, "dataset": None, "seed": _seed, "n_rows": None, "n_zero_rows": None,
        "spearman_abs_weight_row_l1": general, "row_l1_median_low_half": general,
        "row_l1_median_high_half": general}))]


def rounds_sections(tidy: pd.DataFrame) -> list[Section]:
    if tidy.empty:
        return []
    return [Section("iterative pruning: predicted and actual limit per round (fractions of all prunable "
                    "weights)", _frame(tidy, {
                        "model": None, "dataset": None, "seed": _seed, "round": _seed, "status": None,
                        "removed_frac_before": fmt_frac, "dense_test_acc": fmt_frac,
                        "predicted_removed_frac": fmt_frac, "actual_removed_frac_strict": fmt_frac,
                        "actual_removed_frac_tol": fmt_frac, "actual_removed_frac_loss": fmt_frac,
                        "delta_removed_pp_tol": fmt_pp, "delta_removed_pp_loss": fmt_pp,
                        "slq_iterations": _seed, "predicted_unresolved": T._yes_no}))]


def build(frames: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every tidy table of the report from the loaded frames (REPORT_TABLES)."""
    trials = frames["trials"]
    get = lambda name: frames.get(name)  # noqa: E731
    return {**T.build("limit", {"trials": trials}),
            "limit_effective": limit_effective_table(trials),
            "scaling": scaling_table(get("scaling"), trials),
            "weight_tv": weight_tv_table(get("weights"), trials),
            "hessian_rows": hessian_rows_table(get("hessian_rows"), trials),
            "rounds": rounds_table(get("rounds"), trials)}


def sections(tidy: Mapping[str, pd.DataFrame]) -> list[Section]:
    return [*T.limit_sections(tidy["limit"], tidy["limit_summary"], wide=True),
            *effective_sections(tidy["limit_effective"]),
            *scaling_sections(tidy["scaling"]), *tv_sections(tidy["weight_tv"]),
            *hessian_rows_sections(tidy["hessian_rows"]), *rounds_sections(tidy["rounds"])]
