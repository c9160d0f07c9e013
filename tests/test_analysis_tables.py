"""analysis.tables and the `tables` command: golden values from hand-built result sets.

The oracle for interpolated cells is the closed form of linear interpolation in log10(compression),
written out here independently of numpy.interp.
"""

from __future__ import annotations

import io
import os
import re
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import tables as T
from sweeps.cli import main
from analysis.load import load_table
from analysis_fixtures import GOLDEN, INF, curve_rows, limit_row, trial, write_store


def frame(rows: list[dict]) -> pd.DataFrame:
    """Rows through a real store round trip would be slower; the central columns are what matter."""
    from sweeps.schema import TRIALS
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=TRIALS).to_pandas()


@pytest.fixture(scope="module")
def golden() -> pd.DataFrame:
    return frame(GOLDEN)


def cell(acc: pd.DataFrame, pruner: str, view: str, level: float) -> pd.Series:
    got = acc[(acc["pruner"] == pruner) & (acc["view"] == view) & (acc["level"] == level)]
    assert len(got) == 1, (pruner, view, level)
    return got.iloc[0]


def lerp_log(c: float, c0: float, a0: float, c1: float, a1: float) -> float:
    t = (math.log10(c) - math.log10(c0)) / (math.log10(c1) - math.log10(c0))
    return a0 + t * (a1 - a0)


# ----------------------------------------------------------------------------- interpolation


def test_interpolate_never_extrapolates() -> None:
    got = T.interpolate(np.array([1.0, 2.0]), np.array([10.0, 20.0]), np.array([0.5, 1, 1.5, 2, 2.5]))
    np.testing.assert_array_equal(np.isnan(got), [True, False, False, False, True])
    np.testing.assert_allclose(got[1:4], [10, 15, 20])


def test_interpolate_drops_inf_and_nan_and_averages_repeats() -> None:
    x = np.array([np.inf, 1.0, 1.0, 3.0, 2.0])
    y = np.array([5.0, 10.0, 20.0, 40.0, np.nan])
    got = T.interpolate(x, y, np.array([1.0, 2.0, 3.0, np.inf, 4.0]))
    np.testing.assert_allclose(got[:3], [15.0, 27.5, 40.0])
    assert np.isnan(got[3]) and np.isnan(got[4])          # inf is never support, and never crashes
    assert np.isnan(T.interpolate(np.array([]), np.array([]), np.array([1.0]))).all()


# ----------------------------------------------------------------------------- 1. accuracy


def test_accuracy_direct_view_golden(golden: pd.DataFrame) -> None:
    acc = T.accuracy_at_compression(golden)
    v = "direct_compression"
    mag10, mag100 = cell(acc, "magnitude/global", v, 10), cell(acc, "magnitude/global", v, 100)
    assert (mag10["mean"], mag10["n_seeds"], mag10["rank"]) == (pytest.approx(0.96), 3, 1)
    assert mag10["std"] == pytest.approx(0.01)
    assert mag100["mean"] == pytest.approx(0.92) and mag100["std"] == pytest.approx(math.sqrt(7e-4))
    # seed 2 of random/igq failed: 2 of 3 seeds support each cell, and the table says so
    igq10 = cell(acc, "random/igq", v, 10)
    assert (igq10["mean"], igq10["n_seeds"], igq10["seeds_total"], igq10["rank"]) == (pytest.approx(0.91), 2, 3, 2)
    assert igq10["std"] == pytest.approx(math.sqrt(2e-4))
    igq1000 = cell(acc, "random/igq", v, 1000)
    assert (igq1000["mean"], igq1000["std"], igq1000["rank"]) == (pytest.approx(0.10), 0.0, 1)
    # the diverged magnitude cell at 1000x is not support: blank, unranked
    mag1000 = cell(acc, "magnitude/global", v, 1000)
    assert math.isnan(mag1000["mean"]) and mag1000["n_seeds"] == 0 and pd.isna(mag1000["rank"])
    syn100 = cell(acc, "synflow", v, 100)
    assert syn100["mean"] == pytest.approx(0.7 / 3) and syn100["rank"] == 3
    for pruner in ("dense", "magnitude/global", "random/igq", "synflow"):   # nobody reaches 10^4
        assert math.isnan(cell(acc, pruner, v, 10000)["mean"])


def test_accuracy_effective_view_interpolates_in_log_compression(golden: pd.DataFrame) -> None:
    acc = T.accuracy_at_compression(golden)
    v = "effective_compression"
    # random/igq is measured at effective 20 and 1000 (and inf): 10 is below support, 10^4 above
    assert math.isnan(cell(acc, "random/igq", v, 10)["mean"])
    assert math.isnan(cell(acc, "random/igq", v, 10000)["mean"])
    s0, s1 = lerp_log(100, 20, 0.90, 1000, 0.80), lerp_log(100, 20, 0.92, 1000, 0.84)
    igq100 = cell(acc, "random/igq", v, 100)
    assert igq100["mean"] == pytest.approx((s0 + s1) / 2, abs=1e-12)
    assert igq100["std"] == pytest.approx(abs(s1 - s0) / math.sqrt(2), abs=1e-12)
    assert igq100["rank"] == 2 and cell(acc, "magnitude/global", v, 100)["rank"] == 1
    assert cell(acc, "random/igq", v, 1000)["mean"] == pytest.approx(0.82)
    # synflow's only finite effective point is 500: no level of the default grid is supported
    assert acc[(acc["pruner"] == "synflow") & (acc["view"] == v)]["mean"].isna().all()


def test_accuracy_custom_levels_and_single_point_support(golden: pd.DataFrame) -> None:
    acc = T.accuracy_at_compression(golden, levels=[10 ** 1.5, 500])
    igq = cell(acc, "random/igq", "direct_compression", 10 ** 1.5)
    assert igq["mean"] == pytest.approx((0.85 + 0.88) / 2)
    syn = cell(acc, "synflow", "effective_compression", 500)
    assert syn["mean"] == pytest.approx(0.5) and syn["n_seeds"] == 1 and math.isnan(syn["std"])


def test_ranks_are_within_each_column_and_ties_share() -> None:
    rows = [trial(p, 0.9, s, dc=10, ec=10, acc=a) for p, a in (("a", 0.9), ("b", 0.9), ("c", 0.8))
            for s in (0, 1)]
    rows += [trial("c", 0.99, s, dc=100, ec=100, acc=0.7) for s in (0, 1)]
    rows += [trial("a", 0.99, s, dc=100, ec=100, acc=0.6) for s in (0, 1)]
    rows += [trial("x", 0.9, 0, dc=10, ec=10, acc=0.99, model="other")]   # another model: own ranking
    acc = T.accuracy_at_compression(frame(rows), levels=[10, 100])
    d = acc[(acc["view"] == "direct_compression") & (acc["model"] == "mlp")]
    ranks = {(r.pruner, r.level): r.rank for r in d.itertuples()}
    assert ranks[("a", 10)] == 1 and ranks[("b", 10)] == 1 and ranks[("c", 10)] == 3
    assert ranks[("c", 100)] == 1 and ranks[("a", 100)] == 2 and pd.isna(ranks[("b", 100)])
    other = acc[(acc["model"] == "other") & (acc["level"] == 10)]
    assert other["rank"].tolist() == [1, 1]


def test_pooled_sweeps_keep_their_seeds_apart() -> None:
    """Seed 0 of sweep a and seed 0 of sweep b are two replicates, not one seed measured twice."""
    rows = [trial("p", 0.9, 0, dc=10, ec=10, acc=0.8, sweep="a"), trial("p", 0.9, 0, dc=10, ec=10, acc=0.9, sweep="b")]
    acc = T.accuracy_at_compression(frame(rows), levels=[10])
    got = cell(acc, "p", "direct_compression", 10)
    assert (got["mean"], got["n_seeds"], got["seeds_total"]) == (pytest.approx(0.85), 2, 2)
    assert got["std"] == pytest.approx(0.1 / math.sqrt(2))
    assert T.compression_table(frame(rows))["n_seeds"].tolist() == [2]


def test_only_ok_point_rows_count() -> None:
    rows = [trial("a", 0.9, 0, dc=10, ec=10, acc=0.9),
            trial("a", 0.9, 1, dc=10, ec=10, acc=0.1, status="diverged"),
            trial("a", 0.9, 2, dc=10, ec=10, acc=0.1, kind="limit")]
    got = T.accuracy_at_compression(frame(rows), levels=[10])
    assert got[got["view"] == "direct_compression"]["mean"].tolist() == [pytest.approx(0.9)]


def test_levels_are_validated(golden: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"levels: 0.5 not allowed; values must be numbers in \[1, inf\]"):
        T.accuracy_at_compression(golden, levels=[0.5])
    with pytest.raises(ValueError, match="levels: empty"):
        T.accuracy_at_compression(golden, levels=[])


def test_accuracy_markdown_cells(golden: pd.DataFrame) -> None:
    text = T.render("accuracy", {"accuracy": T.accuracy_at_compression(golden)}, "md")
    direct = text.split("### ")[1]
    assert "matched direct_compression — mlp / digits" in direct
    line = next(l for l in direct.splitlines() if l.startswith("| random/igq"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == ["random/igq", "direct", "91.00 ± 1.41 (n=2/3) [2]", "82.00 ± 2.83 (n=2/3) [2]",
                     "10.00 ± 0.00 (n=2/3) [1]", ""]
    header = [c.strip() for c in direct.splitlines()[2].strip("|").split("|")]
    assert header == ["pruner", "target", "compression=10", "compression=100", "compression=1000",
                      "compression=10000"]


def test_extra_pruners_are_marked_in_display_tables_only() -> None:
    rows = [trial(p, 0.9, s, dc=10, ec=12, acc=0.9) for p in ("grasp", "snip") for s in (0, 1)]
    acc = T.accuracy_at_compression(frame(rows), levels=[10])
    assert set(acc["pruner"]) == {"grasp", "snip"}  # the tidy frame keeps the registry names
    text = T.render("accuracy", {"accuracy": acc}, "md")
    assert "| grasp (extra) " in text and "| snip " in text and "snip (extra)" not in text
    comp = T.render("compression", {"compression": T.compression_table(frame(rows))}, "md")
    assert "| grasp (extra) " in comp


# ----------------------------------------------------------------------------- 2. compression


def test_compression_table_golden(golden: pd.DataFrame) -> None:
    comp = T.compression_table(golden).set_index(["pruner", "sparsity"])
    syn = comp.loc[("synflow", 0.99)]
    assert (syn["n_seeds"], syn["direct_compression_median"], syn["n_disconnected"]) == (3, 100.0, 2)
    assert (syn["effective_compression_median"], syn["effective_compression_min"],
            syn["effective_compression_max"]) == (INF, 500.0, INF)
    igq = comp.loc[("random/igq", 0.999)]
    assert igq["effective_compression_median"] == INF and igq["n_disconnected"] == 2 and igq["n_seeds"] == 2
    assert comp.loc[("random/igq", 0.99)]["effective_compression_median"] == 1000.0
    assert ("random/igq", 0.9) in comp.index and comp.loc[("random/igq", 0.9)]["n_seeds"] == 2  # failed seed out
    assert ("magnitude/global", 0.999) not in comp.index                                    # diverged only
    text = T.render("compression", {"compression": T.compression_table(golden)}, "md")
    assert "| synflow          | direct | 0.99     | 3       | 100                | ∞ [500–∞]" in text
    assert "| random/igq       | direct | 0.99     | 2       | 100                | 1,000 " in text


# ----------------------------------------------------------------------------- 3. pruning limit


@pytest.fixture(scope="module")
def limits() -> pd.DataFrame:
    return frame([limit_row(0, predicted=0.90, strict=0.92, tol=0.93, band=(0.05, 0.15)),
                  limit_row(1, predicted=0.88, strict=0.95, tol=0.95, band=(0.07, 0.17)),
                  limit_row(2, predicted=0.5, strict=0.5, tol=0.5, band=(0.1, 0.9), status="failed"),
                  *GOLDEN])


def test_limit_per_seed(limits: pd.DataFrame) -> None:
    per_seed = T.limit_table(limits)
    assert per_seed["seed"].tolist() == [0, 1]                        # failed seed and point rows out
    s0, s1 = per_seed.iloc[0], per_seed.iloc[1]
    assert s0["delta_removed_pp_strict"] == pytest.approx(2.0)
    assert s0["delta_removed_pp_tol"] == pytest.approx(3.0)
    assert s1["delta_removed_pp_strict"] == pytest.approx(7.0)
    assert bool(s0["in_band_strict"]) is True                          # kept 0.08 in [0.05, 0.15]
    assert bool(s1["in_band_strict"]) is False                         # kept 0.05 < 0.07
    for column in ("epsilon", "eigen_policy", "zero_mass", "predicted_kept_frac", "trace_bound_removed_frac"):
        assert column in per_seed


def test_limit_summary_mean_std(limits: pd.DataFrame) -> None:
    summary = T.limit_summary(T.limit_table(limits))
    assert len(summary) == 1
    row = summary.iloc[0]
    assert row["n_seeds"] == 2
    assert row["predicted_removed_frac_mean"] == pytest.approx(0.89)
    assert row["predicted_removed_frac_std"] == pytest.approx(0.02 / math.sqrt(2))
    assert row["delta_removed_pp_strict_mean"] == pytest.approx(4.5)
    assert row["delta_removed_pp_strict_std"] == pytest.approx(5.0 / math.sqrt(2))
    text = T.render("limit", T.build("limit", {"trials": limits}), "md")
    assert "+4.50 ± 3.54" in text
    # by default what a reader decides from: predicted, the authors' estimate, the actual limit under
    # each rule, the differences, the Lanczos depth and the resolution flag (blank where not stored)
    header = [c.strip() for c in text.splitlines()[2].strip("|").split("|")]
    assert header == ["model", "dataset", "seed", "predicted_removed_frac", "predicted_removed_frac_authors",
                      "actual_removed_frac_strict", "actual_removed_frac_tol", "actual_removed_frac_loss",
                      "delta_removed_pp_strict", "delta_removed_pp_tol", "delta_removed_pp_loss", "slq_iterations",
                      "predicted_unresolved"]
    seed_rows = [l for l in text.splitlines() if l.startswith("| mlp")][:2]
    assert [c.strip() for c in seed_rows[0].strip("|").split("|")][3:8] == ["0.9000", "", "0.9200", "0.9300", ""]
    # --wide: the bands, bounds and rules too
    wide = T.render("limit", T.build("limit", {"trials": limits}), "md", wide=True)
    wide_rows = [l for l in wide.splitlines() if l.startswith("| mlp")][:2]
    cells = [c.strip() for c in wide_rows[0].strip("|").split("|")]
    assert cells[13:17] == ["0.1000", "0.0500", "0.1500", "0.5000"]  # kept, band low/high, trace bound
    assert " no " in wide_rows[1] and " yes " in wide_rows[0] and "in_band_strict" in wide


# ----------------------------------------------------------------------------- 4. LOMP vs baselines


def test_lomp_table_points_and_curves() -> None:
    rows = [trial("lomp", 0.9, s, dc=10, ec=10, acc=0.93) for s in (0, 1)]
    rows += [trial("lomp", 0.99, s, dc=100, ec=100, acc=a) for s, a in ((0, 0.85), (1, 0.87))]
    rows += [trial("imp", 0.9, 0, dc=10, ec=10, acc=0.94)]
    rows += [trial("random/smart_ratio", 0.9, 0, dc=10, ec=10, acc=0.80)]
    rows += [trial("random/igq", 0.9, 0, dc=10, ec=10, acc=0.99)]      # not a LOMP baseline
    rows += [trial("dense", 0.0, 0, dc=1, ec=1, acc=0.98, target=None)]
    limit = limit_row(2, predicted=0.9, strict=0.92, tol=0.93, band=(0.05, 0.15))
    rows.append(limit)
    curves = pd.DataFrame(curve_rows(limit["cell_id"], [(0.5, 0.97, 0.1), (0.95, 0.91, 0.9)]))
    got = T.lomp_table(frame(rows), curves)
    assert sorted(got["sparsity"].unique()) == [0.0, 0.9, 0.99]
    assert "random/igq" not in set(got["pruner"])
    at = got.set_index(["pruner", "sparsity"])
    curve_at_09 = 0.97 + (0.9 - 0.5) / (0.95 - 0.5) * (0.91 - 0.97)
    assert at.loc[("lomp", 0.9), "mean"] == pytest.approx((0.93 + 0.93 + curve_at_09) / 3)
    assert at.loc[("lomp", 0.9), "n_seeds"] == 3
    assert at.loc[("lomp", 0.99), "mean"] == pytest.approx(0.86)        # the curve stops at 0.95
    assert at.loc[("lomp", 0.99), "n_seeds"] == 2
    assert at.loc[("imp", 0.9), "rank"] == 1 and at.loc[("lomp", 0.9), "rank"] == 2
    assert at.loc[("dense", 0.0), "mean"] == pytest.approx(0.98)
    assert math.isnan(at.loc[("dense", 0.9), "mean"])
    assert list(dict.fromkeys(got["pruner"])) == ["lomp", "imp", "random/smart_ratio", "dense"]


def test_lomp_table_given_sparsities_validated() -> None:
    with pytest.raises(ValueError, match=r"sparsities: 1.5 not allowed"):
        T.lomp_table(frame([trial("lomp", 0.9, 0, dc=10, ec=10, acc=0.9)]), sparsities=[1.5])


# ----------------------------------------------------------------------------- renderers


def test_markdown_and_latex_escape() -> None:
    f = pd.DataFrame({"a_b": ["x|y", "50% & $1 ± 2 ∞"]})
    md = T.markdown(f)
    assert md.splitlines() == ["| a_b            |", "|----------------|",
                               "| x\\|y           |", "| 50% & $1 ± 2 ∞ |"]
    tex = T.latex(f)
    assert r"a\_b \\" in tex and r"50\% \& \$1 $\pm$ 2 $\infty$ \\" in tex
    assert tex.splitlines()[0] == r"\begin{tabular}{l}" and tex.splitlines()[-1] == r"\end{tabular}"


def test_csv_round_trips_inf(golden: pd.DataFrame) -> None:
    text = T.render("compression", {"compression": T.compression_table(golden)}, "csv")
    back = pd.read_csv(io.StringIO(text))
    syn = back[back["pruner"] == "synflow"].iloc[0]
    assert syn["effective_compression_median"] == INF and syn["effective_compression_min"] == 500


def test_unknown_table_and_format() -> None:
    with pytest.raises(ValueError, match="table 'acc': choose from accuracy, compression, limit, lomp, all"):
        T.table_names("acc")
    with pytest.raises(ValueError, match="format 'xml': choose from md, csv, latex"):
        T.render("accuracy", {}, "xml")


# ----------------------------------------------------------------------------- CLI


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    limit = limit_row(0, predicted=0.9, strict=0.92, tol=0.93, band=(0.05, 0.15))
    write_store(tmp_path, "golden", [*GOLDEN, limit],
                curves=curve_rows(limit["cell_id"], [(0.5, 0.97, 0.1), (0.9, 0.95, 0.7), (0.95, 0.91, 0.99)]))
    return tmp_path


def test_cli_tables_markdown(store: Path, capsys: pytest.CaptureFixture) -> None:
    for f in store.rglob("*.parquet"):                                 # old enough to be cached
        os.utime(f, (1e9, 1e9))
    assert main(["tables", "golden", "--storage", str(store), "--table", "compression", "--no-cache"]) == 0
    assert not (store / "golden" / "_analysis").exists()               # --no-cache writes nothing
    out = capsys.readouterr().out
    assert "∞ [500–∞]" in out and out.startswith("### direct vs effective compression")


def test_cli_all_tables_to_files(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_dir = tmp_path / "tables"
    assert main(["tables", str(store / "golden"), "--format", "csv", "--out", str(out_dir),
                 "--levels", "10,1e3"]) == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["accuracy.csv", "compression.csv", "limit.csv", "limit_summary.csv", "lomp.csv"]
    acc = pd.read_csv(out_dir / "accuracy.csv")
    assert sorted(acc["level"].unique()) == [10.0, 1000.0]
    assert "wrote " in capsys.readouterr().out
    assert main(["tables", str(store / "golden"), "--format", "latex", "--table", "limit",
                 "--out", str(out_dir)]) == 0
    assert r"\begin{tabular}" in (out_dir / "limit.tex").read_text()


@pytest.mark.parametrize("argv, message", [
    (["tables", "nope"], "sweep 'nope' not found under storage root .*: choose from golden"),
    (["tables", "golden", "--table", "bogus"], "argument --table: invalid choice: 'bogus' \\(choose from 'accuracy'"),
    (["tables", "golden", "--format", "xml"], "argument --format: invalid choice: 'xml' \\(choose from 'md', 'csv', 'latex'\\)"),
    (["tables", "golden", "--levels", "10,abc"], "--levels: 'abc' is not a number"),
])
def test_cli_errors_are_one_line_exit_2(store: Path, capsys: pytest.CaptureFixture, argv: list[str],
                                        message: str) -> None:
    assert main([*argv, "--storage", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert re.search(message, err), err


def test_cli_sweep_without_trials(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "spec.yaml").write_text("name: fresh\n")
    assert main(["tables", "fresh", "--storage", str(tmp_path)]) == 2
    assert "no trials yet" in capsys.readouterr().err


def test_tables_from_the_store_match_tables_from_rows(store: Path, golden: pd.DataFrame) -> None:
    loaded = load_table(store / "golden", "trials")
    a = T.accuracy_at_compression(loaded)
    b = T.accuracy_at_compression(golden)
    pd.testing.assert_frame_equal(a[["pruner", "view", "level", "mean", "std", "n_seeds"]].reset_index(drop=True),
                                  b[["pruner", "view", "level", "mean", "std", "n_seeds"]].reset_index(drop=True))


def test_auto_levels_are_requested_compressions_and_spanned_decades(golden: pd.DataFrame) -> None:
    # requested sparsities 0.9, 0.99, 0.999 (and dense 0) → 10, 100, 1000; measured direct 1..1000
    assert T.auto_levels(golden) == [10.0, 100.0, 1000.0]
    small = frame([trial("p", s, 0, dc=1 / (1 - s), ec=1 / (1 - s), acc=0.9) for s in (0.5, 0.97)])
    assert T.auto_levels(small) == [2.0, 10.0, 33.33]


def test_ranks_compare_displayed_precision() -> None:
    rows = [trial("a", 0.9, 0, dc=10, ec=10, acc=0.1013889), trial("b", 0.9, 0, dc=10, ec=10, acc=0.1013881)]
    acc = T.accuracy_at_compression(frame(rows), levels=[10])
    assert acc[acc["view"] == "direct_compression"]["rank"].tolist() == [1, 1]   # both read 10.14


def test_cli_unwritable_out_is_one_line(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["tables", "golden", "--storage", str(store), "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {blocker / 'sub'}: cannot create the directory") and err.count("\n") == 1


def test_storage_root_may_be_a_uri(store: Path) -> None:
    from analysis.load import resolve

    assert resolve("golden", storage=f"file://{store}").names == ("golden",)
    with pytest.raises(ValueError, match="choose from golden"):
        resolve("nope", storage=f"file://{store}")


def test_an_infinite_level_is_blank_not_an_error(golden: pd.DataFrame) -> None:
    acc = T.accuracy_at_compression(golden, levels=[10, math.inf])
    assert acc[acc["level"] == math.inf]["mean"].isna().all()
    assert "compression=inf" in T.render("accuracy", {"accuracy": acc}, "md")


# ----------------------------------------------------------------------------- column projection


def test_every_table_builds_from_exactly_its_declared_columns() -> None:
    """`prunetune tables` reads only TableSpec.needs: each table must come out the same from them."""
    limit = limit_row(2, predicted=0.9, strict=0.92, tol=0.93, band=(0.05, 0.15))
    rows = [*GOLDEN, limit, limit_row(1, predicted=0.88, strict=0.95, tol=0.95, band=(0.07, 0.17)),
            trial("lomp", 0.9, 0, dc=10, ec=10, acc=0.93), trial("imp", 0.9, 0, dc=10, ec=10, acc=0.94),
            trial("dense", 0.0, 0, dc=1, ec=1, acc=0.98, target=None)]
    curves = pd.DataFrame(curve_rows(limit["cell_id"], [(0.5, 0.97, 0.1), (0.95, 0.91, 0.9)]))
    full = {"trials": frame(rows), "curves": curves}
    for name in T.TABLE_SPECS:
        for auto in (False, True):
            needed = T.columns_needed([name], auto_levels=auto)
            assert set(needed) <= set(full) and all(needed.values())
            projected = {t: full[t][list(columns)] for t, columns in needed.items()}
            levels = T.auto_levels(projected["trials"]) if auto else None
            expected = T.build(name, full, levels=levels)
            got = T.build(name, projected, levels=levels)
            assert expected.keys() == got.keys()
            for key in expected:
                assert not expected[key].empty, (name, key)
                pd.testing.assert_frame_equal(got[key], expected[key], check_like=True)
    assert len(T.columns_needed(list(T.TABLE_SPECS))["trials"]) < len(full["trials"].columns) / 2


def test_cli_tables_cache_only_the_columns_they_read(store: Path, capsys: pytest.CaptureFixture) -> None:
    import pyarrow.parquet as pq

    for path in (store / "golden").rglob("*.parquet"):                # files a minute old are cached
        os.utime(path, (path.stat().st_mtime - 60, path.stat().st_mtime - 60))
    assert main(["tables", str(store / "golden")]) == 0
    capsys.readouterr()
    cached = pq.read_table(store / "golden" / "_analysis" / "cache" / "trials.parquet")
    wanted = set(T.columns_needed(list(T.TABLE_SPECS))["trials"])
    assert set(cached.column_names) - {"_cache_key"} <= wanted
