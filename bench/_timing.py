"""Interleaved timing of two callables, for ratios that a loaded machine cannot skew one-sidedly.

pytest-benchmark times each configuration on its own; on a shared 2-core box the load drifts
between tests. For the target ratios the two sides are also timed alternately in one loop
(A, B, A, B, ...) and compared by their medians and minimums.
"""

from __future__ import annotations

import time
from typing import Any, Callable


def interleaved(a: Callable[[], Any], b: Callable[[], Any], reps: int, warmup: int = 2) -> dict[str, float]:
    """Median and minimum seconds of ``a`` and ``b`` timed alternately ``reps`` times each."""
    for _ in range(warmup):
        a()
        b()
    ta: list[float] = []
    tb: list[float] = []
    for i in range(reps):
        # Alternate which side goes first, so neither always runs on a warm cache.
        order = ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta))
        for fn, sink in order:
            start = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - start)
    ta.sort()
    tb.sort()
    return {"a_median_s": ta[len(ta) // 2], "b_median_s": tb[len(tb) // 2],
            "a_min_s": ta[0], "b_min_s": tb[0], "reps": reps}
