"""The repository is self-contained: its science is in `docs/algorithms.md`, every reference to a
section of it names a section that exists, and nothing refers to files outside the repository."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = (".py", ".md", ".yaml", ".toml", ".cfg", ".txt", "Makefile", "/run")


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / p for p in out.splitlines() if p.endswith(TEXT) and (ROOT / p).is_file()]


def sections() -> set[str]:
    text = (ROOT / "docs" / "algorithms.md").read_text()
    return set(re.findall(r"^## (\d+)\. ", text, flags=re.MULTILINE))


def test_algorithms_has_the_sections_code_cites():
    assert sections() == {str(i) for i in range(1, 9)}


def test_every_reference_names_an_existing_section():
    """`docs/algorithms.md §N` (and its older spelling, the upper-case name without docs/) name sections that exist."""
    known = sections()
    cited = {(str(p.relative_to(ROOT)), n) for p in tracked()
             for n in re.findall(r"(?:docs/algorithms|ALGORITHMS)\.md §(\d+)", p.read_text(errors="replace"))}
    assert cited, "the code cites the science"
    assert not {(p, n) for p, n in cited if n not in known}


def test_nothing_refers_outside_the_repository():
    bad = [str(p.relative_to(ROOT)) for p in tracked()
           if re.search(r"\.\./shared|shared/docs", p.read_text(errors="replace")) and p.name != "test_docs.py"]
    assert not bad, f"references outside the repository (the docs are in docs/): {bad}"
