"""The math packages import torch only: no ray, mlflow, pydantic or other wmtp packages."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "wmtp.losses.alignment", "wmtp.losses.mtp", "wmtp.losses.value",
    "wmtp.weighting.gae", "wmtp.weighting.normalize", "wmtp.weighting.weights", "wmtp.weighting.rho1",
]


def test_math_modules_load_no_heavy_or_foreign_packages():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in MODULES)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'mlflow', 'pydantic'}"
        " or (m.startswith('wmtp.') and not m.startswith(('wmtp.losses', 'wmtp.weighting'))))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
