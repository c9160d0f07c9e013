"""The import graph of `pruning/`: no cycles (function-local imports included), nothing outside it.

Why a test: a cycle hidden in a function-local import works until someone imports the modules in
another order; and `pruning` must stay pure PyTorch (ALGORITHMS.md is its only reference).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def import_graph() -> dict[str, set[str]]:
    """module -> the `pruning` modules (and other top-level packages) it imports, anywhere in it."""
    mods = {}
    for p in (ROOT / "pruning").rglob("*.py"):
        mods[".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = p
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                subs = [f"{node.module}.{a.name}" for a in node.names]
                # `from pkg import sub` needs `sub` (pkg is already initializing when it is an
                # ancestor of m); `from pkg import name` needs pkg itself
                targets = [s for s in subs if s in mods]
                if len(targets) < len(subs) or not m.startswith(node.module + "."):
                    targets.append(node.module)
            else:
                continue
            for t in targets:
                while t not in mods and "." in t:
                    t = t.rpartition(".")[0]
                if t != m:
                    edges[m].add(t)
    return edges


def test_pruning_has_no_import_cycle():
    edges = import_graph()
    internal = {m: {t for t in ts if t in edges} for m, ts in edges.items()}
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(internal[m]):
            assert state.get(t) != 1, "import cycle: " + " -> ".join(path[path.index(t):] + [t])
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(internal):
        if m not in state:
            visit(m, [m])
    assert "pruning.pruners" not in internal["pruning.quotas"]  # quotas stay pure (shapes → densities)


def test_pruning_imports_nothing_of_the_sweeps():
    outside = {t.split(".")[0] for ts in import_graph().values() for t in ts}
    assert not outside & {"sweeps", "analysis", "ray", "bench"}, outside
