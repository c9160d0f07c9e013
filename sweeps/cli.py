"""`prunetune`: run, inspect and validate sweeps; a demo; data downloads.

    prunetune validate SPEC                       all problems of a spec, one line each (exit 2)
    prunetune run SPEC [--backend serial|ray] [--storage ROOT]
    prunetune status NAME_OR_PATH [--storage ROOT]
    prunetune demo [--storage ROOT]               the packaged demo sweep on digits, CPU, minutes
    prunetune data download NAME --root DIR       torchvision download (needs internet)

Why errors are one line and exit 2: a user's mistake (a bad spec, a missing data set) is not a bug,
so it gets the sentence that says what to fix, never a traceback. Failed *cells* are different:
they are recorded in the store, listed at the end, and make `run` exit 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from sweeps import prune_cli
from sweeps.spec import SpecError, default_storage

EXIT_USAGE = 2
EXIT_FAILED_CELLS = 1


class UserError(Exception):
    """A one-line problem the user can fix; printed without a traceback, exit 2."""


def demo_spec_path() -> Path:
    """The packaged demo spec (sweeps/configs/demo.yaml), also inside an installed wheel."""
    return Path(str(resources.files("sweeps") / "configs" / "demo.yaml"))


# ----------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    from sweeps.cells import expand
    from sweeps.spec import load_spec

    spec = load_spec(args.spec, storage=args.storage)
    cells = expand(spec)
    print(f"{args.spec}: OK — sweep {spec.name!r}, {len(cells)} cells "
          f"({len(spec.pairs)} model/dataset pairs × {len(spec.pruner)} pruners × "
          f"{max(len(spec.sparsity), 1)} sparsities × {len(spec.target)} targets × {len(spec.seed)} seeds), "
          f"storage {spec.storage}")
    return 0


def run_spec(spec_file: str | os.PathLike, *, storage: str | None, backend: str | None) -> int:
    """Validate, expand, store spec.yaml, run the pending cells; 0 when no cell failed."""
    from sweeps import store
    from sweeps.backends import make_backend
    from sweeps.cells import expand
    from sweeps.progress import Progress
    from sweeps.spec import build_spec, dump_yaml, read_yaml
    from sweeps.trial import Where

    raw = read_yaml(spec_file)
    chosen = backend or (raw.get("backend") if isinstance(raw, dict) else None) or "serial"
    spec = build_spec(raw, source=str(spec_file), storage=storage, backend=backend,
                      check_local_resources=chosen == "serial")
    cells = expand(spec)
    runner = make_backend(spec.backend, spec)
    store.write_spec(spec.storage, spec.name, dump_yaml(spec))
    store.clean_temp_files(spec.storage, spec.name)
    print(f"sweep {spec.name!r}: {len(cells)} cells on backend {spec.backend!r}, results in "
          f"{spec.storage}/{spec.name}", file=sys.stderr)
    progress = Progress(len(cells))
    summary = runner.run(cells, Where(storage=spec.storage, data_root=spec.data.root), progress=progress)
    progress.close()
    print(f"sweep {spec.name!r}: {len(summary.done)} done, {len(summary.failed)} failed, "
          f"{len(summary.skipped)} already done", file=sys.stderr)
    for cid in summary.failed:
        print(f"  failed {cid}: {summary.errors.get(cid)}", file=sys.stderr)
    return EXIT_FAILED_CELLS if summary.failed else 0


def _ray_cli() -> Any | None:
    """`sweeps.ray_cli` (the Ray backend's flags, `resume`); importing it does not import Ray."""
    try:
        from sweeps import ray_cli
    except ImportError:
        return None
    return ray_cli


def cmd_run(args: argparse.Namespace) -> int:
    from sweeps.spec import read_yaml

    chosen = args.backend
    if chosen is None:
        raw = read_yaml(args.spec)
        chosen = raw.get("backend") if isinstance(raw, dict) else None
    ray_cli = _ray_cli()
    if chosen == "ray" and ray_cli is not None and hasattr(args, "max_failures"):
        return ray_cli.run_spec(args.spec, storage=args.storage, options=ray_cli.options_from_args(args))
    return run_spec(args.spec, storage=args.storage, backend=args.backend)


def locate_sweep(name_or_path: str, storage: str | None) -> tuple[str, str]:
    """(storage, sweep) from a sweep name, a sweep directory or URI, a stored spec.yaml or a user spec."""
    from sweeps.spec import is_uri

    if is_uri(name_or_path):  # s3://bucket/results/my_sweep
        root, _, sweep = name_or_path.rstrip("/").rpartition("/")
        return root, sweep
    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "spec.yaml").exists():
            raise UserError(f"status: {str(path)!r} holds no spec.yaml; give a sweep directory "
                            "(<storage>/<sweep>) or a sweep name")
        return str(path.resolve().parent), path.resolve().name
    if path.is_file():
        from sweeps.spec import build_spec, read_yaml

        raw = read_yaml(path)
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str):
            raise UserError(f"status: {str(path)!r} has no sweep name")
        resolved = path.resolve()
        if resolved.name == "spec.yaml" and resolved.parent.name == name and storage is None:
            return str(resolved.parent.parent), name
        return build_spec(raw, storage=storage).storage, name
    root = storage or default_storage()
    return root, name_or_path


def sweep_status(storage: str, sweep: str) -> dict[str, Any]:
    """done / diverged / failed (with errors) / pending cell ids of a stored sweep."""
    from sweeps import store
    from sweeps.cells import expand
    from sweeps.spec import build_spec

    text = store.read_spec_text(storage, sweep)
    if text is None:
        raise UserError(f"status: no sweep {sweep!r} in {storage!r} (its spec.yaml is missing); "
                        "run it first or pass --storage")
    import yaml

    spec = build_spec(yaml.safe_load(text), storage=storage)
    out: dict[str, Any] = {"done": [], "diverged": [], "failed": {}, "pending": [], "total": 0}
    for cell in expand(spec):
        out["total"] += 1
        row = store.trial_row(storage, sweep, cell.cell_id)
        if row is None:
            out["pending"].append(cell.cell_id)
        elif row["status"] == "failed":
            out["failed"][cell.cell_id] = f"{cell.label}: {row['error']}"
        elif row["status"] == "diverged":
            out["diverged"].append(cell.cell_id)
        else:
            out["done"].append(cell.cell_id)
    return out


def cmd_status(args: argparse.Namespace) -> int:
    storage, sweep = locate_sweep(args.sweep, args.storage)
    s = sweep_status(storage, sweep)
    print(f"sweep {sweep!r} in {storage}: {s['total']} cells — {len(s['done'])} done, "
          f"{len(s['diverged'])} diverged, {len(s['failed'])} failed, {len(s['pending'])} pending")
    for cid, err in s["failed"].items():
        print(f"  failed {cid} {err}")
    return 0


def demo_summary(storage: str, sweep: str) -> str:
    """Mean over seeds per pruner and sparsity: test accuracy, direct and effective compression."""
    from sweeps import store

    df = store.read_table(storage, sweep, "trials").to_pandas()
    df = df[df["status"] != "failed"]
    if df.empty:
        return "no finished cells"
    g = (df.groupby(["model", "pruner", "sparsity"], dropna=False)
         .agg(test_acc=("test_acc", "mean"), direct_compression=("direct_compression", "mean"),
              effective_compression=("effective_compression", "mean"), seeds=("seed", "nunique"))
         .reset_index())
    return g.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def cmd_demo(args: argparse.Namespace) -> int:
    from sweeps.spec import read_yaml

    storage = args.storage or "./results"
    code = run_spec(demo_spec_path(), storage=storage, backend="serial")
    name = read_yaml(demo_spec_path())["name"]
    storage = os.path.abspath(storage)
    print(demo_summary(storage, name))
    _analysis_summary(storage, name)
    return code


def _analysis_summary(storage: str, sweep: str) -> None:
    """The analysis package's summary of the sweep, when that package provides one."""
    try:
        from analysis import cli as analysis_cli
    except ImportError:
        return
    summary = getattr(analysis_cli, "summary", None)
    if not callable(summary):
        return
    try:
        summary(storage=storage, sweep=sweep)
    except Exception as e:  # the sweep's results are safe; a broken report must not hide them
        print(f"analysis summary unavailable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
              f"try: prunetune tables {sweep} --storage {storage}", file=sys.stderr)


def cmd_data_download(args: argparse.Namespace) -> int:
    from pruning import data

    data.download(args.name, args.root)
    print(f"{args.name}: downloaded into {args.root}")
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prunetune", description="Pruning sweeps: direct and effective "
                                "sparsity, Hessian spectra by SLQ, pruning limits.")
    p.add_argument("-v", "--verbose", action="store_true", help="log details (tracebacks of failed cells)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run (or continue) a sweep")
    r.add_argument("spec", help="the sweep's YAML spec")
    r.add_argument("--backend", choices=("serial", "ray"), default=None,
                   help="where cells run (default: the spec's backend, else serial)")
    r.add_argument("--storage", default=None, help="results root: path or pyarrow.fs URI "
                   "(default: the spec's, else $PRUNETUNE_STORAGE or ./results)")
    ray_cli = _ray_cli()
    if ray_cli is not None:
        ray_cli.add_run_arguments(r)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="done/failed/pending cells of a sweep")
    s.add_argument("sweep", metavar="NAME_OR_PATH", help="sweep name, sweep directory or spec file")
    s.add_argument("--storage", default=None, help="results root (for a sweep name)")
    s.set_defaults(func=cmd_status)

    v = sub.add_parser("validate", help="check a spec completely; start nothing")
    v.add_argument("spec")
    v.add_argument("--storage", default=None)
    v.set_defaults(func=cmd_validate)

    d = sub.add_parser("demo", help="run the packaged demo sweep (digits, CPU) into ./results")
    d.add_argument("--storage", default=None, help="results root (default ./results)")
    d.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dl = data_sub.add_parser("download", help="download a data set with torchvision (needs internet)")
    dl.add_argument("name")
    dl.add_argument("--root", required=True, help="directory to download into")
    dl.set_defaults(func=cmd_data_download)

    prune_cli.register(sub)  # `prune`: one model, one pruner, one target; prints the report
    if ray_cli is not None:
        ray_cli.register(sub)  # `resume NAME_OR_PATH` for Ray sweeps
    try:
        from analysis import cli as analysis_cli
    except ImportError:
        analysis_cli = None
    if analysis_cli is not None and hasattr(analysis_cli, "register"):
        analysis_cli.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run a parsed command: user errors become one line on stderr and exit 2, never a traceback.

    Shared by every entry point (`prunetune`, `python -m sweeps.ray_cli`), so errors read alike.
    """
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except SpecError as e:
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except (UserError, ValueError, FileNotFoundError) as e:
        if args.verbose and not isinstance(e, UserError):
            raise
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished cells are kept; run again to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
