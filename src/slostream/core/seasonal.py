"""A seasonal baseline learned online: what an aggregate of a series usually is at this hour of the
day, or of the week.

Latency and traffic follow daily and weekly cycles, so a detector fed the raw per-window p95 fires
every morning. Detectors (and threshold models) read what is left after this baseline instead.
It keeps, for each of the 168 hours of the week (UTC), a time-decayed sum and weight of the values
seen in that hour (float32: 1.3 kB), and a decayed level of all values with a shorter half-life.
Its expectation at event time ``ts`` is, from the most specific source that has data:

- ``weekly``: the decayed mean of that hour of the week, once two weeks have been seen;
- ``daily``: the decayed mean of the seven hours of the week at that hour of the day (their sums
  and weights added), once two days have been seen;
- ``level``: the decayed mean of everything, before that.

Weights decay with event time, not with the number of updates: windows arrive with gaps, and a
series that reports twice as often must not forget twice as fast. They are kept as forward
decay (Cormode et al., "Forward decay", ICDE 2009): a value seen at ``t`` weighs
``2 ** ((t - landmark) / half_life)``, so a mean never needs a decay step, only a rescaling when
the landmark moves. river's ``HoltWinters`` needs one update per regular step, which closed
windows with gaps are not.

>>> b = SeasonalBaseline()
>>> day = 86400
>>> for t in range(0, 3 * day, 600):  # three days: 100 from 8:00 to 20:00 UTC, 50 otherwise
...     _ = b.update(t, 100.0 if 8 <= (t // 3600) % 24 < 20 else 50.0)
>>> [(source, round(value, 3)) for source, value in (b.estimate(3 * day + 9 * 3600), b.estimate(3 * day + 3600))]
[('daily', 100.0), ('daily', 50.0)]
"""

from __future__ import annotations

import math
import struct
from array import array

import numpy as np

HOURS_OF_WEEK = 168
# 3: binary (a head, then the sums and weights as float32), 1.4 kB; 2 was JSON and base64.
STATE_VERSION = 3
_HEAD = struct.Struct("<B7d")  # version, half-lives, landmark, level sum and weight, first and newest event time
STATE_BYTES = _HEAD.size + 2 * 4 * HOURS_OF_WEEK
_DAILY_AFTER_S = 2 * 86400
_WEEKLY_AFTER_S = 14 * 86400
# The sums and weights by hour are float32 (their means are good to about 1e-6 relative); weights
# are rescaled before one passes 2**100, well inside float32's range.
_MAX_EXPONENT = 100.0


class SeasonalBaseline:
    """Decayed means by hour of week, combined by hour of day, and a level (see the module)."""

    __slots__ = ("half_life_s", "level_half_life_s", "_landmark", "_sums", "_weights", "_level_sum",
                 "_level_weight", "first_ts", "newest_ts")

    def __init__(self, half_life_s: float = 7 * 86400.0, level_half_life_s: float = 3600.0):
        if half_life_s <= 0 or level_half_life_s <= 0:
            raise ValueError("half-lives must be positive")
        self.half_life_s = half_life_s
        self.level_half_life_s = level_half_life_s
        self._landmark = math.nan  # event time at which a weight is 1
        # Python arrays, not numpy: one element read or written is ten times cheaper, and the rare
        # whole-array steps take a numpy view of the same memory.
        self._sums = array("f", bytes(4 * HOURS_OF_WEEK))
        self._weights = array("f", bytes(4 * HOURS_OF_WEEK))
        self._level_sum = 0.0
        self._level_weight = 0.0
        self.first_ts = math.nan
        self.newest_ts = math.nan

    def estimate(self, ts: float, weekly: bool = True) -> tuple[str, float]:
        """The baseline at event time ``ts``, and its source: ``weekly``, ``daily``, ``level``, or
        ``none`` (NaN: no value seen yet)."""
        if not self._level_weight:
            return "none", math.nan
        seen = self.newest_ts - self.first_ts
        hour = int(ts // 3600) % HOURS_OF_WEEK
        sums, weights = self._sums, self._weights
        if weekly and seen >= _WEEKLY_AFTER_S and weights[hour] > 0:
            return "weekly", sums[hour] / weights[hour]
        if seen >= _DAILY_AFTER_S:
            h = hour % 24  # the seven hours of the week at this hour of the day, summed one by one (fastest)
            weight = (weights[h] + weights[h + 24] + weights[h + 48] + weights[h + 72] + weights[h + 96]
                      + weights[h + 120] + weights[h + 144])
            if weight > 0:
                return "daily", (sums[h] + sums[h + 24] + sums[h + 48] + sums[h + 72] + sums[h + 96] + sums[h + 120]
                                 + sums[h + 144]) / weight
        return "level", self._level_sum / self._level_weight

    def overall(self) -> float:
        """The decayed mean of every value by the weekly half-life (NaN before any)."""
        weight = float(np.frombuffer(self._weights, dtype=np.float32).sum(dtype=np.float64))
        if not weight:
            return math.nan
        return float(np.frombuffer(self._sums, dtype=np.float32).sum(dtype=np.float64)) / weight

    def level(self) -> float:
        """The decayed mean of every value (half-life ``level_half_life_s``; NaN before any)."""
        return self._level_sum / self._level_weight if self._level_weight else math.nan

    def update(self, ts: float, value: float) -> None:
        """Learn ``value`` seen at event time ``ts``."""
        landmark = self._landmark
        if landmark != landmark:  # NaN: the first value
            landmark = self._landmark = self.first_ts = self.newest_ts = ts
        if ts < self.first_ts:
            self.first_ts = ts
        if ts > self.newest_ts:
            self.newest_ts = ts
        if ts - landmark > _MAX_EXPONENT * self.level_half_life_s or ts - landmark > _MAX_EXPONENT * self.half_life_s:
            self._move_landmark(ts)
            landmark = ts
        hour = int(ts // 3600) % HOURS_OF_WEEK
        weight = 2.0 ** ((ts - landmark) / self.half_life_s)
        self._sums[hour] += weight * value
        self._weights[hour] += weight
        level_weight = 2.0 ** ((ts - landmark) / self.level_half_life_s)
        self._level_sum += level_weight * value
        self._level_weight += level_weight

    def change_level(self, before: float, after: float, keep: np.ndarray | None = None,
                     daily: bool = False) -> None:
        """Move every expectation from the level ``before`` to ``after`` (a detected change), keeping
        the cycles: by their ratio when both are positive (latency and traffic cycles scale with
        their level), else by their difference. The hours of the week ``keep`` marks (168 bools)
        stay as they are; with ``daily`` (expectations read from the seven hours of each hour of the
        day), the others of each hour of the day move by a ratio so far that its expectation moves
        as asked, at most its square."""
        sums = np.frombuffer(self._sums, dtype=np.float32).reshape(7, 24)
        weights = np.frombuffer(self._weights, dtype=np.float32).reshape(7, 24)
        moved = np.ones((7, 24), dtype=bool) if keep is None else ~keep.reshape(7, 24)
        if before > 0 and after > 0:
            ratio = np.full(24, after / before)
            if daily and keep is not None:
                moving, staying = (sums * moved).sum(axis=0), (sums * ~moved).sum(axis=0)
                wide = np.where(moving > 0, ratio + (ratio - 1) * staying / np.where(moving > 0, moving, 1.0), ratio)
                ratio = np.clip(wide, np.minimum(ratio, ratio ** 2), np.maximum(ratio, ratio ** 2))
            sums *= np.where(moved, ratio[None, :], 1.0).astype(np.float32)
            self._level_sum *= after / before
        else:
            sums += np.where(moved, (after - before) * weights, 0.0).astype(np.float32)
            self._level_sum += (after - before) * self._level_weight

    def shift_hours(self, hours: int) -> None:
        """Move the hourly profile ``hours`` later (a service on local time whose clocks moved): what
        was expected at one hour is expected ``hours`` after it."""
        for column in (self._sums, self._weights):
            view = np.frombuffer(column, dtype=np.float32)
            view[:] = np.roll(view, hours)

    def _move_landmark(self, ts: float) -> None:
        """Rescale every weight to a landmark at ``ts`` (the means are unchanged)."""
        shift = ts - self._landmark
        for column in (self._sums, self._weights):
            np.frombuffer(column, dtype=np.float32)[:] *= 2.0 ** (-shift / self.half_life_s)
        scale = 2.0 ** (-shift / self.level_half_life_s)
        self._level_sum *= scale
        self._level_weight *= scale
        self._landmark = ts

    def to_state(self) -> bytes:
        """``STATE_BYTES`` bytes; ``from_state`` gives a baseline that goes on exactly alike."""
        head = _HEAD.pack(STATE_VERSION, self.half_life_s, self.level_half_life_s, self._landmark, self._level_sum,
                          self._level_weight, self.first_ts, self.newest_ts)
        return head + self._sums.tobytes() + self._weights.tobytes()  # little-endian: see DriftWatch.to_state

    @classmethod
    def from_state(cls, state: bytes) -> SeasonalBaseline:
        if state[:1] != bytes((STATE_VERSION,)) or len(state) != STATE_BYTES:
            raise ValueError(f"unsupported seasonal baseline state version {state[0] if state else None!r} "
                             f"(this version reads {STATE_VERSION}, {STATE_BYTES} bytes)")
        _, half_life, level_half_life, landmark, level_sum, level_weight, first, newest = _HEAD.unpack_from(state)
        baseline = cls(half_life, level_half_life)
        baseline._landmark, baseline._level_sum, baseline._level_weight = landmark, level_sum, level_weight
        baseline.first_ts, baseline.newest_ts = first, newest
        middle = _HEAD.size + 4 * HOURS_OF_WEEK
        baseline._sums, baseline._weights = array("f", state[_HEAD.size:middle]), array("f", state[middle:])
        return baseline
