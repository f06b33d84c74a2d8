"""Every repository path that the docs, the README and code comments cite exists (a design file
that was never in the repository was once cited nineteen times). The commands they show:
tests/test_doc_commands.py (each run by a named test, or why none can)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP = ("wmtp", "configs", "benchmarks", "tests", "scripts", "cluster", "docs", "tune_spaces")
PATH = re.compile(r"(?<![\w/.-])((?:" + "|".join(TOP) + r")/[\w./<>*{}-]*[\w>*}])")


def cited_paths(text: str) -> set[str]:
    out = set()
    for m in PATH.finditer(text):
        path = m.group(1)
        if any(c in path for c in "<*{"):  # a pattern: configs/recipe.<name>.yaml, step_*
            continue
        out.add(path.split("::")[0])
    return out


def test_docs_and_readme_cite_only_files_that_exist():
    missing = {}
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        gone = sorted(p for p in cited_paths(doc.read_text(encoding="utf-8")) if not (REPO / p).exists())
        if gone:
            missing[doc.name] = gone
    assert not missing, missing


def test_code_cites_only_docs_that_exist():
    missing = {}
    for source in sorted((REPO / "wmtp").rglob("*.py")):
        docs = {p for p in cited_paths(source.read_text(encoding="utf-8")) if p.startswith("docs/")}
        gone = sorted(p for p in docs if not (REPO / p).exists())
        if gone:
            missing[str(source.relative_to(REPO))] = gone
    assert not missing, missing
