"""Progress lines of a long evaluation: work done, rate and ETA, at most one line every `every_s`.

    progress = EvalProgress("generation", total=4120, unit="samples", tasks=206, every_s=10)
    progress.update(done=16, tasks_done=0)      # prints when `every_s` has passed (or done == total)

One line per update that prints, e.g.
`[eval] generation: 320/4120 samples, 14/206 tasks done, 5.3 samples/s, ETA 11m58s`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def format_eta(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


class EvalProgress:
    """Throttled progress lines of one phase (generation, execution) of an evaluation."""

    def __init__(self, phase: str, *, total: int, unit: str, tasks: int, every_s: float = 10.0,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.phase, self.total, self.unit, self.tasks = phase, total, unit, tasks
        self.every_s, self.stream, self.clock = every_s, stream, clock
        self.t0 = self.last = clock()

    def update(self, done: int, tasks_done: int) -> None:
        now = self.clock()
        if done < self.total and now - self.last < self.every_s:
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = done / elapsed
        eta = format_eta((self.total - done) / rate) if rate > 0 else "?"
        print(f"[eval] {self.phase}: {done}/{self.total} {self.unit}, {tasks_done}/{self.tasks} tasks done, "
              f"{rate:.1f} {self.unit}/s, ETA {eta}", file=self.stream or sys.stdout, flush=True)


__all__ = ["EvalProgress", "format_eta"]
