"""Calibration of predicted probabilities against what happened, per window.

A measurement with a ``value`` (a predicted probability) and an ``outcome`` (0 or 1) is counted in
one of ``bins`` equal-width bins of [0, 1] (the last bin includes 1). A window keeps one row of
sums, ``3 * bins + 2`` numbers, which add across windows: per bin the count, the sum of
predictions and the sum of outcomes, then the sum of squared errors and the count of values
outside [0, 1] (the model misbehaving: counted, left out of the statistics, never dead-lettered).

- ``ece``, the expected calibration error: the bins' gaps between mean prediction and outcome rate,
  weighted by their share of the ``n`` measurements, which is ``sum |sum_p - sum_y| / n``;
- ``ece_bound`` = max(0.015, c * sqrt(bins / n)): the SLO's threshold (``ece_excess`` =
  ``ece - ece_bound``);
- ``ece_chance``, the ECE a perfectly calibrated model is expected to show at these bin counts,
  sqrt(2/pi) * sum_b sqrt(n_b * p_b * (1 - p_b)) / n (``p_b`` the bin's mean prediction): each
  bin's gap ``sum_y - sum_p`` is then about normal with variance n_b * p_b * (1 - p_b), whose mean
  absolute value is sqrt(2/pi) times its deviation;
- ``miscalibration_p``, the p-value of the hypothesis that the model is calibrated: the bins'
  squared gaps over those variances sum to about chi-squared with as many degrees of freedom as
  bins with a variance (the predictions are given, not fitted here; Hosmer and Lemeshow's test
  without the fitting). The bins' mean predictions stand for each prediction, which overstates the
  variance (Jensen): the test errs on the side of not firing;
- ``brier``, the mean squared error of the predictions.

>>> row = calibration_row(np.array([0.1, 0.15, 0.8, 0.95]), np.array([0, 0, 1, 0]), bins=10)
>>> stats = calibration_stats(row, bins=10, bound_c=1.0)
>>> stats["n"], round(stats["ece"], 4), round(stats["brier"], 4), stats["out_of_range"]
(4, 0.35, 0.2437, 0)
>>> round(stats["ece_chance"], 3), f"{stats['miscalibration_p']:.1e}"
(0.217, '2.1e-04')
"""

from __future__ import annotations

import math
import struct

import numpy as np
from scipy import stats as scipy_stats

from .drift import Detection

MIN_ECE_BOUND = 0.015
CALIBRATION_AGGREGATES = ("ece", "ece_excess", "brier")  # what policies can watch of a window's statistics


def row_size(bins: int) -> int:
    return 3 * bins + 2


def calibration_row(values: np.ndarray, outcomes: np.ndarray, bins: int) -> np.ndarray:
    """The sums of ``values`` against ``outcomes`` (0 or 1)."""
    return calibration_rows(values, outcomes, np.zeros(values.size, dtype=np.int64), 1, bins)[0]


def calibration_rows(values: np.ndarray, outcomes: np.ndarray, groups: np.ndarray, n_groups: int,
                     bins: int) -> np.ndarray:
    """One row of sums per group (``groups``: 0 to ``n_groups`` - 1 per measurement)."""
    rows = np.zeros((n_groups, row_size(bins)))
    add_calibration(rows, values, outcomes, groups, bins)
    return rows


def add_calibration(rows: np.ndarray, values: np.ndarray, outcomes: np.ndarray, groups: np.ndarray,
                    bins: int) -> None:
    """Add measurements to the rows of their groups, in place. The sums are left folds in arrival
    order (``np.add.at``), not sums of partial sums: however a log is cut into batches, a window's
    statistics come out the same to the last bit."""
    inside = (values >= 0.0) & (values <= 1.0)
    np.add.at(rows[:, 3 * bins + 1], groups[~inside], 1.0)
    v, y, g = values[inside], outcomes[inside].astype(np.float64), groups[inside]
    cell = np.minimum((v * bins).astype(np.int64), bins - 1)
    np.add.at(rows, (g, cell), 1.0)
    np.add.at(rows, (g, bins + cell), v)
    np.add.at(rows, (g, 2 * bins + cell), y)
    np.add.at(rows[:, 3 * bins], g, (v - y) ** 2)


def calibration_stats(row: np.ndarray, bins: int, bound_c: float) -> dict:
    """The readable statistics of a row (``n`` 0: no statistic, null)."""
    n = int(row[:bins].sum())
    out_of_range = int(row[3 * bins + 1])
    if n == 0:
        return {"n": 0, "ece": None, "ece_bound": None, "ece_excess": None, "ece_chance": None,
                "miscalibration_p": None, "brier": None, "out_of_range": out_of_range}
    gaps = row[2 * bins:3 * bins] - row[bins:2 * bins]
    ece = float(np.abs(gaps).sum() / n)
    bound = max(MIN_ECE_BOUND, bound_c * math.sqrt(bins / n))
    variances = gap_variances(row, bins)
    return {"n": n, "ece": ece, "ece_bound": bound, "ece_excess": ece - bound,
            "ece_chance": float(math.sqrt(2 / math.pi) * np.sqrt(variances).sum() / n),
            "miscalibration_p": chi_squared_p(gaps, variances), "brier": float(row[3 * bins] / n),
            "out_of_range": out_of_range}


def gap_variances(row: np.ndarray, bins: int) -> np.ndarray:
    """Each bin's variance of ``sum_y - sum_p`` for a calibrated model: n_b * p_b * (1 - p_b)."""
    counts = row[:bins]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, row[bins:2 * bins] / counts, 0.0)
    return counts * means * (1.0 - means)


def chi_squared_p(gaps: np.ndarray, variances: np.ndarray) -> float:
    """The p-value of gaps this large for independent bins of these variances. A bin without
    variance (every prediction 0 or 1) that missed by a whole outcome is certain miscalibration."""
    held = variances > 0
    if np.any(~held & (np.abs(gaps) >= 0.5)):
        return 0.0
    if not held.any():
        return 1.0
    return float(scipy_stats.chi2.sf(float((gaps[held] ** 2 / variances[held]).sum()), int(held.sum())))


WEEK_S = 7 * 86400
_MONDAY = 4 * 86400  # Unix time 0 was a Thursday: weeks run Monday 00:00 UTC to Monday
_WEEKS_HEAD = struct.Struct("<BqH")  # version, the week summed, bins; then the reference and the week's rows
WEEKS_STATE_VERSION = 2
# Each earlier week's weight in the reference a week is tested against: 0.85 per week makes it
# about 6.7 weeks' worth, so a change is judged against a steadier past than one week (a 5-point
# shift at 1,000 predictions a week: found in about 93% of weeks, against about 78% with the week
# before alone), and a lasting change is most of the reference within two months.
REFERENCE_DECAY = 0.85
# Of the significance level: the ECE test's share; the Brier test has the rest. A shift in
# calibration moves the ECE and hardly the Brier score, which moves with sharpness instead.
ECE_SHARE = 0.9


def in_the_large_p(week: np.ndarray, reference: np.ndarray, bins: int) -> float:
    """p-value of the week's mean gap (outcome minus prediction) being the reference's: a z-test
    with each one's calibrated-model variance (``gap_variances``)."""
    n1, n0 = week[:bins].sum(), reference[:bins].sum()
    gap1 = (week[2 * bins:3 * bins] - week[bins:2 * bins]).sum() / n1
    gap0 = (reference[2 * bins:3 * bins] - reference[bins:2 * bins]).sum() / n0
    variance = gap_variances(week, bins).sum() / n1 ** 2 + gap_variances(reference, bins).sum() / n0 ** 2
    if variance <= 0:
        return 1.0 if gap1 == gap0 else 0.0
    return float(2 * scipy_stats.norm.sf(abs(gap1 - gap0) / math.sqrt(variance)))


def brier_p(week: np.ndarray, reference: np.ndarray, bins: int) -> float:
    """p-value of the week's Brier score being the reference's: a z-test with each one's
    calibrated-model variance, p(1-p)(1-2p)^2 per prediction, taken at the end of each bin further
    from 1/2 (the variance at the bin's mean would understate it)."""
    edges = np.arange(bins) / bins
    far = np.maximum(np.abs(1 - 2 * edges), np.abs(1 - 2 * (edges + 1 / bins))) ** 2

    def mean_and_variance(row: np.ndarray) -> tuple[float, float]:
        n = row[:bins].sum()
        return row[3 * bins] / n, float((gap_variances(row, bins) * far).sum() / n ** 2)

    (b1, v1), (b0, v0) = mean_and_variance(week), mean_and_variance(reference)
    if v1 + v0 <= 0:
        return 1.0 if b1 == b0 else 0.0
    return float(2 * scipy_stats.norm.sf(abs(b1 - b0) / math.sqrt(v1 + v0)))


class CalibrationWeeks:
    """This week's calibration sums (event time) against a reference of the weeks before it with
    data (each earlier week weighing ``REFERENCE_DECAY`` times the next): when a window of a later
    week arrives, the week summed is complete and is tested against the reference, its mean gap
    between outcome and prediction for ``ece_weekly_delta``, its Brier score for
    ``brier_weekly_delta``, each scaled by the counts of both, at ``alpha`` in all. A drop in volume
    moves neither test; a calibrated model fires in at most ``alpha`` of its weeks.

    >>> weeks = CalibrationWeeks(bins=10, alpha=0.05)
    >>> rng = np.random.default_rng(1)
    >>> def week(w, skew):  # a week of predictions whose outcomes run ``skew`` above them
    ...     p = rng.random(1000)
    ...     return calibration_row(p, (rng.random(1000) < np.clip(p + skew, 0, 1)).astype(np.int8), 10)
    >>> [weeks.update(_MONDAY + w * WEEK_S, week(w, skew)) for w, skew in ((0, 0.0), (1, 0.0), (2, 0.0), (3, 0.1))]
    [[], [], [], []]
    >>> [(a, round(d.before, 2), round(d.after, 2)) for a, d in weeks.update(_MONDAY + 4 * WEEK_S, week(4, 0.0))]
    [('ece_weekly_delta', 0.02, 0.1)]
    """

    __slots__ = ("bins", "alpha", "week", "row", "reference")

    def __init__(self, bins: int, alpha: float):
        self.bins, self.alpha = bins, alpha
        self.week = -1  # the week being summed (-1: none yet)
        self.row = np.zeros(row_size(bins))
        self.reference = np.zeros(row_size(bins))  # the decayed sums of the weeks before with data

    def update(self, window_start: float, row: np.ndarray) -> list[tuple[str, Detection]]:
        """A window's sums: the weekly changes its week's start completes."""
        week = int((window_start - _MONDAY) // WEEK_S)
        found = []
        if week > self.week >= 0:
            if self.row[:self.bins].sum() > 0:
                found = self._tested(_MONDAY + self.week * WEEK_S)
                self.reference = REFERENCE_DECAY * self.reference + self.row
            self.row = np.zeros(row_size(self.bins))
        if week >= self.week:
            self.week = week
            self.row += row
        return found

    def _tested(self, start: float) -> list[tuple[str, Detection]]:
        bins, week, reference = self.bins, self.row, self.reference
        if reference[:bins].sum() <= 0:
            return []
        before, after = calibration_stats(reference, bins, 1.0), calibration_stats(week, bins, 1.0)
        found = []
        for aggregate, p_value, level, statistic in (
                ("ece_weekly_delta", in_the_large_p(week, reference, bins), ECE_SHARE * self.alpha, "ece"),
                ("brier_weekly_delta", brier_p(week, reference, bins), (1 - ECE_SHARE) * self.alpha, "brier")):
            if p_value < level:
                found.append((aggregate, Detection(start + WEEK_S, start, before[statistic], after[statistic])))
        return found

    def to_state(self) -> bytes:
        head = _WEEKS_HEAD.pack(WEEKS_STATE_VERSION, self.week, self.bins)
        return head + self.reference.astype("<f8").tobytes() + self.row.astype("<f8").tobytes()

    @classmethod
    def from_state(cls, state: bytes, alpha: float) -> CalibrationWeeks:
        """Version 1 (a week against the one before, by an absolute delta) starts afresh."""
        version = state[0] if state else None
        if version == 1:
            return cls(struct.unpack_from("<H", state, 25)[0], alpha)
        if version != WEEKS_STATE_VERSION:
            raise ValueError(f"unsupported calibration weeks state version {version} "
                             f"(this version reads {WEEKS_STATE_VERSION})")
        _, week, bins = _WEEKS_HEAD.unpack_from(state)
        weeks = cls(bins, alpha)
        weeks.week = week
        size = row_size(bins)
        weeks.reference = np.frombuffer(state, "<f8", size, _WEEKS_HEAD.size).copy()
        weeks.row = np.frombuffer(state, "<f8", size, _WEEKS_HEAD.size + 8 * size).copy()
        return weeks
