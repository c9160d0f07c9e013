"""The layers as the layout promises them, read from the source with `ast` (nothing is imported):

    pruning  ←  sweeps  ←  sweeps.cli  →  analysis

no import cycle anywhere in the three packages (function-local imports count); `pruning` imports
neither `sweeps` nor `analysis`; `analysis` reaches no torch or Ray, also not through the sweeps
modules it reads (`sweeps.schema`, `sweeps.paths`); only the CLI layer imports `analysis`.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pruning", "sweeps", "analysis")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Everything `name` imports: our modules by full name, third-party packages by top name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in known else base)
    return {m if m.split(".")[0] in PACKAGES else m.split(".")[0] for m in out}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def ours(edges: set[str]) -> set[str]:
    return {m for m in edges if m.split(".")[0] in PACKAGES}


def test_no_import_cycles(graph):
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(ours(graph.get(m, set()))):
            if n not in graph:
                continue
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


def test_pruning_imports_neither_sweeps_nor_analysis(graph):
    bad = {m: sorted(n for n in graph[m] if n.split(".")[0] in ("sweeps", "analysis"))
           for m in graph if m.split(".")[0] == "pruning"}
    assert not {m: v for m, v in bad.items() if v}


def reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for n in graph.get(m, set()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_analysis_reaches_no_torch_or_ray(graph):
    for m in graph:
        if m.split(".")[0] == "analysis":
            bad = reach(graph, m) & {"torch", "ray", "torchvision"}
            assert not bad, f"{m} reaches {sorted(bad)}"


def test_only_the_cli_layer_imports_analysis(graph):
    bad = sorted(m for m in graph if m.split(".")[0] == "sweeps" and not m.startswith("sweeps.cli")
                 and any(n.split(".")[0] == "analysis" for n in graph[m]))
    assert not bad, f"sweeps modules outside sweeps.cli import analysis: {bad}"
    assert any(n.split(".")[0] == "analysis" for n in graph["sweeps.cli.analysis"])  # the test can fail


def test_the_graph_sees_function_local_imports(graph):
    """Guard for the tests above: a local import inside a function is an edge too."""
    assert "pruning.data" in graph["sweeps.cli.data"]
    assert "sweeps.resume" in graph["sweeps.cli.run"]  # imported inside cmd_resume
