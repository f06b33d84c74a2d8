"""Shared timing helpers for the benchmarks: round-robin repeats, median and spread, machine load,
peer versions. Every benchmark that compares methods runs them round-robin in one process (the
order rotates each repeat, so none is always first or last), reports the median with the
interquartile range and min–max, and prints `os.getloadavg()` before and after: on a shared
machine the ratios measured within one round-robin run are the figures that stay fair.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import platform
import re
import statistics
import time
from collections.abc import Callable


def loadavg() -> str:
    """`os.getloadavg()` as `1m/5m/15m`."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = re.search(r"model name\s*:\s*(.+)", open("/proc/cpuinfo").read()).group(1).strip()
    except (OSError, AttributeError):
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, torch threads {torch.get_num_threads()}")


def version(dist: str) -> str | None:
    """Installed version of the distribution `dist`, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def print_header(name: str, peers: dict[str, str | None]) -> None:
    """Machine, load before, and each peer's installed version ("not installed" when absent)."""
    print(f"benchmark: {name}")
    print(f"machine: {machine()}")
    print(f"loadavg before: {loadavg()}")
    for dist, v in peers.items():
        print(f"peer version: {dist} {v or 'not installed'}")


def summarize(xs: list[float]) -> dict[str, float]:
    """median, q1, q3 (inclusive quartiles), min, max of `xs`."""
    xs = sorted(xs)
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {"median": statistics.median(xs), "q1": q1, "q3": q3, "min": xs[0], "max": xs[-1], "n": len(xs)}


def fmt_ms(s: dict[str, float]) -> str:
    return (f"median {s['median'] * 1e3:9.3f} ms  IQR {s['q1'] * 1e3:.3f}–{s['q3'] * 1e3:.3f}  "
            f"min–max {s['min'] * 1e3:.3f}–{s['max'] * 1e3:.3f}  (n={s['n']})")


def rotated(items: list, r: int) -> list:
    """`items` rotated left by `r`: round r of a round-robin starts with item r (mod len)."""
    k = r % len(items)
    return items[k:] + items[:k]


def round_robin(methods: dict[str, Callable[[], object]], repeats: int, *, warmup: int = 1,
                sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each method, `repeats` rounds; round r runs the methods in an order
    rotated by r. `warmup` untimed calls each first (same rotation). `sync` runs before and after
    each timed call (e.g. `torch.cuda.synchronize`)."""
    names = list(methods)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        for n in rotated(names, r):
            gc.collect()
            if sync:
                sync()
            t0 = time.perf_counter()
            methods[n]()
            if sync:
                sync()
            if r >= warmup:
                times[n].append(time.perf_counter() - t0)
    return times


def paired_ratios(a: list[float], b: list[float]) -> list[float]:
    """a[i] / b[i] for each round (both measured in the same round)."""
    return [x / y for x, y in zip(a, b)]
