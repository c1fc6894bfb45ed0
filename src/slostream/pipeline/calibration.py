"""Calibration statistics of series that publish model scores: a measurement with a ``value`` (a
predicted probability) and an ``outcome`` adds to the calibration sums (``core.calibration``) of
its series' open windows: the report window, and those of policies on ``ece``, ``ece_excess`` or
``brier``. When a window closes its sums become statistics: the SLI event's ``calibration``, and
what such policies judge. Only series that send outcomes hold any of this."""

from __future__ import annotations

import struct

import numpy as np

from slostream.core.calibration import CALIBRATION_AGGREGATES, add_calibration, calibration_stats, row_size
from slostream.core.closed import Closed
from slostream.pipeline.series import Series
from slostream.pipeline.types import PipelineConfig

STATE_VERSION = 1
_HEAD = struct.Struct("<BHI")  # version, bins, open windows
_WINDOW = struct.Struct("<qq")  # length, start (then the window's row of float64 sums)


class Calibration:
    kind = "calibration"

    def __init__(self, config: PipelineConfig):
        self.bins = config.calibration_bins
        self.bound_c = config.calibration_bound_c
        self.report_s = config.report_window_s
        self.policy_lengths: dict[tuple[str, str], set[int]] = {}
        for policy in config.policies:
            if policy.aggregate in CALIBRATION_AGGREGATES:
                self.policy_lengths.setdefault((policy.service, policy.metric), set()).add(policy.window_s)
        self.owners: set[int] = set()  # window owners of the series that hold calibration sums
        self._empty = np.zeros(row_size(self.bins))

    def add(self, series_of: dict[int, Series], sids: np.ndarray, ts: np.ndarray, values: np.ndarray,
            outcomes: np.ndarray) -> None:
        """Measurements of a part of a batch (series numbers ``sids``, ascending), accepted."""
        has = np.flatnonzero(outcomes >= 0)
        if not has.size:
            return
        sids, ts, values, outcomes = sids[has], ts[has], values[has], outcomes[has]
        bounds = np.r_[0, np.flatnonzero(np.diff(sids)) + 1, sids.size]
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            series = series_of[int(sids[a])]
            if series.calibration is None:
                series.calibration = {}
                self.owners.add(series.windows.owner)
            for length in (self.report_s, *sorted(self.policy_lengths.get(series.group, ()))):
                starts, groups = np.unique(np.floor(ts[a:b] / length).astype(np.int64) * length, return_inverse=True)
                held = series.calibration
                keys = [(length, start) for start in starts.tolist()]
                rows = np.stack([held.get(key, self._empty) for key in keys])
                add_calibration(rows, values[a:b], outcomes[a:b], groups.reshape(-1), self.bins)
                held.update(zip(keys, rows))

    def take(self, closed: Closed, series_of: dict[int, Series]) -> None:
        """The statistics of the closed windows that hold calibration sums (``closed.calibration``)."""
        if not self.owners:
            return
        for i in np.flatnonzero(np.isin(closed.owners, list(self.owners))).tolist():
            series = series_of[int(closed.owners[i])]
            row = series.calibration.pop((int(closed.lengths[i]), int(closed.starts[i])), None)
            if row is not None:
                closed.calibration[i] = (calibration_stats(row, self.bins, self.bound_c), row)

    def release(self, series: Series) -> None:
        self.owners.discard(series.windows.owner)

    def series_state(self, series: Series) -> bytes | None:
        if series.calibration is None:
            return None
        parts = [_HEAD.pack(STATE_VERSION, self.bins, len(series.calibration))]
        for (length, start), row in sorted(series.calibration.items()):
            parts += (_WINDOW.pack(length, start), row.astype("<f8").tobytes())
        return b"".join(parts)

    def restore_series(self, series: Series, state: bytes) -> None:
        version, bins, count = _HEAD.unpack_from(state)
        if version != STATE_VERSION:
            raise ValueError(f"unsupported calibration state version {version} (this version reads {STATE_VERSION})")
        series.calibration = {}
        self.owners.add(series.windows.owner)
        if bins != self.bins:  # the bins setting changed: the open windows' sums cannot be rebinned
            return
        at, size = _HEAD.size, 8 * row_size(bins)
        for _ in range(count):
            length, start = _WINDOW.unpack_from(state, at)
            at += _WINDOW.size
            series.calibration[(length, start)] = np.frombuffer(state, "<f8", row_size(bins), at).copy()
            at += size
