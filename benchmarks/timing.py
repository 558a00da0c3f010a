"""Small timing helpers shared by the benchmarks."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_ms(fn: Callable[[], object], repeat: int = 50, warmup: int = 5) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def paired_median_ms(first: Callable[[], object], second: Callable[[], object], repeat: int = 50,
                     warmup: int = 5) -> tuple[float, float]:
    """Median wall times of ``first()`` and ``second()`` in ms, timed alternately so both see the
    same machine (a ratio of two medians taken minutes apart mostly measures the drift)."""
    for _ in range(warmup):
        first()
        second()
    a, b = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        first()
        t1 = time.perf_counter()
        second()
        t2 = time.perf_counter()
        a.append((t1 - t0) * 1e3)
        b.append((t2 - t1) * 1e3)
    return statistics.median(a), statistics.median(b)


def row(label: str, ms: float, target: str = "") -> None:
    print(f"  {label:52s} {ms:9.3f} ms  {target}")
