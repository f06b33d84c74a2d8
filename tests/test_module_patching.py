"""No code in wmtp/ assigns to another module's attributes (issue 26: the memory trace once
monkeypatched eight of wmtp's functions and torch's `DeviceMesh.__getitem__`, so recipes had to
call them through their modules or the trace measured something else). What a caller must be able
to replace is passed in (`wmtp.recipes.interfaces.RecipeEnv`), never patched.

Read from the syntax: in each file, a name bound by an import (a module, or a class or function
of one) must not be the root of an assignment target (`streams.load_data = ...`,
`DeviceMesh.__getitem__ = ...`, `fsdp.FLAG = True`, also in tuple targets and `+=`), nor the
first argument of `setattr`/`delattr`, nor deleted from (`del module.attr`).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "wmtp"


def imported_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names if a.name != "*"}
    return names


def root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript):
        if isinstance(node, ast.Subscript):
            return None  # `os.environ[...] = ...` changes a mapping, not an attribute
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def targets(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.Assign):
        found = list(node.targets)
    elif isinstance(node, ast.AugAssign | ast.AnnAssign):
        found = [node.target]
    elif isinstance(node, ast.Delete):
        found = list(node.targets)
    else:
        return []
    flat: list[ast.AST] = []
    while found:
        t = found.pop()
        if isinstance(t, ast.Tuple | ast.List):
            found += t.elts
        elif isinstance(t, ast.Starred):
            found.append(t.value)
        else:
            flat.append(t)
    return flat


def patches_in(source: str, filename: str) -> list[str]:
    """`file:line: text` of every assignment to (or deletion of) an imported object's attribute."""
    tree = ast.parse(source, filename)
    imported = imported_names(tree)
    lines = source.splitlines()
    found = []
    for node in ast.walk(tree):
        hits = [t for t in targets(node) if isinstance(t, ast.Attribute) and root_name(t) in imported]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("setattr", "delattr") and node.args and root_name(node.args[0]) in imported):
            hits.append(node)
        if hits:
            found.append(node.lineno)
    return [f"{filename}:{n}: {lines[n - 1].strip()}" for n in sorted(found)]


def test_the_scan_finds_each_form_of_patching():
    source = "\n".join([
        "import torch.distributed as dist", "from wmtp.data import streams", "from x import Mesh",
        "streams.load_data = 1", "a, streams.BatchStream.next = 1, 2", "Mesh.__getitem__ = f",
        "dist.flag += 1", "setattr(streams, 'load_data', 1)", "del Mesh.attr",
        # not patching: own objects, mappings, locals
        "self = object(); self.x = 1", "streams2 = 1", "import os; os.environ['A'] = '1'",
    ])
    assert [f.split(":")[1] for f in patches_in(source, "t.py")] == ["4", "5", "6", "7", "8", "9"]


def test_no_module_attribute_is_patched_in_wmtp():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += patches_in(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert not found, "assignments to another module's attributes (pass the part in instead):\n" + "\n".join(found)
