"""Type checking is part of the suite: mypy with the project's settings (`[tool.mypy]` in
pyproject.toml: strict on wmtp.losses, .weighting, .model and .config, mypy's default level on the
rest of wmtp, and tests/protocol_conformance.py, where every implementation of a recipe-facing
Protocol is given where that Protocol is expected). docs/ARCHITECTURE.md "Types".

One cold check (its own cache in a temporary folder) and two edits that must fail it, read from the
same cache: a Protocol implementation that drifted, and an unannotated function in a strict package.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def mypy(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy-cache")


def test_wmtp_type_checks(cache: Path) -> None:
    result = mypy(cache)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_a_drifted_protocol_implementation_fails(cache: Path, tmp_path: Path) -> None:
    drifted = tmp_path / "drifted_sink.py"
    drifted.write_text(
        "from collections.abc import Callable\n"
        "from pathlib import Path\n\n"
        "from wmtp.recipes.interfaces import CheckpointSink\n\n\n"
        "class DriftedSink:  # save() lost its metrics parameter\n"
        "    def latest(self) -> Path | None:\n"
        "        return None\n\n"
        "    def save(self, step: int, write: Callable[[Path], None]) -> None:\n"
        "        pass\n\n\n"
        "def sinks(sink: DriftedSink) -> list[CheckpointSink]:\n"
        "    return [sink]\n")
    result = mypy(cache, str(drifted))
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'incompatible type "DriftedSink"; expected "CheckpointSink"' in result.stdout, result.stdout


def test_an_unannotated_function_in_a_strict_package_fails(cache: Path, tmp_path: Path) -> None:
    module = ROOT / "wmtp" / "losses" / "value.py"
    edited = tmp_path / "value.py"
    edited.write_text(module.read_text() + "\n\ndef unannotated(x):\n    return x\n")
    result = mypy(cache, "--shadow-file", str(module), str(edited), str(module))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Function is missing a type annotation  [no-untyped-def]" in result.stdout, result.stdout
