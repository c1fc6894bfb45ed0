"""Drift of one aggregate of one series: how far its recent level sits from a seasonal baseline,
at four time scales, against thresholds each series learns from its own history, so that it
raises about ``false_per_week`` false detections a week whatever its noise, cycles and wander.

Each closed window's aggregate (a p95, an error ratio) first meets the series'
``SeasonalBaseline``. Its residual is a symmetric log (``sign(d) * log1p(|d| / (|expected| + f))``,
``d = value - expected``, ``f`` a twentieth of the series' mean: a log ratio for positive values,
defined at 0 and below), or, for an error ratio pooled over ``requests``, a Poisson z
(``d * sqrt(requests / expected)``, against the hours of the day only: an hour of the week holds
too few errors to expect from). Divided by its own running scale (its mean absolute value times
sqrt(pi / 2), a standard deviation for normal data, that one outlier moves far less than a root
mean square), the residual ``z`` has unit scale whatever the series' noise or overdispersion.

The default detector (``multiscale``) keeps exponentially weighted means of ``z`` with half-lives
of ``SCALES`` windows: the shortest finds a doubling in a window or two, the longest a small shift
of an error ratio that only hours of windows show. Each mean is divided by its own running scale
(again from its mean absolute value), which takes in what the series does routinely (day-to-day levels, wander,
autocorrelation). A **cluster** is a run of windows where that ratio exceeds ``U``; its peak's
excess over ``U`` is recorded (peaks over threshold, as SPOT, Siffer et al., KDD 2017): the
decayed count of clusters a second and their mean excess ``beta`` give an exponential tail, and
the threshold is where that tail expects ``false_per_week / 8`` clusters a week (two sides, four
scales). A series with a heavy tail, day-to-day levels or wander learns a higher threshold than
one of white noise, so its false detections a week are about what the setting asks, not what the
data's shape gives. A scale alarms once its tail has ``MIN_CLUSTERS`` clusters and the watch has
seen ``warmup_windows`` windows. The scales and tails start afresh when the baseline's source
moves from its level to hours of the day: residuals against a level are not those against a
daily profile (those against hours of the week are). river's ADWIN, PageHinkley and KSWIN can be chosen instead (fed
``z``).

A detection does not move the baseline: a 10-minute spike is not a new normal. The baseline
learns each window clipped to ``LEARN_CLIP`` scales of its expectation, so a spike
barely moves it, and nothing during the cooldown after a detection. When that cooldown ends, the
change is absorbed (the baseline moved by the ratio of the last ``LASTED_WINDOWS`` windows since
the detection to their expectation) only if it has lasted: the middle scale's mean is still beyond
``U`` on the side detected. A change that undoes the last one absorbed leaves the hours of the week
learned in between as they are if that last one came back a week after one like it: a weekend (or
a weekly job) before the weekly profile has learned it is a part of the week, not a level, and an
incident that ends does not come back a week on (``_part_of_the_week``). One or two weeks on, a
change at such hours' start that undoes them moves only them: the part of the week did not come
back (``_part_not_back``).

Daylight saving: before a detection of a positive aggregate is made, the kept windows are
compared with the baseline's profile as it is and moved an hour either way (``_moved_an_hour``);
if a move halves the squared error, it is made in the baseline instead of a detection.

When the detector fires, the change point is estimated on the last ``HISTORY`` windows as the
split that best separates the mean residual before from after (the CUSUM statistic
``k (n - k) / n * (mean_before - mean_after) ** 2``); ``before`` is what the baseline expected over
the windows since then, ``after`` what they were.

State is bytes of a fixed layout, about 3 kB a watch (``to_state``): a head, the settings as
JSON, the baseline's state, the history's rings, the scales' columns, the changes absorbed, and a
river detector's state if one is chosen (ADWIN keeps its window in Rust: its own serialised
bytes; the others' as JSON), never a pickle read from a topic.

>>> rng = random.Random(1)
>>> watch = DriftWatch()  # one-minute windows, the level doubles after 4,000 of them
>>> found = [watch.update(60.0 * i, (100 if i < 4000 else 200) * rng.lognormvariate(0, 0.1)) for i in range(5000)]
>>> [(d.detected_at / 60, d.changed_at / 60, round(d.before), round(d.after), d.direction) for d in found if d]
[(4001.0, 4000.0, 101, 188, 'up')]
"""

from __future__ import annotations

import math
import random
import struct
from array import array
from dataclasses import dataclass

import numpy as np
import orjson
from river import drift

from .seasonal import HOURS_OF_WEEK, SeasonalBaseline
from .seasonal import STATE_BYTES as BASELINE_BYTES

STATE_VERSION = 4  # 4: the changes absorbed; 3 (read: none absorbed): scales and peaks over threshold
# version, windows seen, history written, quiet until (event time), mean absolute residual,
# newest event time, whether a detected change awaits the end of its cooldown (1 up, -1 down), the
# baseline's source the tails were learned under, the symmetric log's floor and the hour it was set
# for, the settings' size, the river detector's state's size (0: none).
_HEAD = struct.Struct("<BIIdddbBddHI")
_SOURCES = {"level": 1, "daily": 2, "weekly": 3}
HISTORY = 32  # windows kept to estimate where a change began, and whether it lasted
SCALES = (1.0, 6.0, 36.0, 144.0)  # half-lives, in windows, of the recent means of z
_ALPHAS = tuple(1.0 - 2.0 ** (-1.0 / h) for h in SCALES)
# A scale alarms once its tail has seen this many of its half-lives (a scale of hours needs days of
# clusters before ten of them say what its routine is).
ARM_HALF_LIVES = 50
_ARMS_AFTER = tuple(ARM_HALF_LIVES * h for h in SCALES)
U = 2.0  # a cluster: a run of windows whose scaled mean exceeds U
EXCESS_CAP = 8.0  # a cluster's excess counts at most this much: one spike in the warm-up is not the tail
# (Decayed) clusters a side of a scale needs before it alarms; three times as many against the level
# alone (a series' first two days), whose residuals carry the hours of the day not yet learned.
MIN_CLUSTERS = 10.0
MIN_SIZE = 1e-6  # of a scale's mean: a series without noise must not divide by nothing
TAIL_HALF_LIFE_S = 14 * 86400.0
WEEK_S = 7 * 86400.0
# The newest changes absorbed (change point, ratio), to tell a part of the week (its changes come
# back a week on, at about the same hour) from an incident: two a week and some to spare.
ABSORPTIONS_KEPT = 6
# A part of the week is at most half of it (longer, the rest of the week is the part), and its
# absence is looked for at its start's hour one and two weeks on.
PART_OF_THE_WEEK_S = WEEK_S / 2
PART_WEEKS_WATCHED = 2
_KEPT_HOURS = 2 * ABSORPTIONS_KEPT  # after their times and ratios: the hours last kept (from, to, their ratio)
_AWAITING_CHANGE = _KEPT_HOURS + 3  # then the change point of the detected change awaiting its cooldown's end
REPEAT_TOLERANCE_S = 6 * 3600.0
PRIOR_WINDOWS = 30  # what a scale's first size (white noise's) weighs, in windows
SIZE_WEIGHT = 5e-4  # of each window in a scale's running mean absolute value (about a day of minutes)
Z_CLIP = 10.0
MAX_VALUE = 1e30
MIN_SCALE = 1e-3  # below a relative noise of 0.1%, residuals are rounding (the baseline's sums are float32)
SCALE_WEIGHT = 1e-3  # of each window in the running mean absolute residual (about 2 days of minutes)
LEARN_CLIP = 4.0  # scales of the residual: what the baseline learns of one window
LASTED_WINDOWS = 8
LEVEL_FLOOR_SHARE = 0.05  # of the series' level: ``f`` of the symmetric log
RATIO_FLOOR = 1e-4  # the smallest expected error ratio a Poisson z is scaled by
DEFAULT_FALSE_PER_WEEK = 0.5
# Per scale: the running mean of z, its running mean absolute value, the cluster threshold of each side,
# and per side: the open cluster's peak (0: none), the decayed count of clusters, and of their excesses.
_SIDE = 3
_COLUMNS = 2 + 2 + 2 * _SIDE
_EXPOSURE = len(SCALES) * _COLUMNS  # then the decayed seconds the tails were learned over,
_SINCE = _EXPOSURE + 1  # the windows since they started (running means start as plain means),
_LANDMARK = _SINCE + 1  # and the event time at which a tail's forward weight is 1
# Each scale's first column, smoothing and the windows after which it may alarm.
_SCALE_COLUMNS = tuple((i * _COLUMNS, alpha, arms) for i, (alpha, arms) in enumerate(zip(_ALPHAS, _ARMS_AFTER)))
_MAX_HALF_LIVES = 60.0  # of forward growth before the landmark moves
# A size starts at what white noise gives the scale's mean.
_GAUSS_MAD = math.sqrt(math.pi / 2)  # a normal's standard deviation over its mean absolute deviation
_NO_SCALES = array("d", [x for a in _ALPHAS for x in [0.0, math.sqrt(a / (2 - a)) / _GAUSS_MAD, math.inf, math.inf]
                         + [0.0] * 2 * _SIDE]
                       + [0.0, 0.0, math.nan])
_NO_HISTORY = array("d", [math.nan] * (3 * HISTORY))
_NO_ABSORPTIONS = array("d", [math.nan] * (_AWAITING_CHANGE + 1))
_ABSORPTIONS_BYTES = len(_NO_ABSORPTIONS.tobytes())
_HISTORY_BYTES = len(_NO_HISTORY.tobytes())
_SCALES_BYTES = len(_NO_SCALES.tobytes())
DETECTORS = ("multiscale", "adwin", "page_hinkley", "kswin")


@dataclass(frozen=True)
class Detection:
    detected_at: float  # event time of the window that made the detector fire
    changed_at: float  # estimated start of the change (event time of a window)
    before: float  # the expected level over the windows since ``changed_at``
    after: float  # their actual level

    @property
    def relative_change(self) -> float:
        return (self.after - self.before) / abs(self.before) if self.before else math.inf

    @property
    def direction(self) -> str:
        return "up" if self.after >= self.before else "down"


def _off_the_week(seconds: float) -> float:
    """How far ``seconds`` is from a whole number of weeks."""
    return abs((seconds + WEEK_S / 2) % WEEK_S - WEEK_S / 2)


def _hours(first: float, last: float) -> np.ndarray:
    """The hours of the week (168 bools) from event time ``first``'s to the one before ``last``'s
    (a change that began in it leaves it mostly after the change)."""
    hours = np.zeros(HOURS_OF_WEEK, dtype=bool)
    hours[np.arange(int(first // 3600), int(last // 3600)) % HOURS_OF_WEEK] = True
    return hours


class DriftWatch:
    """A seasonal baseline and a detector for one aggregate of one series (see the module)."""

    __slots__ = ("detector_name", "params", "warmup_windows", "cooldown_s", "false_per_week", "baseline",
                 "detector", "seen", "quiet_until", "mean_absolute", "newest", "awaiting", "source", "floor",
                 "floor_hour", "scales", "z", "absorbed",
                 "_history", "_next")

    def __init__(self, detector: str = "multiscale", params: dict | None = None, warmup_windows: int = 120,
                 cooldown_s: float = 3600.0, false_per_week: float = DEFAULT_FALSE_PER_WEEK,
                 baseline: SeasonalBaseline | None = None):
        if detector not in DETECTORS:
            raise ValueError(f"unknown drift detector {detector!r}: one of {', '.join(DETECTORS)}")
        if not false_per_week > 0:
            raise ValueError(f"false_per_week must be positive, not {false_per_week!r}")
        self.detector_name = detector
        self.params = {**_DEFAULT_PARAMS.get(detector, {}), **(params or {})}
        self.warmup_windows = warmup_windows
        self.cooldown_s = cooldown_s
        self.false_per_week = false_per_week
        self.baseline = baseline or SeasonalBaseline()
        self.detector = None  # a river detector, made when first fed, and again after each detection
        self.seen = 0
        self.quiet_until = -math.inf  # event time: no detection before it (cooldown)
        self.mean_absolute = math.nan  # of residuals (their scale: times _GAUSS_MAD), from the first of a source
        self.newest = math.nan
        self.awaiting = 0  # a detected change (1 up, -1 down) whose cooldown has not ended
        self.source = 0  # the baseline's source (_SOURCES) the tails are learned under
        self.floor = math.nan  # ``f`` of the symmetric log, set once an hour (see ``_floor``)
        self.floor_hour = math.nan
        self.scales = array("d", _NO_SCALES)
        self.z = math.nan  # the newest window's standardised residual (what river's detectors read)
        self._history = array("d", _NO_HISTORY)  # event times, values, expectations: three rings
        self._next = 0  # windows written to the history
        # Change points, then ratios (NaN: none, or not positive), then the hours last kept, and the
        # change point of the change awaiting its cooldown's end.
        self.absorbed = array("d", _NO_ABSORPTIONS)

    def check(self) -> None:
        """Make a river detector once, so parameters it does not take fail now (TypeError,
        ValueError), not at a series' first window two days on."""
        if self.detector_name in _CODECS:
            _CODECS[self.detector_name].make(self.params)
        elif self.params:
            raise ValueError(f"multiscale takes no params (its threshold is false_per_week), not {self.params!r}")

    def update(self, ts: float, value: float, requests: float | None = None) -> Detection | None:
        """One closed window's aggregate (NaN: none, ignored), an error ratio with the ``requests``
        it was pooled over; a detection, if this one shows a change."""
        if not abs(value) < MAX_VALUE:  # NaN, infinite, or beyond what float32 sums hold: not learned
            return None
        if self.awaiting and ts >= self.quiet_until:
            self._absorb_if_lasted()
        baseline = self.baseline
        source, expected = baseline.estimate(ts, requests is None)
        self.seen += 1
        if source == "none":
            baseline.update(ts, value)
            self.newest = ts
            return None
        if _SOURCES[source] > self.source:  # (an hour not seen yet falls back to the level: no step back)
            if self.source <= _SOURCES["level"]:  # against a profile, not a level: scales and tails start afresh
                self.scales = array("d", _NO_SCALES)
                self.mean_absolute = math.nan
            self.source = _SOURCES[source]
        difference = value - expected
        if requests is None:
            spread = (expected if expected > 0 else -expected) + self._floor(ts)
            residual = math.copysign(math.log1p((difference if difference > 0 else -difference) / spread), difference)
        else:
            expected_at_least = expected if expected > RATIO_FLOOR else RATIO_FLOOR
            spread = math.sqrt(expected_at_least / (requests if requests > 1 else 1))
            residual = difference / spread
        if self.mean_absolute != self.mean_absolute:  # NaN: the first residual of this source
            self.mean_absolute = residual if residual > 0 else -residual
        scale = _GAUSS_MAD * self.mean_absolute
        if scale < MIN_SCALE:
            scale = MIN_SCALE
        z = residual / scale
        z = self.z = Z_CLIP if z > Z_CLIP else -Z_CLIP if z < -Z_CLIP else z
        quiet = ts < self.quiet_until
        if not quiet:  # in a cooldown the baseline waits: the change is absorbed at its end if it lasted
            clip = LEARN_CLIP * scale
            learned = clip if residual > clip else -clip if residual < -clip else residual
            if requests is None:
                learned = expected + math.copysign(math.expm1(learned if learned > 0 else -learned) * spread, learned)
            else:
                learned = expected + learned * spread
            baseline.update(ts, learned)
        slot = self._next % HISTORY
        self._history[slot], self._history[HISTORY + slot], self._history[2 * HISTORY + slot] = ts, value, expected
        self._next += 1
        elapsed = ts - self.newest if ts > self.newest else 0.0  # 0 after NaN: the first window
        if elapsed > WEEK_S:
            elapsed = WEEK_S
        if elapsed or self.newest != self.newest:
            self.newest = ts
        if quiet:
            self._feed_means(z, self.newest, elapsed, judge=False)
            return None
        self.scales[_SINCE] += 1.0
        fired = self._feed_means(z, self.newest, elapsed, judge=self.detector_name == "multiscale")
        if self.detector_name != "multiscale":
            fired = self._river(z)
        if fired and requests is None and not self._at_kept_edge(ts) and self._moved_an_hour():
            fired = False
        if not fired:
            since = self.scales[_SINCE] + 1
            weight = 1 / since if since * SCALE_WEIGHT < 1 else SCALE_WEIGHT
            self.mean_absolute += weight * ((residual if residual > 0 else -residual) - self.mean_absolute)
            return None
        detection = self._detection(ts)
        self.quiet_until = ts + self.cooldown_s
        self.awaiting = 1 if detection.direction == "up" else -1
        self.absorbed[_AWAITING_CHANGE] = detection.changed_at
        return detection

    def _floor(self, ts: float) -> float:
        """``f`` of the symmetric log: a twentieth of the series' long-run mean magnitude (the
        baseline's weekly-decayed mean), set at the first window of each hour. A mostly-zero series'
        level lately is 0, and rounding in its expectation (1e-15) must not read as a change."""
        hour = ts // 3600
        if hour != self.floor_hour:
            self.floor_hour = hour
            overall = self.baseline.overall()
            self.floor = LEVEL_FLOOR_SHARE * abs(overall if overall == overall else 0.0) + 1e-12
        return self.floor

    def _moved_an_hour(self) -> bool:
        """Daylight saving, as it happens: whether the baseline's profile moved an hour one way
        explains the kept windows at least twice as well as unmoved (squared log error); if so, it
        is moved so, and the scales' means start afresh (what fired was the move, not a change). A
        level step is not a move: a profile an hour off differs from itself by a share of its cycle
        (at most 10% an hour for a cycle of +-40%), not by a step's third or more."""
        times, values, _ = self._kept_history()
        if np.any(values <= 0):
            return False
        errors = {}
        for shift in (-1, 0, 1):
            expected = np.array([self.baseline.estimate(t - 3600.0 * shift)[1] for t in times.tolist()])
            if np.any(~(expected > 0)):
                return False
            errors[shift] = float(np.sum(np.log(values / expected) ** 2))
        best = min((-1, 1), key=errors.get)
        if errors[best] > errors[0] / 2:
            return False
        self.baseline.shift_hours(best)
        for i in range(len(SCALES)):
            self.scales[i * _COLUMNS] = 0.0
        return True

    def _feed_means(self, z: float, ts: float, elapsed: float, judge: bool) -> bool:
        """Feed every scale's mean; unless quiet (``judge`` false: in a cooldown, or a river detector
        decides), learn their tails and say whether an armed one passed its threshold. Tails decay
        forward (weights grow with event time from a landmark, Cormode et al., ICDE 2009), so no
        window pays for a decay step."""
        columns = self.scales
        if not judge:
            at = 0
            for alpha in _ALPHAS:
                columns[at] += alpha * (z - columns[at])
                at += _COLUMNS
            return False
        landmark = columns[_LANDMARK]
        if landmark != landmark:
            landmark = columns[_LANDMARK] = ts
        elif ts - landmark > _MAX_HALF_LIVES * TAIL_HALF_LIFE_S:
            self._move_tail_landmark(ts)
            landmark = ts
        growth = 2.0 ** ((ts - landmark) / TAIL_HALF_LIFE_S)
        columns[_EXPOSURE] += elapsed * growth
        windows = columns[_SINCE]
        since = windows + PRIOR_WINDOWS
        size_weight = 1 / since if since * SIZE_WEIGHT < 1 else SIZE_WEIGHT
        armed = self.seen > self.warmup_windows
        fired = False
        u, min_size, mad = U, MIN_SIZE, _GAUSS_MAD  # locals: this loop runs for every window
        for at, alpha, arms_after in _SCALE_COLUMNS:
            mean = columns[at]
            mean += alpha * (z - mean)
            columns[at] = mean
            size = columns[at + 1]
            size += size_weight * ((mean if mean > 0 else -mean) - size)
            if size < min_size:
                size = min_size
            columns[at + 1] = size
            scaled = mean / (mad * size)
            if scaled > u:
                if armed and windows >= arms_after and scaled > columns[at + 2]:
                    fired = True
                elif scaled > columns[at + 4]:
                    columns[at + 4] = scaled
            elif columns[at + 4]:
                self._close_cluster(at, 0, growth)
            if scaled < -u:
                if armed and windows >= arms_after and -scaled > columns[at + 3]:
                    fired = True
                elif -scaled > columns[at + 7]:  # 7 = 4 + _SIDE: the down side's open peak
                    columns[at + 7] = -scaled
            elif columns[at + 7]:
                self._close_cluster(at, 1, growth)
        if fired:
            for at in range(0, len(SCALES) * _COLUMNS, _COLUMNS):  # a change's clusters are not the tail of noise
                columns[at + 4] = columns[at + 4 + _SIDE] = 0.0
        return fired

    def _move_tail_landmark(self, ts: float) -> None:
        """Rescale the tails' forward weights to a landmark at ``ts`` (their ratios are unchanged)."""
        columns = self.scales
        scale = 2.0 ** (-(ts - columns[_LANDMARK]) / TAIL_HALF_LIFE_S)
        for at in range(0, len(SCALES) * _COLUMNS, _COLUMNS):
            for side in (0, _SIDE):
                columns[at + 5 + side] *= scale
                columns[at + 6 + side] *= scale
        columns[_EXPOSURE] *= scale
        columns[_LANDMARK] = ts

    def _close_cluster(self, at: int, side: int, growth: float) -> None:
        """Record an open cluster's peak in its side's tail and set that side's threshold: where the
        exponential tail of the excesses expects ``false_per_week / 8`` clusters a week. (A
        generalised Pareto tail fitted by moments gave 2 to 17 times the rate asked: the shape
        is too uncertain to extrapolate a thousandfold; the exponential errs on the safe side.)"""
        columns = self.scales
        peak_at = at + 4 + _SIDE * side
        columns[peak_at + 1] += growth
        columns[peak_at + 2] += min(columns[peak_at] - U, EXCESS_CAP) * growth
        columns[peak_at] = 0.0
        self._set_threshold(at, side, growth)

    def _set_threshold(self, at: int, side: int, growth: float) -> None:
        """A side's threshold from its tail, ``growth`` the forward weight of now."""
        columns = self.scales
        peak_at = at + 4 + _SIDE * side
        clusters = columns[peak_at + 1] / growth  # decayed to now
        if clusters < MIN_CLUSTERS * (3 if self.source == _SOURCES["level"] else 1) or columns[_EXPOSURE] <= 0:
            return
        # The mean excess, and an upper estimate of it while the clusters are few.
        beta = columns[peak_at + 2] / columns[peak_at + 1] * (1 + 1 / math.sqrt(clusters))
        per_week = columns[peak_at + 1] / columns[_EXPOSURE] * WEEK_S
        quantile = beta * math.log(max(per_week / (self.false_per_week / (2 * len(SCALES))), 1.0))
        columns[at + 2 + side] = U + quantile

    def aim(self, false_per_week: float) -> None:
        """Aim the thresholds at another rate of false detections (the tails learned are kept)."""
        self.false_per_week = false_per_week
        landmark = self.scales[_LANDMARK]
        if landmark != landmark:
            return
        growth = 2.0 ** ((self.newest - landmark) / TAIL_HALF_LIFE_S)
        for at in range(0, len(SCALES) * _COLUMNS, _COLUMNS):
            for side in (0, 1):
                self._set_threshold(at, side, growth)

    def _river(self, z: float) -> bool:
        if self.seen <= self.warmup_windows:
            return False
        if self.detector is None:
            self.detector = _CODECS[self.detector_name].make(self.params)
        self.detector.update(z)
        if not self.detector.drift_detected:
            return False
        self.detector = None
        return True

    def _absorb_if_lasted(self) -> None:
        """Before the first window after a detection's cooldown: if the change is still there (the
        middle scale's mean beyond ``U`` of its scales on the side detected, with two windows or
        more after the detection and the newest in the cooldown's second half: a service silent
        through it shows nothing), move the baseline to the level of those of the last
        ``LASTED_WINDOWS`` after the detection (but the hours ``_part_of_the_week`` keeps); start
        the scales' means afresh."""
        at = _COLUMNS  # the middle scale
        times, values, expected = self._kept_history(LASTED_WINDOWS)
        detected_at = self.quiet_until - self.cooldown_s
        after = times > detected_at  # the windows after the detection's
        heard = after.sum() >= 2 and times[-1] > detected_at + self.cooldown_s / 2
        if heard and self.awaiting * self.scales[at] > U * _GAUSS_MAD * self.scales[at + 1]:
            before, now = float(expected[after].mean()), float(values[after].mean())
            ratio = now / before if before > 0 and now > 0 else math.nan
            changed_at = self.absorbed[_AWAITING_CHANGE]
            if changed_at != changed_at:  # NaN: a watch of version 3, detected before it was saved
                changed_at = detected_at
            not_back = self._part_not_back(changed_at, ratio)
            if not_back is not None:  # only those hours move: the rest never had it
                self.baseline.change_level(before, now, ~not_back)
                self.absorbed[_KEPT_HOURS:_AWAITING_CHANGE] = array("d", [math.nan] * 3)
            else:
                kept = self._part_of_the_week(changed_at, ratio)
                self.baseline.change_level(before, now, None if kept is None else _hours(kept[0], kept[1]),
                                           self.source == _SOURCES["daily"])
                if kept is not None:
                    self.absorbed[_KEPT_HOURS:_AWAITING_CHANGE] = array("d", kept)
            self._remember(changed_at, ratio)
        for i in range(len(SCALES)):
            self.scales[i * _COLUMNS] = 0.0
        self.awaiting = 0

    def _remember(self, changed_at: float, ratio: float) -> None:
        """Keep a change absorbed among the newest ``ABSORPTIONS_KEPT`` (the oldest goes)."""
        absorbed, last = self.absorbed, ABSORPTIONS_KEPT - 1
        absorbed[:last] = absorbed[1:ABSORPTIONS_KEPT]
        absorbed[ABSORPTIONS_KEPT:ABSORPTIONS_KEPT + last] = absorbed[ABSORPTIONS_KEPT + 1:_KEPT_HOURS]
        absorbed[last], absorbed[_KEPT_HOURS - 1] = changed_at, ratio

    def _part_of_the_week(self, changed_at: float, ratio: float) -> tuple[float, float, float] | None:
        """The span of event time (from, to, and the ratio of the change it began with) whose
        hours of the week a change that began at ``changed_at`` leaves as they are, or None: from
        the last change absorbed, if this one undoes it (a weekend's end after its start), and
        that one came back a week after one like it, at about the same hour. Those hours were
        learned at the level it undoes, which was a part of the week, not a level: moving them back
        with the rest made every weekend a change again, week after week. An incident that ends
        is undone too, but does not come back a week on: its hours move back."""
        absorbed = self.absorbed
        last_at, last_ratio = absorbed[ABSORPTIONS_KEPT - 1], absorbed[_KEPT_HOURS - 1]
        if not (ratio > 0 and last_ratio > 0 and changed_at - last_at <= PART_OF_THE_WEEK_S):
            return None  # (NaN: none, or not positive)
        if int(changed_at // 3600) == int(last_at // 3600):
            return None
        step, last_step = math.log(ratio), math.log(last_ratio)
        if abs(step + last_step) >= abs(step) / 2:  # not undone
            return None
        earlier = zip(absorbed[:ABSORPTIONS_KEPT - 1], absorbed[ABSORPTIONS_KEPT:_KEPT_HOURS - 1])
        for earlier_at, earlier_ratio in earlier:
            if abs(last_at - WEEK_S - earlier_at) <= REPEAT_TOLERANCE_S and earlier_ratio > 0 \
                    and math.log(earlier_ratio) * last_step > 0:
                return last_at, changed_at, last_ratio
        return None

    def _at_kept_edge(self, ts: float) -> bool:
        """Whether event time ``ts`` is within an hour of an edge of the hours last kept as a part
        of the week: there the profile steps, and a part of the week that did not come back looks
        like a profile an hour off (daylight saving), which it is not."""
        kept_from, kept_to, _ = self.absorbed[_KEPT_HOURS:_AWAITING_CHANGE]
        if kept_from != kept_from:  # NaN: none kept
            return False
        return any(_off_the_week(ts - edge) <= 3600.0 for edge in (kept_from, kept_to))

    def _part_not_back(self, changed_at: float, ratio: float) -> np.ndarray | None:
        """The hours last kept as a part of the week (168 bools), if a change that began at
        ``changed_at`` says it did not come back: one or two weeks after the change that began it,
        at about the same hour of the week, undoing it (a weekly incident that stopped, a weekend
        no longer lower). Only those hours move back; moving every hour made the rest wrong, and a
        change again. A change of another size there is a change of level (a step on a Saturday)."""
        kept_from, kept_to, kept_ratio = self.absorbed[_KEPT_HOURS:_AWAITING_CHANGE]
        since = changed_at - kept_from
        if not (ratio > 0 and kept_ratio > 0 and WEEK_S - REPEAT_TOLERANCE_S < since
                <= PART_WEEKS_WATCHED * WEEK_S + REPEAT_TOLERANCE_S and _off_the_week(since) <= REPEAT_TOLERANCE_S):
            return None
        step, kept_step = math.log(ratio), math.log(kept_ratio)
        if abs(step + kept_step) < abs(kept_step) / 2:
            return _hours(kept_from, kept_to)
        return None

    def _kept_history(self, windows: int = HISTORY) -> np.ndarray:
        """The newest ``windows`` kept, oldest first (rows: event time, value, expectation)."""
        kept = min(self._next, HISTORY, windows)
        rings = np.frombuffer(self._history, dtype=np.float64).reshape(3, HISTORY)
        return rings[:, np.arange(self._next - kept, self._next) % HISTORY]

    def _detection(self, ts: float) -> Detection:
        times, values, expected = self._kept_history()
        residuals = values - expected
        n = residuals.size
        k = np.arange(1, n)
        prefix = np.cumsum(residuals)[:-1]
        gain = k * (n - k) / n * (prefix / k - (residuals.sum() - prefix) / (n - k)) ** 2 if n > 1 else np.zeros(0)
        first = int(k[np.argmax(gain)]) if gain.size else 0
        return Detection(ts, float(times[first]), float(expected[first:].mean()), float(values[first:].mean()))

    def thresholds(self) -> list[tuple[float, float]]:
        """Each scale's learned thresholds (up, down), in scales of its mean; inf until armed."""
        return [(self.scales[i * _COLUMNS + 2], self.scales[i * _COLUMNS + 3]) for i in range(len(SCALES))]

    def settings(self) -> dict:
        """What the watch was made with (its constructor's arguments but the baseline)."""
        return {"detector": self.detector_name, "params": self.params, "warmup_windows": self.warmup_windows,
                "cooldown_s": self.cooldown_s, "false_per_week": self.false_per_week}

    def to_state(self) -> bytes:
        """The head, the settings as JSON, the baseline's state, the history's rings, the scales'
        columns, the changes absorbed, then a river detector's state, if any; ``from_state`` gives a
        watch that goes on exactly alike. Arrays are in the machine's byte order: little-endian on
        every platform Python wheels of numpy and river are built for that slostream runs on
        (x86-64, arm64)."""
        settings = orjson.dumps(self.settings())
        river_state = b"" if self.detector is None else _CODECS[self.detector_name].save(self.detector)
        head = _HEAD.pack(STATE_VERSION, self.seen, self._next, self.quiet_until, self.mean_absolute, self.newest,
                          self.awaiting, self.source, self.floor, self.floor_hour, len(settings), len(river_state))
        return b"".join((head, settings, self.baseline.to_state(), self._history.tobytes(), self.scales.tobytes(),
                         self.absorbed.tobytes(), river_state))

    @classmethod
    def from_state(cls, state: bytes) -> DriftWatch:
        version = state[0] if state else None
        if version not in (3, STATE_VERSION):
            raise ValueError(f"unsupported drift state version {version!r} (this version reads 3 and {STATE_VERSION})")
        if len(state) < _HEAD.size:
            raise ValueError(f"a drift state holds at least {_HEAD.size} bytes, not {len(state)}")
        _, seen, written, quiet_until, mean_absolute, newest, awaiting, source, floor, floor_hour, settings_size, \
            river_size = _HEAD.unpack_from(state)
        size = _HEAD.size + settings_size + BASELINE_BYTES + _HISTORY_BYTES + _SCALES_BYTES + river_size \
            + (_ABSORPTIONS_BYTES if version == STATE_VERSION else 0)
        if len(state) != size:
            raise ValueError(f"a drift state of version {version} and these sizes holds {size} bytes, not {len(state)}")
        at = _HEAD.size + settings_size
        baseline = SeasonalBaseline.from_state(state[at:at + BASELINE_BYTES])
        watch = cls(**orjson.loads(state[_HEAD.size:at]), baseline=baseline)
        watch.seen, watch._next, watch.quiet_until, watch.mean_absolute = seen, written, quiet_until, mean_absolute
        watch.newest, watch.awaiting, watch.source, watch.floor, watch.floor_hour = \
            newest, awaiting, source, floor, floor_hour
        at += BASELINE_BYTES
        watch._history = array("d", state[at:at + _HISTORY_BYTES])
        at += _HISTORY_BYTES
        watch.scales = array("d", state[at:at + _SCALES_BYTES])
        at += _SCALES_BYTES
        if version == STATE_VERSION:
            watch.absorbed = array("d", state[at:at + _ABSORPTIONS_BYTES])
            at += _ABSORPTIONS_BYTES
        if river_size:
            watch.detector = _CODECS[watch.detector_name].make(watch.params)
            _CODECS[watch.detector_name].load(watch.detector, state[at:at + river_size])
        return watch


class _Codec:
    """How one river detector is made, and its state kept as bytes."""

    def __init__(self, cls, save, load):
        self.cls, self.save, self.load = cls, save, load

    def make(self, params: dict):
        return self.cls(**params)


def _save_adwin(d: drift.ADWIN) -> bytes:
    return bytes((d.drift_detected,)) + d._helper.__getstate__()


def _load_adwin(d: drift.ADWIN, state: bytes) -> None:
    d._drift_detected = bool(state[0])
    d._helper.__setstate__(bytes(state[1:]))


def _save_page_hinkley(d: drift.PageHinkley) -> bytes:
    return orjson.dumps({"drift": d.drift_detected, "mean": [d._x_mean.n, d._x_mean._mean],
                         "sums": [d._sum_increase, d._sum_decrease,
                                  None if math.isinf(d._min_increase) else d._min_increase, d._max_decrease]})


def _load_page_hinkley(d: drift.PageHinkley, state: bytes) -> None:
    saved = orjson.loads(state)
    d._drift_detected = saved["drift"]
    d._x_mean.n, d._x_mean._mean = saved["mean"]
    d._sum_increase, d._sum_decrease, low, d._max_decrease = saved["sums"]
    d._min_increase = math.inf if low is None else low


def _save_kswin(d: drift.KSWIN) -> bytes:
    version, internal, gauss = d._rng.getstate()
    return orjson.dumps({"drift": d.drift_detected, "n": d.n, "p_value": float(d.p_value),
                         "window": [float(x) for x in d.window], "rng": [version, list(internal), gauss]})


def _load_kswin(d: drift.KSWIN, state: bytes) -> None:
    saved = orjson.loads(state)
    d._drift_detected = saved["drift"]
    d.n, d.p_value = saved["n"], saved["p_value"]
    d.window.extend(saved["window"])
    version, internal, gauss = saved["rng"]
    d._rng = random.Random()
    d._rng.setstate((version, tuple(internal), gauss))


_CODECS = {
    "adwin": _Codec(drift.ADWIN, _save_adwin, _load_adwin),
    "page_hinkley": _Codec(drift.PageHinkley, _save_page_hinkley, _load_page_hinkley),
    "kswin": _Codec(drift.KSWIN, _save_kswin, _load_kswin),
}
# ADWIN looks for a cut every ``clock`` updates (32 by default): with one update per closed window,
# that would wait half an hour at one-minute windows.
_DEFAULT_PARAMS = {"adwin": {"clock": 1}}
