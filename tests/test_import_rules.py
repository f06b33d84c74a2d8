"""The dependency rules of the package layout (README "Where things live"; import-linter contracts in pyproject), enforced three ways.

(a) import-linter contracts from pyproject.toml; (b) importing the pure packages in a fresh
interpreter loads no ray/mlflow (and weighting/losses no pydantic); (c) no module outside
wmtp/orchestration imports ray at module level, and mlflow is imported only inside functions of
wmtp/tracking/mlflow*.py.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "wmtp"


def _importlinter_ini(settings: dict) -> str:
    """pyproject's [tool.importlinter] as an INI file, with external packages included.

    Forbidding external modules (ray, mlflow, pydantic) needs `include_external_packages = True`,
    which pyproject.toml does not set yet; this keeps the contracts themselves in pyproject.
    """
    lines = ["[importlinter]", f"root_package = {settings['root_package']}", "include_external_packages = True", ""]
    for i, contract in enumerate(settings.get("contracts", [])):
        lines.append(f"[importlinter:contract:{i}]")
        for key, value in contract.items():
            if isinstance(value, list):
                lines.append(f"{key} =")
                lines += [f"    {v}" for v in value]
            else:
                lines.append(f"{key} = {value}")
        lines.append("")
    return "\n".join(lines)


def test_import_linter_contracts(tmp_path):
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert settings.get("contracts"), "pyproject.toml lost its import-linter contracts"
    cmd = [exe, "--no-cache"]
    if not settings.get("include_external_packages"):
        ini = tmp_path / "importlinter.ini"
        ini.write_text(_importlinter_ini(settings))
        cmd.append(str(ini))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "broken" not in done.stdout.lower().replace("0 broken", "")


IMPORT_ALL = textwrap.dedent("""
    import importlib, pkgutil, sys
    packages, forbidden = sys.argv[1].split(","), sys.argv[2].split(",")
    for name in packages:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=name + "."):
            importlib.import_module(info.name)
    loaded = sorted(m for m in forbidden if m in sys.modules)
    assert not loaded, f"importing {packages} loaded {loaded}"
""")


@pytest.mark.parametrize("packages,forbidden", [
    ("wmtp.weighting,wmtp.losses", "ray,mlflow,pydantic"),
    ("wmtp.model,wmtp.data,wmtp.recipes,wmtp.training", "ray,mlflow"),
])
def test_pure_packages_do_not_load_heavy_dependencies(packages, forbidden):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL, packages, forbidden], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


def _module_level_imports(tree: ast.Module):
    """Import nodes executed at import time (module body, including if/try blocks; not in defs)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))


def _imported_roots(node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name.split(".")[0] for a in node.names}
    return {node.module.split(".")[0]} if node.module and node.level == 0 else set()


def test_no_module_level_ray_or_mlflow_imports_outside_their_packages():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in _module_level_imports(ast.parse(path.read_text(), rel)):
            roots = _imported_roots(node)
            if "ray" in roots and not rel.startswith("wmtp/orchestration/"):
                offenders.append(f"{rel}:{node.lineno}: ray imported outside wmtp/orchestration")
            if "mlflow" in roots:
                offenders.append(f"{rel}:{node.lineno}: mlflow imported at module level (import it lazily)")
    assert not offenders, "\n".join(offenders)


def test_the_module_level_scan_sees_nested_imports():
    tree = ast.parse("try:\n    import ray\nexcept ImportError:\n    pass\ndef f():\n    import mlflow\n")
    assert [_imported_roots(n) for n in _module_level_imports(tree)] == [{"ray"}]
