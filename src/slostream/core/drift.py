"""Drift of one aggregate of one series: river's detectors on what a seasonal baseline does not
explain, with a warm-up, a cooldown, and an estimate of when the change began.

Each closed window's aggregate (a p95, an error ratio, a throughput) first meets the series'
``SeasonalBaseline``. The residual is taken relative to the expectation (at least
``scale_floor``, so an error ratio expected near 0 does not divide by nothing), then divided by its
own running root mean square: the detector reads residuals of unit scale whatever the series' noise
(ADWIN's bound has a term that assumes values in [0, 1]; on raw relative residuals of a few percent
it waited 10 windows for a doubling, on standardised ones 3). The root mean square is taken as at
least ``MIN_RMS``; standardised residuals are clipped at ``Z_CLIP``. The detector is
fed nothing until the baseline knows the hours of the day (two days of event time: before that a
daily cycle reads as drift) and ``warmup_windows`` windows have been seen, nor for ``cooldown_s``
of event time after a detection. A detection moves the baseline to the new level (by their ratio,
see ``SeasonalBaseline.change_level``) and restarts the detector, so the new level is the new
normal.

When the detector fires, the change point is estimated on the last ``HISTORY`` windows as the
split that best separates the mean residual before from after (the CUSUM statistic
``k (n - k) / n * (mean_before - mean_after) ** 2``); ``before`` is what the baseline expected over
the windows since then, ``after`` what they were.

State is bytes of a fixed layout, about 3.5 kB a watch (``to_state``): a head, the settings as
JSON, the baseline's and the history's columns, and the detector's state (river's ADWIN keeps its
window in Rust: its own serialised bytes; the others' as JSON), never a pickle read from a topic.

>>> watch = DriftWatch("page_hinkley", {"threshold": 1.0, "min_instances": 10})
>>> found = [watch.update(600.0 * i, 100.0 if i < 500 else 200.0) for i in range(600)]  # 10-minute windows
>>> [(d.detected_at / 600, d.changed_at / 600, round(d.before), d.after, d.direction) for d in found if d]
[(500.0, 500.0, 100, 200.0, 'up')]
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

from .seasonal import STATE_BYTES as BASELINE_BYTES
from .seasonal import SeasonalBaseline

STATE_VERSION = 2  # 2: bytes (1 was JSON, 5.9 kB a watch)
_HEAD = struct.Struct("<BIIddH")  # version, windows seen, history written, quiet until, mean square, settings' size
HISTORY = 32  # windows kept to estimate where a change began
# ADWIN looks for a cut every ``clock`` updates (32 by default): with one update per closed window,
# that would wait half an hour at one-minute windows.
DEFAULT_PARAMS = {"adwin": {"clock": 1}}
_RELATIVE_CLIP = 10.0  # a residual counts at most ten times the expectation: one outlier is not a level
Z_CLIP = 10.0
MIN_RMS = 1e-3  # below a relative noise of 0.1%, residuals are rounding (the baseline's sums are float32)
SCALE_WEIGHT = 1e-3  # of each window in the running mean square of relative residuals (about 2 days of minutes)


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


class DriftWatch:
    """A seasonal baseline and a river detector for one aggregate of one series (see the module)."""

    __slots__ = ("detector_name", "params", "warmup_windows", "cooldown_s", "scale_floor", "baseline", "detector",
                 "seen", "quiet_until", "mean_square", "_history", "_next")

    def __init__(self, detector: str = "adwin", params: dict | None = None, warmup_windows: int = 120,
                 cooldown_s: float = 3600.0, scale_floor: float = 1e-3,
                 baseline: SeasonalBaseline | None = None):
        if detector not in _CODECS:
            raise ValueError(f"unknown drift detector {detector!r}: one of {', '.join(sorted(_CODECS))}")
        self.detector_name = detector
        self.params = {**DEFAULT_PARAMS.get(detector, {}), **(params or {})}
        self.warmup_windows = warmup_windows
        self.cooldown_s = cooldown_s
        self.scale_floor = scale_floor
        self.baseline = baseline or SeasonalBaseline()
        # The detector and the history are made when first fed (after two days of event time), and
        # dropped at a detection: a series that is young, or short-lived, holds neither.
        self.detector = None
        self.seen = 0
        self.quiet_until = -math.inf  # event time: no detection before it (cooldown)
        self.mean_square = math.nan  # of relative residuals, once the baseline knows the hours of the day
        self._history: array | None = None  # event times, values, expectations: three rings of HISTORY
        self._next = 0  # windows fed to the detector since it was made

    def check(self) -> None:
        """Make the detector once, so parameters it does not take fail now (TypeError, ValueError),
        not at a series' first window two days on."""
        _CODECS[self.detector_name].make(self.params)

    def update(self, ts: float, value: float) -> Detection | None:
        """One closed window's aggregate (NaN: none, ignored); a detection, if this one shows a change."""
        if math.isnan(value):
            return None
        source, expected = self.baseline.estimate(ts)
        self.baseline.update(ts, value)
        self.seen += 1
        if source in ("none", "level"):
            return None
        relative = min(max((value - expected) / max(abs(expected), self.scale_floor), -_RELATIVE_CLIP), _RELATIVE_CLIP)
        if math.isnan(self.mean_square):
            self.mean_square = relative * relative
            return None
        if self.seen <= self.warmup_windows or ts < self.quiet_until:
            self._learn_scale(relative)
            return None
        if self.detector is None:
            self.detector = _CODECS[self.detector_name].make(self.params)
            self._history = array("d", _NO_HISTORY)
        slot = self._next % HISTORY
        self._history[slot], self._history[HISTORY + slot], self._history[2 * HISTORY + slot] = ts, value, expected
        self._next += 1
        z = relative / max(math.sqrt(self.mean_square), MIN_RMS)
        self.detector.update(min(max(z, -Z_CLIP), Z_CLIP))
        if not self.detector.drift_detected:
            self._learn_scale(relative)
            return None
        detection = self._detection(ts)
        self.baseline.change_level(detection.before, detection.after)
        self.detector = self._history = None
        self.quiet_until = ts + self.cooldown_s
        self._next = 0
        return detection

    def _learn_scale(self, relative: float) -> None:
        """The running mean square learns from windows that are not a detection (a change does
        not widen the scale it is judged by)."""
        self.mean_square += SCALE_WEIGHT * (relative * relative - self.mean_square)

    def _kept_history(self) -> np.ndarray:
        """The windows kept, oldest first (rows: event time, value, expectation)."""
        kept = min(self._next, HISTORY)
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

    def settings(self) -> dict:
        """What the watch was made with (its constructor's arguments but the baseline)."""
        return {"detector": self.detector_name, "params": self.params, "warmup_windows": self.warmup_windows,
                "cooldown_s": self.cooldown_s, "scale_floor": self.scale_floor}

    def to_state(self) -> bytes:
        """The head, the settings as JSON, the baseline's state, then, once the detector is fed, the
        history's rings and the detector's state; ``from_state`` gives a watch that goes on exactly
        alike. Arrays are in the machine's byte order: little-endian on every platform Python wheels
        of numpy and river are built for that slostream runs on (x86-64, arm64)."""
        settings = orjson.dumps(self.settings())
        head = _HEAD.pack(STATE_VERSION, self.seen, self._next, self.quiet_until, self.mean_square, len(settings))
        parts = [head, settings, self.baseline.to_state()]
        if self.detector is not None:
            parts += (self._history.tobytes(), _CODECS[self.detector_name].save(self.detector))
        return b"".join(parts)

    @classmethod
    def from_state(cls, state: bytes) -> DriftWatch:
        if state[:1] != bytes((STATE_VERSION,)):
            raise ValueError(f"unsupported drift state version {state[0] if state else None!r} "
                             f"(this version reads {STATE_VERSION})")
        _, seen, fed, quiet_until, mean_square, settings_size = _HEAD.unpack_from(state)
        at = _HEAD.size + settings_size
        baseline = SeasonalBaseline.from_state(state[at:at + BASELINE_BYTES])
        watch = cls(**orjson.loads(state[_HEAD.size:at]), baseline=baseline)
        watch.seen, watch._next, watch.quiet_until, watch.mean_square = seen, fed, quiet_until, mean_square
        at += BASELINE_BYTES
        if fed:
            watch._history = array("d", state[at:at + _HISTORY_BYTES])
            watch.detector = _CODECS[watch.detector_name].make(watch.params)
            _CODECS[watch.detector_name].load(watch.detector, state[at + _HISTORY_BYTES:])
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
DETECTORS = tuple(_CODECS)
_NO_HISTORY = array("d", [math.nan] * (3 * HISTORY))
_HISTORY_BYTES = len(_NO_HISTORY.tobytes())
