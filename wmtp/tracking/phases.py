"""Wall time by phase of one training process (setup, validation, checkpoints, export, ...).

    with timed("checkpoints"):
        sink.save(...)
    phase_seconds() -> {"setup": 3.1, "loop": 30.2, "validation": 2.0, "checkpoints": 1.2, ...}

One process-wide table (a training process runs one stage at a time; `reset_phases()` starts a
stage). Pure Python: recipes may use it. The end-of-run summary (`wmtp.tracking.console`) turns
`loop` into `steps` = loop − validation − checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

_SECONDS: dict[str, float] = {}


def reset_phases() -> None:
    _SECONDS.clear()


def add_phase(name: str, seconds: float) -> None:
    _SECONDS[name] = _SECONDS.get(name, 0.0) + float(seconds)


@contextmanager
def timed(name: str) -> Iterator[None]:
    """Add the wall time of the block to phase `name` (also when it raises)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        add_phase(name, time.perf_counter() - t0)


def phase_seconds() -> dict[str, float]:
    return dict(_SECONDS)
