"""No two modules of `wmtp/` share a file name unless they are one concept at two layers, stated:
in docs/ARCHITECTURE.md's "Names used twice" table and in the first line of each module's
docstring. A newcomer then finds a concept from the folder names alone (issue 26)."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATEMENT = "the same concept as"
# wmtp/recipes/*.py are being rewritten (issue 26, one owner of the run's life): their first lines
# are added after that lands; each must still lack it, so this set is emptied when they are added.
AWAITING_FIRST_LINE: set[str] = set()


def names_used_twice(root: Path = REPO) -> dict[str, set[str]]:
    where: dict[str, set[str]] = defaultdict(set)
    for path in (root / "wmtp").rglob("*.py"):
        if path.name not in ("__init__.py", "__main__.py"):
            where[path.name].add(path.relative_to(root).as_posix())
    return {name: paths for name, paths in where.items() if len(paths) > 1}


def stated() -> dict[str, set[str]]:
    """The table under "## Names used twice": `name` | concept | the paths, each in backticks."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## Names used twice", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`[\w.]+\.py`", cells[0]):
            table[cells[0].strip("`")] = set(re.findall(r"`(wmtp/[\w/]+\.py)`", cells[2]))
    return table


def first_line(path: str) -> str:
    doc = ast.get_docstring(ast.parse((REPO / path).read_text(encoding="utf-8"))) or ""
    return doc.splitlines()[0] if doc else ""


def test_every_name_used_twice_is_stated_in_the_architecture_table():
    assert names_used_twice() == stated(), (
        "a module name used twice must be one concept at two layers, stated in docs/ARCHITECTURE.md "
        "'Names used twice' (each path); otherwise rename one of them")


def test_each_module_of_a_stated_name_says_so_in_its_first_line():
    missing = sorted(p for paths in stated().values() for p in paths
                     if p not in AWAITING_FIRST_LINE and STATEMENT not in first_line(p))
    assert not missing, f"first docstring line lacks {STATEMENT!r}: {missing}"
    done = sorted(p for p in AWAITING_FIRST_LINE if STATEMENT in first_line(p))
    assert not done, f"{done} now state it: remove them from AWAITING_FIRST_LINE"


def test_the_scan_finds_a_name_used_twice_at_any_depth(tmp_path):
    for path in ("wmtp/a.py", "wmtp/model/checkpoint.py", "wmtp/training/checkpoint.py", "wmtp/data/synth/a.py",
                 "wmtp/model/__init__.py", "wmtp/training/__init__.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text('"""x."""\n')
    assert names_used_twice(tmp_path) == {
        "a.py": {"wmtp/a.py", "wmtp/data/synth/a.py"},
        "checkpoint.py": {"wmtp/model/checkpoint.py", "wmtp/training/checkpoint.py"},
    }
