"""Per-series event time: running maxima in record order, watermarks with grace, idle advance.

Each series keeps its own clock: the newest event time it has seen, and a
watermark that trails it by the grace period. A measurement is judged against
the watermark its own series had before it, never against unrelated series that
share its partition, so a service whose clock runs ahead, or that flushes a
minute at a time, cannot make its neighbours late.

``running_max_before`` computes, for every element of a batch at once, the
largest event time its group (series) had seen before it. The verdicts depend
only on the record order, so a record sequence gets the same verdicts however it
is cut into fetch batches, and a replay reproduces the original run.

>>> before, final = running_max_before(np.array([0, 1, 0, 1]), np.array([100.0, 500.0, 90.0, 510.0]),
...                                    np.array([-np.inf, 450.0]))
>>> before.tolist(), final.tolist()
([-inf, 450.0, 100.0, 500.0], [100.0, 510.0])
>>> float(idle_watermark(max_ts=1000.0, watermark=970.0, quiet=12.0, grace=30.0, idle_after=5.0))
977.0
"""

from __future__ import annotations

import numpy as np


def running_max_before(groups: np.ndarray, values: np.ndarray, initial: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each element, the largest of ``initial[group]`` and the values of the elements before it
    in its group; and each group's largest value after all of them. ``groups`` are dense integers
    indexing ``initial``. Exact: a running maximum per group, never a float offset trick."""
    n = values.size
    final = initial.astype(np.float64, copy=True)
    if n == 0:
        return np.zeros(0), final
    # Small group numbers sort by radix, in linear time.
    keys = groups.astype(np.int16) if initial.size < 1 << 15 else groups
    order = np.argsort(keys, kind="stable")
    sorted_groups = groups[order].astype(np.int64)
    sorted_values = values[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_groups[1:] != sorted_groups[:-1])))
    ends = np.append(starts[1:], n)
    before_sorted = np.empty(n)
    if starts.size * 64 <= n:  # few groups, long runs: one accumulate per run
        for a, b in zip(starts.tolist(), ends.tolist()):
            group = sorted_groups[a]
            running = np.maximum.accumulate(sorted_values[a:b])
            before_sorted[a] = initial[group]
            np.maximum(running[:-1], initial[group], out=before_sorted[a + 1:b])
            final[group] = max(final[group], running[-1])
    else:  # many groups: ranks make every group's values one increasing band of integers
        levels, ranks = np.unique(sorted_values, return_inverse=True)
        m = levels.size
        running = np.maximum.accumulate(sorted_groups * m + ranks.reshape(-1)) - sorted_groups * m
        previous = np.empty(n, dtype=np.int64)
        previous[0] = -1
        previous[1:] = running[:-1]
        previous[starts] = -1
        before_sorted = np.where(previous >= 0, levels[np.maximum(previous, 0)], -np.inf)
        before_sorted = np.maximum(before_sorted, initial[sorted_groups])
        np.maximum.at(final, sorted_groups[ends - 1], levels[running[ends - 1]])
    before = np.empty(n)
    before[order] = before_sorted
    return before, final


def idle_watermark(max_ts, watermark, quiet, grace: float, idle_after: float) -> np.ndarray:
    """The watermark of a series that has sent nothing for ``quiet`` seconds of wall time (each
    argument but ``grace`` and ``idle_after`` a number or an array of series).

    After ``idle_after`` seconds of quiet, its event time runs on at wall speed from where the
    watermark stood, so an idle service still has its windows closed (and still burns budget).
    A producer that flushes every F seconds loses nothing as long as F <= idle_after + grace.
    """
    with np.errstate(invalid="ignore"):
        running = np.maximum(watermark, max_ts - grace + (quiet - idle_after))
    return np.where((quiet < idle_after) | (max_ts == -np.inf), watermark, running)
