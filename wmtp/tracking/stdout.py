"""Human-facing progress: a tqdm bar (step/total, loss, tokens/s, ETA) plus periodic text lines.

The bar draws only on a terminal (`disable=None`); in CI logs and Ray worker logs the periodic lines
are the output. Which metric feeds the bar is found by name: `loss` or any key ending in `/loss`
(the first such key), and any key ending in `tokens_per_s`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from wmtp.tracking.redaction import redact


def _find(metrics: Mapping[str, float], match) -> float | None:
    for key, value in metrics.items():
        if match(key):
            return value
    return None


def _fmt(value: float) -> str:
    if isinstance(value, float) and (value == 0 or math.isfinite(value) and 1e-3 <= abs(value) < 1e5):
        return f"{value:.4f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class StdoutLogger:
    """Progress bar on stderr (terminals only) and one line per `line_every` steps on `stream`."""

    def __init__(
        self,
        total_steps: int | None = None,
        *,
        run_name: str | None = None,
        line_every: int = 1,
        stream: TextIO | None = None,
        show_bar: bool | None = None,
    ):
        from tqdm.auto import tqdm

        self.stream = stream if stream is not None else sys.stdout
        self.line_every = max(1, line_every)
        self.run_name = run_name
        self._last_line_step: int | None = None
        # disable=None: tqdm turns itself off when stderr is not a TTY.
        self._bar = tqdm(
            total=total_steps,
            desc=run_name,
            unit="step",
            dynamic_ncols=True,
            disable=None if show_bar is None else not show_bar,
            leave=True,
        )
        self._closed = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        # A summary, not the whole config: the full params are in MLflow / the run dir.
        safe = redact(params)
        self._write(f"[{self.run_name or 'run'}] {len(safe)} params logged")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        loss = _find(metrics, lambda k: k == "loss" or k.endswith("/loss"))
        tps = _find(metrics, lambda k: k.endswith("tokens_per_s"))
        if self._bar.n != step:
            self._bar.update(step - self._bar.n)
        postfix = {}
        if loss is not None:
            postfix["loss"] = _fmt(loss)
        if tps is not None:
            postfix["tok/s"] = f"{tps:.0f}"
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        if self._last_line_step is None or step - self._last_line_step >= self.line_every:
            self._last_line_step = step
            total = f"/{self._bar.total}" if self._bar.total else ""
            body = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
            self._write(f"step {step}{total} {body}")

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        where = f" -> {artifact_path}" if artifact_path else ""
        self._write(f"artifact {local_path}{where}")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bar.close()

    def _write(self, line: str) -> None:
        # tqdm.write keeps the bar intact when both share a terminal.
        self._bar.write(line, file=self.stream)
