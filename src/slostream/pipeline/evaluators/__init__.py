"""Evaluators: everything that judges a partition's series in event time, behind one interface.

A kind of evaluator is one module and one ``Evaluator`` subclass: SLO trackers (``slo``), policy
watches (``policy``), drift detectors (``drift``). The partition pipeline holds one of each and
calls them at the same points, in the same order:

- ``watch`` when it holds a new series: the evaluator decides whether the series is one of its
  own, and keeps what it judges of it in the series' slot for its kind;
- ``window_lengths``: the tumbling windows it reads of a series, so the series keeps them;
- ``ingested`` after each part of a batch is windowed (``Runs``), before the series' watermarks
  move: an SLO counts the measurements, base bucket by base bucket;
- ``closed`` after every close (``Closes``): the windows completed, in event time, however the
  data was batched, so a replay or a backlog is judged as a live run is; events go into the
  output, alert conditions through the partition's ``Alerting``;
- ``release`` when the series is evicted, after the alerts it raised about the series alone
  (``alert_labels``) are resolved and forgotten;
- ``status`` for the JSON API;
- state: ``series_state`` / ``restore_series`` for what it keeps per series (a section of the
  series' record, versioned by the evaluator, which refuses a version it does not know), and
  ``writes`` / ``restore`` for what it keeps across series (under keys of its own).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from slostream.core.closed import Closed
from slostream.pipeline import rows
from slostream.pipeline.series import Series
from slostream.pipeline.types import Output


class Runs:
    """One accepted part of a batch, windowed, as runs: a series' measurements in one base bucket,
    ordered by series, bucket and replay mark. What an evaluator reads of it is computed when first
    read (most parts feed no evaluator)."""

    def __init__(self, series: list[Series], sids: np.ndarray, starts: np.ndarray, idx: np.ndarray,
                 values: np.ndarray, oks: np.ndarray, offsets: np.ndarray, ts: np.ndarray,
                 series_of: dict[int, Series], marks_after: np.ndarray, series_firsts: np.ndarray,
                 batch: rows.Rows):
        self.series = series  # each series of the part, once
        self.values, self.oks, self.offsets = values, oks, offsets  # of every measurement, in run order
        self.idx = idx  # each measurement's row in ``batch``
        self.batch = batch
        self._sids, self._starts, self._ts, self._series_of = sids, starts, ts, series_of
        self._series_firsts, self._marks_after = series_firsts, marks_after

    @cached_property
    def bounds(self) -> list[int]:
        """Run ``i`` is measurements ``bounds[i]:bounds[i + 1]``."""
        sids, starts = self._sids, self._starts
        return [0, *(np.flatnonzero((np.diff(sids) != 0) | (np.diff(starts) != 0)) + 1).tolist(), len(sids)]

    @cached_property
    def each(self) -> list[tuple[Series, int, float, float, int, int]]:
        """Each run's series, base bucket start, the watermark its series has after the part, its
        newest event time, and its bounds."""
        bounds = self.bounds
        firsts = bounds[:-1]
        newest = np.maximum.reduceat(self._ts, firsts).tolist()
        marks_after = dict(zip(self._sids[self._series_firsts].tolist(), self._marks_after.tolist()))
        return [(series, start, max(series.watermark, marks_after[sid]), latest, a, b)
                for sid, start, latest, a, b in zip(self._sids[firsts].tolist(), self._starts[firsts].tolist(),
                                                    newest, bounds, bounds[1:])
                for series in (self._series_of[sid],)]


@dataclass
class Closes:
    """What one close of some series' windows completed."""

    series: list[Series]  # the series whose watermarks were applied
    owners: np.ndarray  # their window owners
    before: np.ndarray  # their closed horizons before the close
    moved: list[int]  # which of them the close moved
    closed: Closed  # the windows completed
    # The completed report windows: series, SLI data, and the calibration sums (``core.calibration``)
    # of a window with outcomes (else None).
    reports: list[tuple[Series, dict, np.ndarray | None]]
    advanced: bool  # moved by a tick or by alignment, not by measurements


class Evaluator:
    kind = ""  # names its section of a series' state and its status

    def watch(self, series: Series) -> None:
        """Start judging ``series`` if it is one of its own."""

    def window_lengths(self, group: tuple[str, str]) -> dict[int, bool]:
        """The window lengths it reads of the series of ``group``, and whether each needs quantiles."""
        return {}

    def ingested(self, runs: Runs) -> None:
        """Take in the measurements of a part of a batch."""

    def closed(self, closes: Closes, out: Output) -> None:
        """Judge what a close completed."""

    def alert_labels(self, series: Series) -> Iterable[dict[str, str]]:
        """The labels of the alerts it raises about ``series`` alone."""
        return ()

    def release(self, series: Series) -> None:
        """``series`` is evicted."""

    def status(self, series: Iterable[Series]) -> list[dict]:
        """Its status for the JSON API, from the partition's ``series``."""
        return []

    def series_state(self, series: Series) -> bytes | None:
        """What it keeps of ``series`` (None: nothing)."""
        return None

    def restore_series(self, series: Series, state: bytes) -> None:
        """Take back what ``series_state`` gave, for a series it watches again."""

    def writes(self, partition: int) -> Iterable[tuple[str, bytes | None]]:
        """State kept across series, changed since the last call, as changelog writes."""
        return ()
