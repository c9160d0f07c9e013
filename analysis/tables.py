"""The comparison tables of the two papers, as pure functions of the `trials` (and `curves`) frames.

Every builder returns tidy DataFrames whose column names are the Parquet columns they come from (a
user-facing name is the same everywhere); `sections` turns them into display frames of strings and
`render` writes Markdown, CSV or LaTeX.

1. `accuracy_at_compression`: test accuracy of each pruner at matched compression levels, once at
   matched `direct_compression` and once at matched `effective_compression`. Pruners reach different
   compressions for the same requested sparsity (and effective compression can be far above
   direct), so each seed's accuracy is interpolated linearly in log10(compression) between its
   measured points, never extrapolated: a level outside a seed's measured range gets no value from
   that seed, and a cell with no seed in range stays blank (NaN).
2. `compression_table`: achieved direct and effective compression per requested sparsity.
3. `limit_table` / `limit_summary`: predicted vs actual pruning limits (kind == "limit").
4. `lomp_table`: LOMP against its baselines (Rare Gems, IMP, Smart-Ratio, global magnitude, dense)
   at fixed sparsities.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

DEFAULT_LEVELS: tuple[float, ...] = (10.0, 100.0, 1000.0, 10000.0)
VIEWS: tuple[str, ...] = ("direct_compression", "effective_compression")
GROUP: list[str] = ["model", "dataset"]
ROW: list[str] = ["pruner", "target"]
# the limit paper's comparison (LOMP vs Rare Gems, IMP, Smart-Ratio, dense) and global magnitude
LOMP_PRUNERS: tuple[str, ...] = ("lomp", "rare_gems", "imp", "random/smart_ratio", "magnitude/global", "dense")
DEFAULT_SPARSITIES: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
ACC_SCALE = 100.0  # test_acc is stored as a fraction; tables show percent


# ----------------------------------------------------------------------------- selection helpers


def _require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; expected the central trials schema")


def ok_rows(trials: pd.DataFrame, kind: str = "point", columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows of finished cells (status == "ok") of one kind; a null kind counts as "point".

    `columns` selects before copying: a store's trials carry ~60 columns, a table needs a few.
    """
    _require(trials, ["status", "kind"], "trials")
    kinds = trials["kind"].to_numpy(dtype=object)
    is_kind = np.where(pd.isna(kinds), "point", kinds) == kind
    mask = (trials["status"].to_numpy(dtype=object) == "ok") & is_kind
    return trials.loc[mask, list(columns)] if columns is not None else trials.loc[mask]


def _with_sweep(columns: Sequence[str], trials: pd.DataFrame) -> list[str]:
    return [*columns, "sweep"] if "sweep" in trials.columns and "sweep" not in columns else list(columns)


def replicate_ids(df: pd.DataFrame) -> np.ndarray:
    """One id per replicate: a seed *of one sweep*, since pooled sweeps may reuse seed numbers."""
    keys = [c for c in ("sweep", "seed") if c in df.columns]
    return df.groupby(keys, dropna=False, sort=False).ngroup().to_numpy()


def _seeds_per_group(trials: pd.DataFrame) -> pd.DataFrame:
    """Replicates per model/dataset over *all* cells, failed ones included: the denominator that
    exposes missing seeds."""
    counted = trials[GROUP].assign(seeds_total=replicate_ids(trials))
    return counted.groupby(GROUP, dropna=False)["seeds_total"].nunique().reset_index()


# ----------------------------------------------------------------------------- interpolation


def interpolate(x: np.ndarray, y: np.ndarray, at: np.ndarray) -> np.ndarray:
    """y linearly interpolated at `at`, NaN outside [min x, max x]: never extrapolates.

    Non-finite points (an `inf` compression of a disconnected net, a NaN accuracy) are no support;
    repeated x values are averaged first so the curve is a function.
    """
    x, y, at = (np.asarray(v, dtype=float) for v in (x, y, at))
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out = np.full(at.shape, np.nan)
    if x.size == 0:
        return out
    ux, inverse = np.unique(x, return_inverse=True)
    uy = np.bincount(inverse, weights=y) / np.bincount(inverse)
    inside = np.isfinite(at) & (at >= ux[0]) & (at <= ux[-1])
    out[inside] = np.interp(at[inside], ux, uy)
    return out


def _mean_std(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1; NaN for one value) and count of the finite values."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)


RANK_DECIMALS = 4  # ranks compare accuracies as displayed (0.01 percentage points)


def _rank(df: pd.DataFrame, by: list[str], value: str = "mean") -> pd.Series:
    """1 = highest value within each group of `by`; ties share the best rank; NaN stays unranked.

    Values are rounded to the displayed precision first, so two cells that read the same never get
    different ranks from a difference nobody can see.
    """
    rounded = df[value].astype(float).round(RANK_DECIMALS)
    return rounded.groupby([df[c] for c in by], dropna=False).rank(method="min", ascending=False).astype("Int64")


def _matched(points: pd.DataFrame, keys: list[str], x: str, levels: Sequence[float],
             transform: Callable[[np.ndarray], np.ndarray]) -> pd.DataFrame:
    """Per `keys` group and level: mean/std/n over replicates of each one's interpolated test_acc.

    One sort, then one small numpy interpolation per (group, seed) run: pandas' per-group overhead
    would dominate on sweeps of 10^5 cells.
    """
    columns = [*keys, "level", "mean", "std", "n_seeds"]
    if points.empty:
        return _empty(columns)
    at = transform(np.asarray(levels, dtype=float))
    gid = points.groupby(keys, dropna=False, sort=True).ngroup().to_numpy()
    sid = replicate_ids(points)
    order = np.lexsort((sid, gid))
    xs = transform(points[x].to_numpy(float))[order]
    ys = points["test_acc"].to_numpy(float)[order]
    g, s = gid[order], sid[order]
    starts = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1])])
    ends = np.r_[starts[1:], len(g)]
    per_run = np.vstack([interpolate(xs[a:b], ys[a:b], at) for a, b in zip(starts, ends)])  # (runs, levels)
    long = pd.DataFrame({"gid": np.repeat(g[starts], len(at)), "level": np.tile(np.asarray(levels, float), len(starts)),
                         "value": per_run.ravel()})
    stats = long.groupby(["gid", "level"], sort=True)["value"].agg(["mean", "std", "count"]).reset_index()
    first = np.unique(gid, return_index=True)[1]
    names = points.iloc[first][keys].reset_index(drop=True).assign(gid=gid[first])
    out = names.merge(stats, on="gid").drop(columns="gid").rename(columns={"count": "n_seeds"})
    out["n_seeds"] = out["n_seeds"].astype(int)
    return out[columns]


def _log10(v: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(v)


# ----------------------------------------------------------------------------- 1. accuracy


def accuracy_at_compression(trials: pd.DataFrame, levels: Sequence[float] = DEFAULT_LEVELS) -> pd.DataFrame:
    """Test accuracy at matched compression, in both views (tidy).

    Columns: model, dataset, pruner, target, view ("direct_compression" | "effective_compression"),
    level (the compression), mean, std (over seeds, ddof=1), n_seeds (seeds with support),
    seeds_total (distinct seeds of the model/dataset over all cells, failed ones included), rank
    (1 = best mean within model/dataset/view/level). Only status == "ok" point cells count.
    """
    _require(trials, [*GROUP, *ROW, "seed", "test_acc", *VIEWS], "trials")
    _check_levels(levels, "levels", low=1.0)
    points = ok_rows(trials, columns=_with_sweep([*GROUP, *ROW, "seed", "test_acc", *VIEWS], trials))
    frames = []
    for view in VIEWS:
        got = _matched(points, [*GROUP, *ROW], view, levels, _log10)
        got.insert(len(GROUP) + len(ROW), "view", view)
        frames.append(got)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if out.empty:
        return _empty([*GROUP, *ROW, "view", "level", "mean", "std", "n_seeds", "seeds_total", "rank"])
    out = out.merge(_seeds_per_group(trials), on=GROUP, how="left")
    out["rank"] = _rank(out, [*GROUP, "view", "level"])
    return out


def auto_levels(trials: pd.DataFrame) -> list[float]:
    """Levels a sweep can support: its requested compressions 1/(1 − sparsity), plus the default
    decades inside its measured direct-compression range (the defaults alone leave a small sweep
    blank)."""
    points = ok_rows(trials, columns=["sparsity", "direct_compression"])
    s = points["sparsity"].to_numpy(float)
    s = s[np.isfinite(s) & (s > 0) & (s < 1)]
    requested = {float(f"{1.0 / (1.0 - v):.4g}") for v in s}
    dc = points["direct_compression"].to_numpy(float)
    dc = dc[np.isfinite(dc) & (dc > 1)]
    decades = {v for v in DEFAULT_LEVELS if dc.size and dc.min() <= v <= dc.max()}
    return sorted(requested | decades) or list(DEFAULT_LEVELS)


def _check_levels(levels: Sequence[float], field: str, low: float, high: float = math.inf) -> None:
    if len(levels) == 0:
        raise ValueError(f"{field}: empty; give at least one value")
    for v in levels:
        if not (isinstance(v, (int, float)) and low <= float(v) <= high) or math.isnan(float(v)):
            raise ValueError(f"{field}: {v!r} not allowed; values must be numbers in [{low:g}, {high:g}]")


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


# ----------------------------------------------------------------------------- 2. compression


def compression_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Achieved direct and effective compression per model/dataset/pruner/target/requested sparsity.

    Median and min–max over the seeds of status == "ok" point cells; `inf` (a disconnected net) is
    kept as inf and counted in n_disconnected.
    """
    _require(trials, [*GROUP, *ROW, "sparsity", "seed", *VIEWS], "trials")
    keys = [*GROUP, *ROW, "sparsity"]
    points = ok_rows(trials, columns=_with_sweep([*keys, "seed", *VIEWS], trials))
    points = points.assign(n_disconnected=np.isposinf(points["effective_compression"].to_numpy(float)),
                           replicate=replicate_ids(points))
    spec = {"n_seeds": ("replicate", "nunique")}
    for view in VIEWS:
        spec.update({f"{view}_{stat}": (view, stat) for stat in ("median", "min", "max")})
    spec["n_disconnected"] = ("n_disconnected", "sum")
    out = points.groupby(keys, dropna=False, sort=True).agg(**spec).reset_index()
    return out.astype({"n_seeds": int, "n_disconnected": int})


# ----------------------------------------------------------------------------- 3. pruning limit

LIMIT_KEYS: list[str] = [*GROUP, "pruner", "lomp_l1", "eigen_policy", "epsilon_source"]
# What the limit table reads; each kept_frac column is 1 − its removed_frac column (stored both, as
# every limit row is, but derived here rather than read).
LIMIT_COLUMNS: list[str] = [
    "epsilon", "zero_mass",
    "predicted_removed_frac", "band_kept_frac_low", "band_kept_frac_high",
    "trace_bound_removed_frac", "predicted_removed_frac_radau_rule",
    "predicted_removed_frac_authors", "predicted_removed_frac_spread", "predicted_removed_frac_se",
    "predicted_unresolved", "predicted_note", "slq_iterations", "slq_max_iterations",
    "actual_removed_frac_strict", "actual_removed_frac_tol", "actual_removed_frac_loss", "limit_tolerance_pp",
]
LIMIT_RULES: tuple[str, ...] = ("strict", "tol", "loss")  # pruning.limit.LIMIT_RULES (analysis has no torch)
LIMIT_DERIVED: list[str] = ["predicted_kept_frac", *(f"actual_kept_frac_{r}" for r in LIMIT_RULES),
                            *(f"delta_removed_pp_{r}" for r in LIMIT_RULES), *(f"in_band_{r}" for r in LIMIT_RULES)]


def limit_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per model/dataset/seed: the predicted limit (ours and the authors' estimator), how far it is
    resolved, its bands, and the actual limit under every rule (strict, tol, loss).

    delta_removed_pp_* = 100 · (actual_removed_frac_* − predicted_removed_frac): percentage points
    of removed fraction by which the real network went further (+) or less far (−) than predicted.
    in_band_* tells whether the actual kept fraction lies in the kinematic band (our derivation).
    Rows of older files lack the newer columns (loss rule, authors' estimate, spread): blank there.
    """
    _require(trials, [*LIMIT_KEYS, "seed", *LIMIT_COLUMNS], "trials")
    out = ok_rows(trials, kind="limit", columns=_with_sweep([*LIMIT_KEYS, "seed", *LIMIT_COLUMNS], trials)).copy()
    out["predicted_kept_frac"] = 1.0 - out["predicted_removed_frac"].astype(float)
    for rule in LIMIT_RULES:
        out[f"actual_kept_frac_{rule}"] = 1.0 - out[f"actual_removed_frac_{rule}"].astype(float)
        out[f"delta_removed_pp_{rule}"] = 100.0 * (out[f"actual_removed_frac_{rule}"].astype(float)
                                                  - out["predicted_removed_frac"].astype(float))
        kept = out[f"actual_kept_frac_{rule}"].astype(float)
        inside = (kept >= out["band_kept_frac_low"].astype(float)) & (kept <= out["band_kept_frac_high"].astype(float))
        out[f"in_band_{rule}"] = inside.where(kept.notna() & out["band_kept_frac_low"].notna(), pd.NA).astype("boolean")
    return out.sort_values([*GROUP, "seed"], kind="stable", na_position="last").reset_index(drop=True)


LIMIT_SUMMARY_COLUMNS: list[str] = [
    "predicted_removed_frac", "predicted_kept_frac", "band_kept_frac_low", "band_kept_frac_high",
    "trace_bound_removed_frac", "predicted_removed_frac_authors", "actual_removed_frac_strict",
    "actual_removed_frac_tol", "actual_removed_frac_loss", "delta_removed_pp_strict", "delta_removed_pp_tol",
    "delta_removed_pp_loss", "epsilon", "zero_mass", "slq_iterations",
]


def limit_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof=1) over seeds of `limit_table`'s numbers, per model/dataset/configuration,
    and how many of the seeds' predictions are flagged unresolved (`n_unresolved`)."""
    rows = []
    for key, g in per_seed.groupby(LIMIT_KEYS, dropna=False, sort=True):
        flags = g["predicted_unresolved"]
        row = list(key) + [int(len(np.unique(replicate_ids(g)))), int(flags.fillna(False).astype(bool).sum())]
        for c in LIMIT_SUMMARY_COLUMNS:
            mean, std, _ = _mean_std(g[c].to_numpy(float))
            row += [mean, std]
        rows.append(row)
    stats = [f"{c}_{s}" for c in LIMIT_SUMMARY_COLUMNS for s in ("mean", "std")]
    return pd.DataFrame(rows, columns=[*LIMIT_KEYS, "n_seeds", "n_unresolved", *stats])


# ----------------------------------------------------------------------------- 4. LOMP vs baselines


POINT_COLUMNS: list[str] = [*GROUP, "pruner", "sweep", "seed", "sparsity", "test_acc"]


def _sparsity_points(trials: pd.DataFrame, curves: pd.DataFrame | None, pruners: Sequence[str]) -> pd.DataFrame:
    """(model, dataset, pruner, sweep, seed, sparsity, test_acc) from point cells and limit curves.

    Point cells give their requested `sparsity` (direct target only; dense counts as sparsity 0); a
    limit cell's accuracy-vs-sparsity curve (one-shot global magnitude pruning of the LOMP model,
    no fine-tuning) gives one point per `removed_frac`.
    """
    trials = trials if "sweep" in trials.columns else trials.assign(sweep=None)
    points = ok_rows(trials, columns=[*GROUP, *ROW, "sweep", "sparsity", "seed", "test_acc"])
    points = points[points["pruner"].isin(pruners)]
    targets = points["target"].astype(object).where(points["target"].notna(), "direct")
    points = points[targets == "direct"]
    dense = (points["pruner"] == "dense").to_numpy()
    points = points.assign(sparsity=points["sparsity"].astype(float).where(~(dense & points["sparsity"].isna()), 0.0))
    parts = [points[POINT_COLUMNS]]
    if curves is not None and not curves.empty:
        limits = ok_rows(trials, kind="limit", columns=["cell_id", *GROUP, "pruner", "sweep", "seed"])
        limits = limits[limits["pruner"].isin(pruners)]
        on = ["cell_id", "sweep"] if "sweep" in curves.columns and curves["sweep"].notna().all() else ["cell_id"]
        joined = curves[[*on, "removed_frac", "test_acc"]].merge(limits, on=on, how="inner")
        parts.append(joined.rename(columns={"removed_frac": "sparsity"})[POINT_COLUMNS])
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else _empty(POINT_COLUMNS)


def lomp_table(trials: pd.DataFrame, curves: pd.DataFrame | None = None,
               sparsities: Sequence[float] | None = None,
               pruners: Sequence[str] = LOMP_PRUNERS) -> pd.DataFrame:
    """Test accuracy of LOMP and its baselines at fixed sparsities (tidy).

    Default sparsities: the requested sparsities of the point cells of these pruners, else
    DEFAULT_SPARSITIES. Between measured sparsities a seed's accuracy is interpolated linearly,
    never extrapolated. Columns: model, dataset, pruner, sparsity, mean, std, n_seeds, rank.
    """
    _require(trials, [*GROUP, *ROW, "sparsity", "seed", "test_acc", "cell_id"], "trials")
    points = _sparsity_points(trials, curves, pruners)
    if sparsities is None:
        from_cells = ok_rows(trials, columns=["pruner", "sparsity"])
        from_cells = from_cells[from_cells["pruner"].isin(pruners)]["sparsity"].dropna().unique()
        sparsities = sorted(set(float(s) for s in from_cells)) or list(DEFAULT_SPARSITIES)
        if (points["pruner"] == "dense").any() and 0.0 not in sparsities:
            sparsities = [0.0, *sparsities]
    _check_levels(sparsities, "sparsities", low=0.0, high=1.0)
    if points.empty:
        return _empty([*GROUP, "pruner", "sparsity", "mean", "std", "n_seeds", "rank"])
    out = _matched(points, [*GROUP, "pruner"], "sparsity", sparsities, lambda v: v)
    out = out.rename(columns={"level": "sparsity"})
    order = {p: i for i, p in enumerate(pruners)}
    out = out.sort_values([*GROUP, "pruner", "sparsity"], key=lambda s: s.map(order) if s.name == "pruner" else s,
                          kind="stable").reset_index(drop=True)
    out["rank"] = _rank(out, [*GROUP, "sparsity"])
    return out


# ----------------------------------------------------------------------------- display


def fmt_acc(mean: float, std: float, n: int | None = None, total: int | None = None) -> str:
    """'97.12 ± 0.30' in percent; blank without support; the seed count when seeds are missing."""
    if mean is None or not np.isfinite(mean):
        return ""
    text = f"{ACC_SCALE * mean:.2f}"
    if std is not None and np.isfinite(std):
        text += f" ± {ACC_SCALE * std:.2f}"
    if n is not None and total is not None and 0 < n < total:
        text += f" (n={n}/{total})"
    return text


def fmt_compression(x: float) -> str:
    """Compression as people read it: '∞' for a disconnected net, thousands separators above 1000."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if math.isinf(x):
        return "∞"
    return f"{x:.3g}" if x < 1000 else f"{x:,.0f}"


def fmt_frac(x: float) -> str:
    return "" if x is None or pd.isna(x) else f"{float(x):.4f}"


def fmt_pp(x: float) -> str:
    return "" if x is None or pd.isna(x) else f"{float(x):+.2f}"


def fmt_level(x: float) -> str:
    return f"{x:g}"


def fmt_mean_std(mean: float, std: float, fmt: Callable[[float], str] = fmt_frac) -> str:
    if mean is None or pd.isna(mean):
        return ""
    return fmt(mean) + ("" if std is None or pd.isna(std) else f" ± {fmt(std).lstrip('+')}")


@dataclass(frozen=True)
class Section:
    """One display table: a title and a frame of strings."""

    title: str
    frame: pd.DataFrame


def _pivot_sections(tidy: pd.DataFrame, title: Callable[[tuple], str], split: list[str], rows: list[str],
                    column: str, cell: Callable[[pd.Series], str]) -> list[Section]:
    """Long → wide: one section per `split` key, rows in order of appearance, one column per level."""
    sections = []
    for key, g in tidy.groupby(split, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        levels = list(dict.fromkeys(g[column]))
        cells: dict[tuple, dict[float, str]] = {}
        for (_, r), text in zip(g.iterrows(), g.apply(cell, axis=1)):
            cells.setdefault(tuple(str(r[c]) for c in rows), {})[r[column]] = text
        body = [[*k, *(v.get(level, "") for level in levels)] for k, v in cells.items()]
        header = [*rows, *(f"{column}={fmt_level(level)}" for level in levels)]
        sections.append(Section(title(key), pd.DataFrame(body, columns=header)))
    return sections


def _acc_cell(r: pd.Series) -> str:
    text = fmt_acc(r["mean"], r["std"], r["n_seeds"], r.get("seeds_total"))
    return f"{text} [{int(r['rank'])}]" if text and not pd.isna(r["rank"]) else text


# Pruners we run beside the effective-sparsity paper's 15 (shown "(extra)" in its display tables;
# the tidy frames and the store keep the registry name)
EXTRA_PRUNERS: tuple[str, ...] = ("grasp",)


def pruner_label(name: object) -> str:
    return f"{name} (extra)" if name in EXTRA_PRUNERS else str(name)


def accuracy_sections(tidy: pd.DataFrame) -> list[Section]:
    """One table per model/dataset and view: rows pruner/target, columns compression levels.

    Cells: 'mean ± std [rank]' in percent; '(n=k/K)' when only k of the K seeds support the cell.
    """
    tidy = tidy.assign(target=tidy["target"].astype(object).where(tidy["target"].notna(), ""),
                       pruner=tidy["pruner"].map(pruner_label))
    tidy = tidy.rename(columns={"level": "compression"})
    return _pivot_sections(
        tidy, lambda k: f"test_acc (%) at matched {k[2]} — {k[0]} / {k[1]}  [rank]", [*GROUP, "view"],
        ROW, "compression", _acc_cell)


def compression_sections(tidy: pd.DataFrame) -> list[Section]:
    """Median [min–max] of both compressions per requested sparsity; ∞ with the disconnected count."""
    sections = []
    for key, g in tidy.groupby(GROUP, dropna=False, sort=False):
        frame = pd.DataFrame({
            "pruner": g["pruner"].map(pruner_label), "target": g["target"].astype(object).fillna("").astype(str),
            "sparsity": g["sparsity"].map(fmt_level), "n_seeds": g["n_seeds"].astype(str)})
        for view in VIEWS:
            frame[view] = [_range(m, lo, hi) for m, lo, hi in
                           zip(g[f"{view}_median"], g[f"{view}_min"], g[f"{view}_max"])]
        frame["n_disconnected"] = g["n_disconnected"].astype(str)
        sections.append(Section(f"direct vs effective compression (median [min–max]) — {key[0]} / {key[1]}",
                                frame.reset_index(drop=True)))
    return sections


def _range(median: float, low: float, high: float) -> str:
    if pd.isna(median):
        return ""
    lo, hi = fmt_compression(low), fmt_compression(high)
    return fmt_compression(median) if lo == hi else f"{fmt_compression(median)} [{lo}–{hi}]"


def _text(series: pd.Series, fmt: Callable[[float], str] | None = None) -> list[str]:
    if fmt is None:
        return ["" if pd.isna(v) else str(v) for v in series]
    return [fmt(v) for v in series]


def _general(v: float) -> str:
    return "" if pd.isna(v) else f"{float(v):.3g}"


def _yes_no(v: object) -> str:
    return "" if pd.isna(v) else ("yes" if v else "no")


def _count(v: object) -> str:
    return "" if pd.isna(v) else str(int(v))


# What a reader decides from (shown by default): the prediction, the authors' estimate of it, the
# actual limit under each rule, the differences, the Lanczos depth and whether s* is resolved.
LIMIT_SEED_DISPLAY: list[tuple[str, Callable[[float], str] | None]] = [
    ("predicted_removed_frac", fmt_frac), ("predicted_removed_frac_authors", fmt_frac),
    ("actual_removed_frac_strict", fmt_frac), ("actual_removed_frac_tol", fmt_frac),
    ("actual_removed_frac_loss", fmt_frac),
    ("delta_removed_pp_strict", fmt_pp), ("delta_removed_pp_tol", fmt_pp), ("delta_removed_pp_loss", fmt_pp),
    ("slq_iterations", _count), ("predicted_unresolved", _yes_no),
]
# The rest, with --wide: bands and bounds (our derivations), the resolution numbers, ε and the rules.
LIMIT_SEED_WIDE: list[tuple[str, Callable[[float], str] | None]] = [
    ("predicted_kept_frac", fmt_frac), ("band_kept_frac_low", fmt_frac), ("band_kept_frac_high", fmt_frac),
    ("trace_bound_removed_frac", fmt_frac), ("predicted_removed_frac_radau_rule", fmt_frac),
    ("predicted_removed_frac_spread", fmt_frac), ("predicted_removed_frac_se", fmt_frac),
    ("slq_max_iterations", _count), ("actual_kept_frac_strict", fmt_frac), ("actual_kept_frac_tol", fmt_frac),
    ("actual_kept_frac_loss", fmt_frac), ("in_band_strict", _yes_no), ("limit_tolerance_pp", _general),
    ("epsilon", _general), ("epsilon_source", None), ("eigen_policy", None), ("zero_mass", fmt_frac),
    ("predicted_note", None),
]


def limit_sections(per_seed: pd.DataFrame, summary: pd.DataFrame, *, wide: bool = False) -> list[Section]:
    """Per-seed rows, then the mean ± std summary over seeds (headers are the Parquet columns);
    `wide` adds the bands, bounds, resolution numbers and rules (LIMIT_SEED_WIDE)."""
    if per_seed.empty:
        return []
    pooled = "sweep" in per_seed.columns and per_seed["sweep"].nunique(dropna=False) > 1
    ids = [*GROUP, *(["sweep"] if pooled else []), "seed"]
    seed = pd.DataFrame({c: _text(per_seed[c], (lambda v: "" if pd.isna(v) else str(int(v))) if c == "seed" else None)
                         for c in ids})
    for column, fmt in LIMIT_SEED_DISPLAY + (LIMIT_SEED_WIDE if wide else []):
        seed[column] = _text(per_seed[column], fmt)
    summ = pd.DataFrame({c: _text(summary[c], _general if c == "lomp_l1" else None)
                         for c in [*GROUP, "lomp_l1", "eigen_policy", "epsilon_source", "n_seeds", "n_unresolved"]})
    shown = ["predicted_removed_frac", "predicted_removed_frac_authors", "actual_removed_frac_strict",
             "actual_removed_frac_tol", "actual_removed_frac_loss"]
    if wide:
        shown += ["predicted_kept_frac", "trace_bound_removed_frac", "zero_mass", "slq_iterations"]
    for c in shown:
        summ[c] = [fmt_mean_std(m, s) for m, s in zip(summary[f"{c}_mean"], summary[f"{c}_std"])]
    for rule in LIMIT_RULES:
        c = f"delta_removed_pp_{rule}"
        summ[c] = [fmt_mean_std(m, s, fmt_pp) for m, s in zip(summary[f"{c}_mean"], summary[f"{c}_std"])]
    title = "pruning limit per seed" + (" (band and trace bound: our derivations)" if wide else "")
    return [Section(title, seed), Section("pruning limit over seeds (mean ± std)", summ)]


def lomp_sections(tidy: pd.DataFrame) -> list[Section]:
    return _pivot_sections(
        tidy, lambda k: f"test_acc (%) at fixed sparsity — LOMP vs baselines — {k[0]} / {k[1]}  [rank]",
        GROUP, ["pruner"], "sparsity", _acc_cell)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class TableSpec:
    """How to build a table's tidy frames from the loaded tables and show them.

    `needs` maps each stored table the builder reads to the columns it reads: a store's trials
    carry ~60 columns and a table uses a third of them, so reading only those halves a cold read
    of thousands of files (tests check that every builder runs on exactly these columns).
    """

    needs: dict[str, tuple[str, ...]]
    build: Callable[..., dict[str, pd.DataFrame]]
    show: Callable[..., list[Section]]  # (tidy, *, wide) → sections; `wide` adds the rarely read columns


SELECT: tuple[str, ...] = ("status", "kind", "sweep")           # what ok_rows and replicate_ids read
AUTO_LEVEL_COLUMNS: tuple[str, ...] = (*SELECT, "sparsity", "direct_compression")  # auto_levels


def _build_accuracy(frames: dict[str, pd.DataFrame], levels: Sequence[float] | None = None,
                    sparsities: Sequence[float] | None = None) -> dict[str, pd.DataFrame]:
    return {"accuracy": accuracy_at_compression(frames["trials"], levels or DEFAULT_LEVELS)}


def _build_compression(frames: dict[str, pd.DataFrame], **_: object) -> dict[str, pd.DataFrame]:
    return {"compression": compression_table(frames["trials"])}


def _build_limit(frames: dict[str, pd.DataFrame], **_: object) -> dict[str, pd.DataFrame]:
    per_seed = limit_table(frames["trials"])
    return {"limit": per_seed, "limit_summary": limit_summary(per_seed)}


def _build_lomp(frames: dict[str, pd.DataFrame], levels: Sequence[float] | None = None,
                sparsities: Sequence[float] | None = None) -> dict[str, pd.DataFrame]:
    return {"lomp": lomp_table(frames["trials"], frames.get("curves"), sparsities)}


TABLE_SPECS: dict[str, TableSpec] = {
    "accuracy": TableSpec({"trials": (*SELECT, *GROUP, *ROW, "seed", "test_acc", *VIEWS)},
                          _build_accuracy, lambda t, wide=False: accuracy_sections(t["accuracy"])),
    "compression": TableSpec({"trials": (*SELECT, *GROUP, *ROW, "sparsity", "seed", *VIEWS)},
                             _build_compression, lambda t, wide=False: compression_sections(t["compression"])),
    "limit": TableSpec({"trials": (*SELECT, *LIMIT_KEYS, "seed", *LIMIT_COLUMNS)},
                       _build_limit, lambda t, wide=False: limit_sections(t["limit"], t["limit_summary"], wide=wide)),
    "lomp": TableSpec({"trials": (*SELECT, *GROUP, *ROW, "sparsity", "seed", "test_acc", "cell_id"),
                       "curves": ("cell_id", "sweep", "removed_frac", "test_acc")},
                      _build_lomp, lambda t, wide=False: lomp_sections(t["lomp"])),
}


def columns_needed(names: Sequence[str], *, auto_levels: bool = False) -> dict[str, list[str]]:
    """The stored columns that building tables `names` reads, per stored table (a union, in order)."""
    needed: dict[str, dict[str, None]] = {}
    for name in names:
        for table, columns in TABLE_SPECS[name].needs.items():
            needed.setdefault(table, {}).update(dict.fromkeys(columns))
    if auto_levels:
        needed.setdefault("trials", {}).update(dict.fromkeys(AUTO_LEVEL_COLUMNS))
    return {table: list(columns) for table, columns in needed.items()}


def table_names(name: str) -> list[str]:
    """`all` or one registered table name; anything else raises with the choices."""
    if name == "all":
        return list(TABLE_SPECS)
    if name not in TABLE_SPECS:
        raise ValueError(f"table {name!r}: choose from {', '.join([*TABLE_SPECS, 'all'])}")
    return [name]


def build(name: str, frames: dict[str, pd.DataFrame], *, levels: Sequence[float] | None = None,
          sparsities: Sequence[float] | None = None) -> dict[str, pd.DataFrame]:
    """The tidy frames of table `name` from the loaded tables (`trials`, `curves`, ...)."""
    if name not in TABLE_SPECS:
        raise ValueError(f"table {name!r}: choose from {', '.join(TABLE_SPECS)}")
    return TABLE_SPECS[name].build(frames, levels=levels, sparsities=sparsities)


def sections(name: str, tidy: dict[str, pd.DataFrame], *, wide: bool = False) -> list[Section]:
    return TABLE_SPECS[name].show(tidy, wide=wide)


# ----------------------------------------------------------------------------- renderers


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs `tabulate`, which we do not depend on)."""
    if frame.empty:
        return "_(no rows)_"
    header = [_md_escape(c) for c in frame.columns]
    body = [[_md_escape(v) for v in row] for row in frame.astype(str).itertuples(index=False)]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "∞": r"$\infty$", "–": "--", "—": "---"}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials (and ±, ∞, dashes) in one pass, so no replacement is escaped twice."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def latex(frame: pd.DataFrame, caption: str = "") -> str:
    """A booktabs tabular. Written by hand: pandas' to_latex needs jinja2, not one of our dependencies."""
    cols = "l" * max(len(frame.columns), 1)
    lines = [f"% {latex_escape(caption)}" if caption else "", rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in frame.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(v) for v in row) + r" \\" for row in frame.astype(str).itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(line for line in lines if line)


def csv(frame: pd.DataFrame) -> str:
    """Tidy numbers for machines: inf as 'inf', missing as empty."""
    return frame.to_csv(index=False, float_format="%.10g")


FORMATS: tuple[str, ...] = ("md", "csv", "latex")


def render(name: str, tidy: dict[str, pd.DataFrame], fmt: str = "md", *, wide: bool = False) -> str:
    """Table `name` as text: md and latex show the display sections (`wide`: every column of the
    limit table, not only what a reader decides from), csv the tidy frames (always every column)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose from {', '.join(FORMATS)}")
    if fmt == "csv":
        parts = [csv(frame) if len(tidy) == 1 else f"# {key}\n{csv(frame)}" for key, frame in tidy.items()]
        return "\n".join(parts)
    secs = sections(name, tidy, wide=wide)
    if not secs:
        return f"{name}: no rows (no finished cells of this kind)\n" if fmt == "md" else f"% {name}: no rows\n"
    if fmt == "md":
        return "\n\n".join(f"### {s.title}\n\n{markdown(s.frame)}" for s in secs) + "\n"
    return "\n\n".join(latex(s.frame, s.title) for s in secs) + "\n"
