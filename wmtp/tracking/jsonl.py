"""Append-only JSON-lines log of a run: the machine-readable record tests read losses back from.

One JSON object per call, flushed immediately so a killed run keeps everything logged before:
  {"step": 10, "metrics": {"train/loss": 2.3}}
  {"params": {"optim.lr": "0.003"}}
  {"artifact": "/abs/path", "artifact_path": "heatmaps"}
Reruns append to the same file (a resumed run shows the steps after the resume once more if they
were logged before the kill; `metric_series` keeps the last value per step).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wmtp.config.redaction import redact


def _jsonable(value: float) -> float | str:
    # JSON has no NaN/inf; keep them readable and round-trippable through float().
    value = float(value)
    return value if math.isfinite(value) else str(value)


class JsonlLogger:
    """Writes `<path>` (usually `<run_dir>/metrics.jsonl`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._write({"params": {k: str(v) for k, v in redact(params).items()}})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._write({"step": int(step), "metrics": {k: _jsonable(v) for k, v in metrics.items()}})

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self._write({"artifact": str(Path(local_path).resolve()), "artifact_path": artifact_path})

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def _write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, sort_keys=False) + "\n")
        self._fh.flush()


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a JSONL log, in order."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def metric_series(path: str | Path, key: str) -> list[tuple[int, float]]:
    """`[(step, value)]` of one metric sorted by step; the last logged value wins per step."""
    by_step: dict[int, float] = {}
    for rec in read_records(path):
        if "metrics" in rec and key in rec["metrics"]:
            by_step[rec["step"]] = float(rec["metrics"][key])
    return sorted(by_step.items())
