"""analysis.limit_report and `limit-report`: hand-checkable stores, values derived in the comments."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from analysis import limit_plots
from analysis import limit_report as R
from analysis import tables as T
from analysis.output import write_limit_report
from sweeps.cli import main
from analysis.load import load_tables
from analysis_fixtures import (
    curve_rows, hessian_rows_rows, limit_row, rounds_rows, scaling_rows, trial, weight_rows, write_store,
)

PNG = b"\x89PNG\r\n\x1a\n"


def frame(rows: list[dict]) -> pd.DataFrame:
    """trials rows with every central column (as a store read gives them)."""
    import pyarrow as pa

    from sweeps.schema import TRIALS

    return pa.Table.from_pylist(rows, schema=TRIALS).to_pandas()


def limits(**extra) -> list[dict]:
    """Three seeds of one configuration; the effective limits lie 1, 2, 3 points above the direct ones."""
    config = lambda s: json.dumps({"model": "mlp", "seed": s, "prune": {"lomp_l1": 5e-5}})  # noqa: E731
    return [limit_row(s, predicted=p, strict=a, tol=a + 0.01, band=(0.05, 0.15), config=config(s),
                      predicted_effective_removed_frac=p + 0.01 * (s + 1),
                      actual_effective_removed_frac_strict=a + 0.02,
                      actual_effective_removed_frac_tol=a + 0.01 + 0.03, **extra)
            for s, p, a in ((0, 0.80, 0.85), (1, 0.82, 0.86), (2, 0.84, 0.90))]


def test_tv_distance_of_known_histograms():
    assert R.tv_distance({0: 1, 1: 1}, {1: 1, 2: 1}) == pytest.approx(0.5)   # ½(½ + 0 + ½)
    assert R.tv_distance({0: 2, 1: 2}, {0: 1, 1: 1}) == 0.0                   # normalized first
    assert R.tv_distance({0: 3}, {5: 7}) == 1.0                               # disjoint supports
    assert R.tv_distance({0: 1, 1: 3}, {0: 3, 1: 1}) == pytest.approx(0.5)   # ½(|¼−¾| + |¾−¼|)
    with pytest.raises(ValueError, match="positive total"):
        R.tv_distance({}, {0: 1})


def test_weight_tv_table_pairs_seeds_of_one_configuration():
    rows = limits()
    other = limit_row(3, predicted=0.5, strict=0.5, tol=0.5, band=(0.4, 0.6),
                      config=json.dumps({"model": "mlp", "seed": 3, "prune": {"lomp_l1": 1e-3}}))
    hist = {0: {10: 1, 11: 1}, 1: {11: 1, 12: 1}, 2: {10: 2, 11: 2}}
    weights = [r for s, h in hist.items() for r in weight_rows(rows[s]["cell_id"], h)]
    weights += weight_rows(rows[0]["cell_id"], {10: 1}, layer="fc1") + weight_rows(rows[1]["cell_id"], {11: 1}, layer="fc1")
    weights += weight_rows(other["cell_id"], {0: 1})                      # another λ: compared with nobody
    got = R.weight_tv_table(pd.DataFrame(weights), frame([*rows, other]))
    overall = got[got["layer"] == R.ALL_LAYERS].set_index(["seed_a", "seed_b"])["tv"]
    assert overall.to_dict() == pytest.approx({(0, 1): 0.5, (0, 2): 0.0, (1, 2): 0.5})
    assert got[got["layer"] == "fc1"][["seed_a", "seed_b", "tv"]].values.tolist() == [[0, 1, 1.0]]
    assert got["layer"].tolist()[:3] == [R.ALL_LAYERS] * 3                # the overall histogram first
    text = T.markdown(R.tv_sections(got)[0].frame)
    assert "| mlp   | digits  | 0      | 1      | 0.5000 |" in text


def test_effective_scaling_rounds_and_hessian_row_tables():
    trials = frame(limits())
    eff = R.limit_effective_table(trials).set_index("seed")
    assert eff.loc[1, "disconnected_pp_predicted"] == pytest.approx(2.0)
    assert eff.loc[2, "disconnected_pp_actual_tol"] == pytest.approx(3.0)
    # seed 0: actual effective (tol) 0.85 + 0.04 = 0.89, predicted effective 0.81 → +8 points
    assert eff.loc[0, "delta_effective_pp_tol"] == pytest.approx(8.0)

    ids = [r["cell_id"] for r in limits()]
    scaling = pd.DataFrame([r for cid, s0 in zip(ids, (0.80, 0.82, 0.84))
                            for r in scaling_rows(cid, [(1.0, s0), (2.0, s0 - 0.2)])])
    table = R.scaling_table(scaling, trials).set_index("factor")
    assert table.loc[1.0, "mean"] == pytest.approx(0.82) and table.loc[1.0, "std"] == pytest.approx(0.02)
    assert table.loc[2.0, "mean"] == pytest.approx(0.62) and table.loc[2.0, "n_seeds"] == 3
    # factor 1 is the prediction itself: the same mean as the limit summary
    summary = T.limit_summary(T.limit_table(trials))
    assert table.loc[1.0, "mean"] == pytest.approx(summary["predicted_removed_frac_mean"].iloc[0])
    assert "| mlp   | digits  | 3       | 0.8200 ± 0.0200 | 0.6200 ± 0.0200 |" in T.markdown(R.scaling_sections(table.reset_index())[0].frame)

    rounds = pd.DataFrame(rounds_rows(ids[0], [(0.0, 0.80, 0.86), (0.80, 0.93, 0.90)]))
    got = R.rounds_table(rounds, trials)
    assert got["round"].tolist() == [1, 2] and got["delta_removed_pp_tol"].tolist() == pytest.approx([6.0, -3.0])
    assert (got["seed"] == 0).all()

    rows = pd.DataFrame(hessian_rows_rows(ids[0], [(0.0, 1e-6, 0.0), (0.25, 1e-4, 0.01), (0.5, 1e-3, 0.1),
                                                    (0.75, 1e-2, 0.5), (1.0, 1e-1, 2.0)]))
    h = R.hessian_rows_table(rows, trials).iloc[0]
    assert (h["n_rows"], h["n_zero_rows"]) == (5, 1)
    assert h["spearman_abs_weight_row_l1"] == pytest.approx(1.0)          # row norms grow with |w|
    assert h["row_l1_median_low_half"] == pytest.approx(0.005)            # median of 0, 0.01
    assert h["row_l1_median_high_half"] == pytest.approx(0.5)             # median of 0.1, 0.5, 2


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    rows = limits()
    ids = [r["cell_id"] for r in rows]
    curve = lambda cid: curve_rows(cid, [(s, 0.97 - 0.5 * s ** 8, min(1.0, 0.1 + s ** 3))  # noqa: E731
                                         for s in (0.0, 0.3, 0.6, 0.8, 0.9, 0.95, 0.99)])
    write_store(tmp_path, "lim", [*rows, trial("dense", 0.0, 0, dc=1, ec=1, acc=0.98, target=None)],
                curves=[r for cid in ids for r in curve(cid)],
                weights=[r for i, cid in enumerate(ids) for r in weight_rows(cid, {100: 5, 180 + i: 20, 200: 75, -1: 3})],
                scaling=[r for cid in ids for r in scaling_rows(cid, [(f, 0.8 / f) for f in (1, 2, 3, 4, 5)])],
                hessian_rows=[r for cid in ids for r in hessian_rows_rows(cid, [(q, 10 ** (q - 3), q) for q in
                                                                               (0.0, 0.5, 1.0)])],
                rounds=rounds_rows(ids[0], [(0.0, 0.8, 0.86), (0.8, 0.9, 0.9)]))
    write_store(tmp_path, "points", [trial("dense", 0.0, 0, dc=1, ec=1, acc=0.98, target=None)])
    return tmp_path


def test_cli_limit_report_writes_every_table_and_figure(store: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert main(["limit-report", "lim", "--storage", str(store), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["limit.csv", "limit_summary.csv", "limit_effective.csv", "scaling.csv", "weight_tv.csv",
                            "hessian_rows.csv", "rounds.csv", "curves_mlp_digits.png", "crossing_mlp_digits.png",
                            *limit_plots.REPORT_PLOTS, "limit_report.md"])
    assert printed.count("wrote ") == len(names)
    for png in out.glob("*.png"):
        data = png.read_bytes()
        assert data[:8] == PNG and len(data) > 8000, png
    text = (out / "limit_report.md").read_text()
    for title in ("pruning limit over seeds", "limits as direct and effective removed fractions",
                  "trained weights × factor (Hessian spectrum held fixed)", "total-variation distance",
                  "exact Hessian rows", "iterative pruning"):
        assert title in text, title
    assert "[weight_histograms.png](weight_histograms.png)" in text
    tv = pd.read_csv(out / "weight_tv.csv")
    overall = tv[tv["layer"] == R.ALL_LAYERS]
    # seeds differ in one bin of 20 weights out of 103: TV = 20/103 for each pair
    assert overall["tv"].tolist() == pytest.approx([20 / 103] * 3)
    scaling = pd.read_csv(out / "scaling.csv")
    assert scaling["mean"].tolist() == pytest.approx([0.8 / f for f in (1, 2, 3, 4, 5)])


def test_cli_limit_report_needs_limit_cells(store: Path, capsys) -> None:
    assert main(["limit-report", "points", "--storage", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no finished limit cells") and err.count("\n") == 1


def test_report_figures_skip_tables_that_were_not_stored(store: Path, tmp_path: Path) -> None:
    frames = load_tables(store / "lim", R.REPORT_TABLES)
    frames["hessian_rows"] = frames["hessian_rows"].iloc[0:0]             # row norms off (the default)
    frames["rounds"] = frames["rounds"].iloc[0:0]
    paths = write_limit_report(frames, str(tmp_path / "r"), io.StringIO())
    names = {Path(p).name for p in paths}
    assert "hessian_row_norms.png" not in names and "limit_rounds.png" not in names
    assert "hessian_rows.csv" not in names and "weight_histograms.png" in names


def test_lomp_table_shows_rare_gems(tmp_path: Path, capsys) -> None:
    rows = [trial(p, s, seed, dc=1 / (1 - s), ec=1 / (1 - s), acc=a)
            for p, s, seed, a in (("lomp", 0.9, 0, 0.93), ("lomp", 0.9, 1, 0.95), ("rare_gems", 0.9, 0, 0.91),
                                  ("rare_gems", 0.9, 1, 0.92), ("imp", 0.9, 0, 0.94),
                                  ("random/smart_ratio", 0.9, 0, 0.90), ("random/igq", 0.9, 0, 0.99))]
    rows.append(trial("dense", 0.0, 0, dc=1, ec=1, acc=0.97, target=None))
    write_store(tmp_path, "cmp", rows)
    assert main(["tables", "cmp", "--storage", str(tmp_path), "--table", "lomp"]) == 0
    text = capsys.readouterr().out
    body = [line for line in text.splitlines() if line.startswith("| ") and "pruner" not in line]
    assert [line.split("|")[1].strip() for line in body] == ["lomp", "rare_gems", "imp", "random/smart_ratio", "dense"]
    rare = next(line for line in body if line.startswith("| rare_gems"))
    assert "91.50 ± 0.71 [3]" in rare                                    # mean of 91 and 92; imp 94, lomp 94
