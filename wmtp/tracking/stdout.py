"""Human-facing progress: a tqdm bar (step/total, loss, tokens/s, ETA) plus periodic text lines.

The bar draws only on a terminal (`disable=None`); in CI logs and Ray worker logs the periodic lines
are the output. Which metric feeds the bar is found by name: `loss` or any key ending in `/loss`
(the first such key), and any key ending in `tokens_per_s`.
"""

from __future__ import annotations

import datetime
import math
import sys
import time
from collections.abc import Callable, Mapping
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
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream = stream if stream is not None else sys.stdout
        self.line_every = max(1, line_every)
        self.run_name = run_name
        self.total_steps = total_steps
        # disable=None: tqdm turns itself off when stderr is not a TTY.
        self._disable = None if show_bar is None else not show_bar
        self._bar = None  # made at the first step logged, so a resumed run's bar starts there
        self._last_line_step: int | None = None
        self._closed = False
        self._clock = clock
        self._origin: tuple[float, int] | None = None  # (time, step) of the first step logged

    def _progress(self, step: int):
        if self._bar is None:
            from tqdm.auto import tqdm

            # initial=step: the rate and ETA count only steps run in this process.
            self._bar = tqdm(total=self.total_steps, initial=step, desc=self.run_name, unit="step",
                             dynamic_ncols=True, disable=self._disable, leave=True)
        return self._bar

    def log_params(self, params: Mapping[str, Any]) -> None:
        # A summary, not the whole config: the full params are in MLflow / the run dir.
        safe = redact(params)
        self._write(f"[{self.run_name or 'run'}] {len(safe)} params logged")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        loss = _find(metrics, lambda k: k == "loss" or k.endswith("/loss"))
        tps = _find(metrics, lambda k: k.endswith("tokens_per_s"))
        bar = self._progress(step)
        if bar.n != step:
            bar.update(step - bar.n)
        postfix = {}
        if loss is not None:
            postfix["loss"] = _fmt(loss)
        if tps is not None:
            postfix["tok/s"] = f"{tps:.0f}"
        if postfix:
            bar.set_postfix(postfix, refresh=False)
        if self._last_line_step is None or step - self._last_line_step >= self.line_every:
            self._last_line_step = step
            total = f"/{self.total_steps}" if self.total_steps else ""
            body = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
            self._write(f"step {step}{total} {body}{self._eta(step)}")

    def _eta(self, step: int) -> str:
        """` eta=H:MM:SS` from the pace since the first logged step (the bar is off in logs)."""
        now = self._clock()
        if self._origin is None:
            self._origin = (now, step)
        t0, s0 = self._origin
        if not self.total_steps or step <= s0 or now <= t0:
            return ""
        remaining = (self.total_steps - step) * (now - t0) / (step - s0)
        return f" eta={datetime.timedelta(seconds=round(max(0.0, remaining)))}"

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        where = f" -> {artifact_path}" if artifact_path else ""
        self._write(f"artifact {local_path}{where}")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._bar is not None:
                self._bar.close()

    def _write(self, line: str) -> None:
        from tqdm.auto import tqdm

        # tqdm.write keeps the bar intact when both share a terminal.
        tqdm.write(line, file=self.stream)
