"""analysis.plots: PNGs of non-trivial content, headless; the smoothed density is a density."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import plots
from analysis.output import summary
from sweeps.cli import main
from analysis.load import load_tables
from analysis_fixtures import GOLDEN, curve_rows, limit_row, spectrum_rows, write_store

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    limit = limit_row(0, predicted=0.9, strict=0.92, tol=0.93, band=(0.05, 0.15))
    write_store(root, "golden", [*GOLDEN, limit],
                curves=curve_rows(limit["cell_id"], [(s, 0.97 - 0.5 * s ** 8, min(1.0, 0.1 + s ** 3))
                                                     for s in np.linspace(0.1, 0.99, 12)]),
                spectra=spectrum_rows(limit["cell_id"], [[(0.0, 0.5), (1.0, 0.3), (10.0, 0.2)],
                                                         [(0.1, 0.6), (5.0, 0.4)]]))
    write_store(root, "points_only", GOLDEN[:7])
    return root


@pytest.fixture(scope="module")
def frames(store: Path) -> dict[str, pd.DataFrame]:
    return load_tables(store / "golden", ("trials", "curves", "spectra"))


def assert_real_png(path: str, min_bytes: int = 8000) -> None:
    """A PNG with drawn content: big enough, and many pixels that are not background."""
    from matplotlib.image import imread

    data = Path(path).read_bytes()
    assert data[:8] == PNG and len(data) > min_bytes, (path, len(data))
    pixels = imread(io.BytesIO(data))[..., :3]
    ink = (pixels < 0.9).any(axis=-1).mean()
    assert 0.01 < ink < 0.9, (path, ink)


def test_each_plot_writes_a_png(frames: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    t, c, s = frames["trials"], frames["curves"], frames["spectra"]
    written = [
        plots.accuracy_vs_compression(t, tmp_path / "a.png", "direct_compression"),
        plots.accuracy_vs_compression(t, tmp_path / "b.png", "effective_compression"),  # with inf points
        plots.effective_vs_direct(t, tmp_path / "c.png"),
        plots.spectral_density(s, tmp_path / "d.png"),
        plots.limit_crossing(c, t, tmp_path / "e.png"),
        plots.accuracy_vs_sparsity(c, t, tmp_path / "sub" / "f.png"),
    ]
    assert written == [str(tmp_path / n) for n in ("a.png", "b.png", "c.png", "d.png", "e.png", "sub/f.png")]
    for path in written:
        assert_real_png(path)


def test_plot_all_writes_what_the_data_supports(store: Path, frames: dict[str, pd.DataFrame],
                                                tmp_path: Path) -> None:
    full = plots.plot_all(frames, tmp_path / "full")
    assert sorted(os.path.basename(p) for p in full) == sorted(spec.file for spec in plots.PLOTS.values())
    partial = plots.plot_all(load_tables(store / "points_only", ("trials", "curves", "spectra")), tmp_path / "p")
    assert sorted(os.path.basename(p) for p in partial) == [
        "accuracy_vs_direct_compression.png", "accuracy_vs_effective_compression.png",
        "effective_vs_direct_compression.png"]
    assert plots.plot_all({"trials": frames["trials"].iloc[:0]}, tmp_path / "none") == []


def test_smoothed_density_integrates_to_one() -> None:
    nodes = np.array([0.0, 1.0, 10.0, 0.1, 5.0])
    weights = np.array([0.5, 0.3, 0.2, 0.6, 0.4])          # two probes, each summing to 1
    probes = np.array([0, 0, 0, 1, 1])
    grid = np.linspace(-5, 15, 20001)
    density = plots.smoothed_density(nodes, weights, probes, grid, sigma=0.2)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)
    # the mass near 10 is probe 0's weight 0.2, halved by the mean over two probes
    near = (grid > 9) & (grid < 11)
    assert np.trapezoid(density[near], grid[near]) == pytest.approx(0.1, abs=1e-4)


def test_bad_arguments(frames: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="view 'x': choose from direct_compression, effective_compression"):
        plots.accuracy_vs_compression(frames["trials"], tmp_path / "x.png", "x")
    with pytest.raises(ValueError, match="sigma: -1 not allowed"):
        plots.spectral_density(frames["spectra"], tmp_path / "x.png", sigma=-1)


def test_headless_without_pyplot(store: Path, tmp_path: Path) -> None:
    code = ("import sys; from analysis.load import load_tables; from analysis.plots import plot_all; "
            f"paths = plot_all(load_tables({str(store / 'golden')!r}, ('trials', 'curves', 'spectra')), "
            f"{str(tmp_path)!r}); "
            "assert 'matplotlib.pyplot' not in sys.modules and 'torch' not in sys.modules; print(len(paths))")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**env, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(len(plots.PLOTS))


def test_cli_plot_and_summary(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["plot", "golden", "--storage", str(store), "--out", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    assert out.count("wrote ") == len(plots.PLOTS) and (tmp_path / "figs" / "limit_crossing.png").exists()
    stream = io.StringIO()
    paths = summary(storage=str(store), sweep="golden", out=str(tmp_path / "summary"), stream=stream)
    text = stream.getvalue()
    assert len(paths) == len(plots.PLOTS)
    assert "matched direct_compression" in text and "pruning limit over seeds" in text
    assert "LOMP vs baselines" in text                                 # the limit cell's curve gives LOMP points
    assert f"plots: {len(paths)} PNG file(s) in {tmp_path / 'summary'}" in text


def test_shared_slq_runs_are_drawn_once() -> None:
    one = spectrum_rows("c1", [[(0.0, 0.5), (1.0, 0.5)]])
    same = spectrum_rows("c2", [[(0.0, 0.5), (1.0, 0.5)]])
    other = spectrum_rows("c3", [[(0.0, 0.4), (2.0, 0.6)]])
    runs = plots._distinct_runs(pd.DataFrame(one + same + other))
    assert [cells for cells, _ in runs] == [["c1", "c2"], ["c3"]]
