"""Evaluators: everything that judges a partition's series in event time, behind one interface.

A kind of evaluator is one module and one ``Evaluator`` subclass: SLO trackers (``slo``), policy
watches (``policy``), drift detectors (``drift``). The partition pipeline holds one of each and
calls them at the same points, in the same order:

- ``watch`` when it holds a new series: the evaluator decides whether the series is one of its
  own, and keeps what it judges of it in the series' slot for its kind;
- ``window_lengths``: the tumbling windows it reads of a series, so the series keeps them;
- ``closed`` after every close (``Closes``): the windows completed, in event time, however the
  data was batched, so a replay or a backlog is judged as a live run is; events go into the
  output, alert conditions through the partition's ``Alerting``;
- ``release`` when the series is evicted;
- ``status`` for the JSON API;
- state: ``series_state`` / ``restore_series`` for what it keeps per series (a section of the
  series' record, versioned by the evaluator, which refuses a version it does not know), and
  ``writes`` / ``restore`` for what it keeps across series (under keys of its own).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from slostream.core.tumbling import Closed
from slostream.pipeline.series import Series
from slostream.pipeline.types import Output


@dataclass
class Closes:
    """What one close of some series' windows completed."""

    series: list[Series]  # the series whose watermarks were applied
    owners: np.ndarray  # their window owners
    before: np.ndarray  # their closed horizons before the close
    moved: list[int]  # which of them the close moved
    closed: Closed  # the windows completed
    steps: dict[int, list[int]]  # owner -> horizons at which a live run would have closed it before its last
    reports: list[tuple[Series, dict]]  # the completed report windows: series and SLI data
    advanced: bool  # moved by a tick or by alignment, not by measurements


class Evaluator:
    kind = ""  # names its section of a series' state and its status

    def watch(self, series: Series) -> None:
        """Start judging ``series`` if it is one of its own."""

    def window_lengths(self, group: tuple[str, str]) -> dict[int, bool]:
        """The window lengths it reads of the series of ``group``, and whether each needs quantiles."""
        return {}

    def closed(self, closes: Closes, out: Output) -> None:
        """Judge what a close completed."""

    def release(self, series: Series) -> None:
        """``series`` is evicted."""

    def status(self) -> list[dict]:
        return []

    def series_state(self, series: Series) -> bytes | None:
        """What it keeps of ``series`` (None: nothing)."""
        return None

    def restore_series(self, series: Series, state: bytes) -> None:
        """Take back what ``series_state`` gave, for a series it watches again."""

    def writes(self, partition: int) -> Iterable[tuple[str, bytes]]:
        """State kept across series, changed since the last call, as changelog writes."""
        return ()
