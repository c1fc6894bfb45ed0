"""A series held by a partition, and the clock an SLO keeps once all its series are evicted."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import orjson

from slostream.core.tumbling import TumblingWindows

if TYPE_CHECKING:
    from slostream.core.policy import PolicyWatch
    from slostream.core.tracker import SloTracker
    from slostream.pipeline.evaluators.drift import SeriesDrift
    from slostream.pipeline.evaluators.thresholds import PolicyModel


class _Clock:
    """A series' clock field, kept in the column of the same name of its window store."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, series: Series, owner=None) -> float:
        windows = series.windows
        return float(getattr(windows.store, self.name)[windows.owner])

    def __set__(self, series: Series, value: float) -> None:
        windows = series.windows
        getattr(windows.store, self.name)[windows.owner] = value


class Series:
    """A series held by a partition. Its event-time clock lives in its window store's columns, so a
    batch or a tick moves thousands of clocks with a few numpy calls. Each kind of evaluator keeps
    what it judges of the series in a slot of its own (``pipeline.evaluators``)."""

    __slots__ = ("ident", "key", "service", "metric", "labels", "windows", "last_report", "trackers", "watches",
                 "drift", "calibration", "models")

    def __init__(self, ident: tuple, key: str, service: str, metric: str, labels: dict,
                 windows: TumblingWindows):
        self.ident = ident  # the in-memory lookup key
        self.key = key
        self.service = service
        self.metric = metric
        self.labels = labels
        self.windows = windows
        # The newest SLI report as JSON: a scrape reads it, a checkpoint writes it as it is.
        self.last_report: bytes | None = None
        self.trackers: list[SloTracker] = []  # SLOs this series feeds
        self.watches: list[PolicyWatch] = []  # policies watching this series
        self.drift: SeriesDrift | None = None  # its drift watches, unless drift is off for it
        # Calibration sums of its open windows by (length, start), once it has sent an outcome.
        self.calibration: dict[tuple[int, int], np.ndarray] | None = None
        self.models: dict[str, PolicyModel] | None = None  # threshold models, by policy

    max_ts = _Clock()  # newest event time seen
    watermark = _Clock()  # max_ts - grace, or later when idle
    last_activity = _Clock()  # wall time of the last measurement

    @property
    def group(self) -> tuple[str, str]:
        """What SLOs and policies name: the series' service and metric, whatever its labels."""
        return self.service, self.metric


class IdleClock:
    """The event-time clock of an SLO none of whose series is held any more (all evicted): it runs
    on at wall speed like an idle series', so the SLO is still judged and its no-data alert fires."""

    __slots__ = ("max_ts", "watermark", "last_activity")

    def __init__(self, max_ts: float, watermark: float, last_activity: float):
        self.max_ts = max_ts
        self.watermark = watermark
        self.last_activity = last_activity


def series_key(service: str, metric: str, labels: dict) -> str:
    """A series' name in its events and state keys."""
    return orjson.dumps([service, metric, labels], option=orjson.OPT_SORT_KEYS).decode()


def held_json(value) -> bytes:
    """JSON to be kept in memory (a series' last report; state in the worker's table copy), in bytes
    of their own size: orjson's result keeps an allocation of 4-8 kB (tracemalloc: 8,150 bytes for
    a 324-byte report)."""
    return bytes(memoryview(orjson.dumps(value)))


def finite_or_none(x: float) -> float | None:
    """A clock as JSON: -inf (nothing seen yet) as null."""
    return None if x == -np.inf else float(x)


def from_finite(x: float | None) -> float:
    return -np.inf if x is None else x
