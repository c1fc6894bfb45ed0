"""The textbook calibration statistics, computed the slow way, for tests to check against."""

import numpy as np


def brute_force_calibration(values: np.ndarray, outcomes: np.ndarray, bins: int) -> tuple[float, float, int]:
    """ECE as the textbook defines it: per bin, its share times |mean prediction - outcome rate|."""
    inside = (values >= 0) & (values <= 1)
    v, y = values[inside], outcomes[inside]
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        chosen = (v >= lo) & ((v < hi) if b < bins - 1 else (v <= hi))
        if chosen.any():
            ece += chosen.mean() * abs(v[chosen].mean() - y[chosen].mean())
    return ece, float(np.mean((v - y) ** 2)), int((~inside).sum())
