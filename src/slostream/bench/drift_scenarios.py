"""The drift scenario suite (issue 26): seeded one-minute SLI streams of 28 days in the shapes real
series take (cycles, day-to-day levels, wander, heavy tails, daylight saving, mostly zero, sparse,
spikes, error bursts), and steps to find, run through ``SeriesDrift`` exactly as the drift evaluator
runs it, with its default rule. Next to it, on the same windows: river's ADWIN (``clock=1``) and
PageHinkley at their defaults, fed the same standardised residuals as the default detector, and a
binomial CUSUM on the same pooled error counts.

A window's aggregates are drawn from its requests' distribution, not from its requests one by one:
its request count is Poisson, its p95 the ``ceil(0.95 n)``-th order statistic of ``n`` draws (the
quantile function at a Beta draw), its errors binomial. ``pipeline_sample`` runs a few streams
request by request through ``PartitionProcessor`` to show that the two agree.

A detection is false unless it comes in a spike or an error burst, or in the 30 minutes after one,
or at or after a step (where the first in the right direction, on the stepped aggregate, is the one
found). Figures are per series-week of stream.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from river import drift
from scipy import signal, special, stats

from slostream.core.drift import DriftWatch
from slostream.core.drift_rules import DriftRule
from slostream.pipeline.evaluators.drift import SeriesDrift

DAY, WEEK, MINUTE = 86400, 7 * 86400, 60
T0 = 1_700_438_400  # a Monday, midnight UTC
STREAMS = 200
DAYS = 28
AFTER_SPIKE_S = 30 * MINUTE
STEP_DAYS = (21, 27)  # a step comes at a seeded minute of these days
FOUND_WITHIN_S = DAY
BASE_MS = 100.0
LATENCY_SIGMA = 0.5
ERROR_RATIO = 0.001


@dataclass(frozen=True)
class Scenario:
    """A stream family: its per-window shape (see ``_shape``) and, for a change, what steps."""

    requests_per_s: float = 10.0
    weekly: bool = False
    day_sd: float = 0.0
    ar_phi: float = 0.0
    pareto: bool = False
    dst: bool = False
    mostly_zero: bool = False
    spikes: bool = False
    bursts: bool = False
    latency_step: float = 1.0
    error_step: float = 1.0  # the error ratio after the step, as a multiple of ERROR_RATIO
    spike_before_step: bool = False  # a 10-minute x3 spike three hours before the step
    cycle: bool = True

    @property
    def stepped(self) -> str | None:
        return "p95" if self.latency_step != 1.0 else "error_ratio" if self.error_step != 1.0 else None


QUIET = {
    "daily_cycle": Scenario(),
    "weekly_cycle": Scenario(weekly=True),
    "day_level_sd5": Scenario(day_sd=0.05),
    "day_level_sd10": Scenario(day_sd=0.10),
    "ar1_phi0.8": Scenario(ar_phi=0.8),
    "ar1_phi0.95": Scenario(ar_phi=0.95),
    "pareto_tail": Scenario(pareto=True),
    "daylight_saving": Scenario(dst=True),
    "mostly_zero": Scenario(mostly_zero=True),
    "sparse": Scenario(requests_per_s=1 / 60),
    "daily_spikes": Scenario(spikes=True),
    "daily_error_bursts": Scenario(bursts=True),
}
# The changes to find, each on the daily cycle, and the median delay the issue asks.
CHANGES = {
    "p95_step_30": (Scenario(latency_step=1.3), 15 * MINUTE),
    "p95_step_100": (Scenario(latency_step=2.0), 5 * MINUTE),
    "errors_0.1_to_1_at_10rps": (Scenario(error_step=10.0), 10 * MINUTE),
    "errors_0.1_to_0.2_at_10rps": (Scenario(error_step=2.0), 60 * MINUTE),
    "errors_0.1_to_0.5_at_1rps": (Scenario(requests_per_s=1.0, error_step=5.0), 4 * 3600),
    # Issue 26, point 2: a spike must not blind the detector (goal: found within 15 min in 95%).
    "p95_step_50_after_spike": (Scenario(latency_step=1.5, spike_before_step=True), 15 * MINUTE),
}
BASELINES = ("adwin", "page_hinkley", "binomial_cusum")
# River's detectors read the residuals once ours does, against the hours of the day (before, the
# residuals against a level carry the daily cycle: ADWIN fired 40 times in its first two days).
PROFILED = 2
# Detections and series-weeks are judged from the second week on, for every detector: none can
# detect much in the first (two days against a level, then tails to learn).
JUDGED_AFTER_S = 7 * DAY


@dataclass
class Stream:
    ends: np.ndarray  # window ends (event time)
    p95: np.ndarray  # NaN: no request
    requests: np.ndarray
    errors: np.ndarray
    excused: list[tuple[float, float]]  # spans whose detections are not false
    step_at: float | None
    clocks_moved_at: float | None = None  # daylight saving
    latency: np.ndarray | None = None  # each window's latency level (times BASE_MS, LATENCY_SIGMA lognormal)
    error_ratio: np.ndarray | None = None  # and its requests' error ratio


def make_stream(scenario: Scenario, seed: int, days: int = DAYS, step_days: tuple[int, int] = STEP_DAYS) -> Stream:
    """One seeded stream of ``days`` one-minute windows of ``scenario``; a step comes at a seeded
    minute of a day in ``step_days`` (first inclusive, last not)."""
    rng = np.random.default_rng(seed)
    start = T0 + int(rng.integers(0, 7)) * DAY  # any weekday
    ends = start + MINUTE * np.arange(1, days * 1440 + 1, dtype=np.float64)
    mid = ends - MINUTE / 2
    local = mid.copy()
    clocks_moved_at = None
    if scenario.dst:  # a service on local time: its cycles move an hour, at a seeded day of the second week
        clocks_moved_at = start + (7 + rng.integers(0, 7)) * DAY + 2 * 3600
        local += np.where(mid >= clocks_moved_at, 3600.0, 0.0)
    level = np.ones(ends.size)
    if scenario.cycle:
        level *= 1 + 0.4 * np.sin(2 * np.pi * (local % DAY) / DAY)
    if scenario.weekly:
        level *= np.where(((local // DAY) + 3) % 7 >= 5, 0.8, 1.0)  # T0 + 3 days is a Thursday: 5, 6 weekend
    traffic = level.copy()
    shift = np.zeros(ends.size)
    if scenario.day_sd:
        day = ((local - start) // DAY).astype(int)
        shift += rng.normal(0, scenario.day_sd, day.max() + 1)[day]
    if scenario.ar_phi:
        innovations = rng.normal(0, 0.1 * math.sqrt(1 - scenario.ar_phi ** 2), ends.size)
        shift += signal.lfilter([1.0], [1.0, -scenario.ar_phi], innovations)
    latency = level * np.exp(shift)
    error_ratio = np.full(ends.size, ERROR_RATIO) * np.exp(shift)
    excused: list[tuple[float, float]] = []
    for kind, span, factor, target in (("spikes", 10, 3.0, latency), ("bursts", 5, 50.0, error_ratio)):
        if getattr(scenario, kind):
            for day in range(days):
                first = day * 1440 + int(rng.integers(0, 1440 - span))
                target[first:first + span] *= factor
                excused.append((ends[first] - MINUTE, ends[first + span - 1] + AFTER_SPIKE_S))
    step_at = None
    if scenario.stepped:
        step_at = start + (step_days[0] + rng.integers(0, step_days[1] - step_days[0])) * DAY \
            + int(rng.integers(0, 1440)) * MINUTE
        after = mid >= step_at
        if scenario.spike_before_step:
            spike = (mid >= step_at - 3 * 3600) & (mid < step_at - 3 * 3600 + 10 * MINUTE)
            latency[spike] *= 3.0
            excused.append((step_at - 3 * 3600, step_at - 3 * 3600 + 10 * MINUTE + AFTER_SPIKE_S))
        latency[after] *= scenario.latency_step
        error_ratio[after] = np.minimum(error_ratio[after] * scenario.error_step, 1.0)
    if scenario.requests_per_s < 1 / 30:
        requests = np.ones(ends.size, dtype=np.int64)
    else:
        requests = rng.poisson(scenario.requests_per_s * MINUTE * traffic)
    errors = rng.binomial(requests, np.minimum(error_ratio, 1.0))
    p95 = _window_p95(rng, requests, scenario) * latency * BASE_MS
    return Stream(ends, p95, requests, errors, excused, step_at, clocks_moved_at, latency, error_ratio)


def _window_p95(rng: np.random.Generator, requests: np.ndarray, scenario: Scenario) -> np.ndarray:
    """The p95 of each window's ``requests`` draws (NaN where none) at a level of 1: the
    ``ceil(0.95 n)``-th of ``n`` draws is the quantile function at a Beta(k, n - k + 1) draw."""
    n = np.maximum(requests, 1)
    k = np.ceil(0.95 * n)
    u = rng.beta(k, n - k + 1)
    if scenario.mostly_zero:  # a queue's depth: 0 in 97% of samples, else exponential with mean 5
        value = np.where(u <= 0.97, 0.0, -5.0 * np.log1p(-(u - 0.97) / 0.03)) / 5.0
    elif scenario.pareto:  # Pareto, alpha 1.5, from 1
        value = (1 - u) ** (-1 / 1.5)
    else:
        value = np.exp(LATENCY_SIGMA * special.ndtri(u))
    return np.where(requests > 0, value, np.nan)


@dataclass
class _BaselineWatch:
    """A river detector on the standardised residuals our watch computes, with the same warm-up
    and cooldown, made afresh after each detection."""

    make: Callable
    detector: object = None
    quiet_until: float = -math.inf
    found: list = field(default_factory=list)

    def update(self, ts: float, z: float, direction: float) -> None:
        if ts < self.quiet_until:
            return
        if self.detector is None:
            self.detector = self.make()
        self.detector.update(z)
        if self.detector.drift_detected:
            self.found.append((ts, direction))
            self.detector, self.quiet_until = None, ts + 3600.0


class RiverBaselines:
    """River's ADWIN (``clock=1``) and PageHinkley, fed what a p95 watch reads once it reads against
    the hours of the day and is past its warm-up; a detection's direction is the sign of the
    last few residuals."""

    def __init__(self):
        self.watches = {"adwin": _BaselineWatch(lambda: drift.ADWIN(clock=1)),
                        "page_hinkley": _BaselineWatch(drift.PageHinkley)}
        self.recent_z = 0.0

    def follow(self, ts: float, watch: DriftWatch, written_before: int) -> None:
        """After ``watch`` was updated at ``ts`` (its history had ``written_before`` windows)."""
        if watch._next != written_before and watch.source >= PROFILED and watch.seen > watch.warmup_windows:
            self.recent_z += 0.3 * (watch.z - self.recent_z)
            for baseline in self.watches.values():
                baseline.update(ts, watch.z, self.recent_z)

    def found(self, name: str) -> list[tuple[float, float]]:
        """(event time, direction) of each detection of one of them."""
        return self.watches[name].found


class _BinomialCusum:
    """Upper CUSUM of the pooled error counts' log-likelihood ratio for a doubling of the error
    ratio, against the ratio of all requests so far; its threshold ``ln(2 * points a week)`` (at
    the rate points have come so far) keeps its false alarms under one in two weeks by Wald's
    bound, on binomial data."""

    def __init__(self):
        self.requests = self.errors = self.points = 0
        self.first = math.nan
        self.sum = 0.0
        self.quiet_until = -math.inf
        self.found: list = []

    def update(self, ts: float, requests: int, errors: int) -> None:
        if self.points == 0:
            self.first = ts
        if self.requests >= 10_000 and ts >= self.quiet_until and ts > self.first:
            p0 = max(self.errors / self.requests, 1e-5)
            p1 = min(2 * p0, 0.5)
            llr = errors * math.log(p1 / p0) + (requests - errors) * math.log((1 - p1) / (1 - p0))
            self.sum = max(0.0, self.sum + llr)
            if self.sum > math.log(2 * self.points / (ts - self.first) * WEEK):
                self.found.append((ts, 1.0))
                self.sum, self.quiet_until = 0.0, ts + 3600.0
        self.requests += requests
        self.errors += errors
        self.points += 1


def run_stream(scenario: Scenario, seed: int, days: int = DAYS, false_per_week: float | None = None,
               step_days: tuple[int, int] = STEP_DAYS) -> dict:
    """One stream through ``SeriesDrift`` with the default rule (or another ``false_per_week``),
    and through the baselines: every detection's (time, aggregate, direction), and the time taken."""
    stream = make_stream(scenario, seed, days, step_days)
    rule = DriftRule() if false_per_week is None else DriftRule(false_per_week=false_per_week)
    series = SeriesDrift.of_rule(rule)
    p95_watch = series.watches["p95"]
    baselines = RiverBaselines()
    cusum = _BinomialCusum()
    ours = []
    pooled = (0, 0)
    elapsed = 0.0
    for end, p95, requests, errors in zip(stream.ends.tolist(), stream.p95.tolist(), stream.requests.tolist(),
                                          stream.errors.tolist()):
        window = {"window_end": end, "p95": None if p95 != p95 else p95, "ok": requests - errors, "errors": errors}
        seen_p95 = p95_watch._next
        began = time.perf_counter()
        for aggregate, detection in series.update(window):
            ours.append((detection.detected_at, aggregate, detection.direction))
        elapsed += time.perf_counter() - began
        baselines.follow(end, p95_watch, seen_p95)
        pooled = (pooled[0] + requests, pooled[1] + errors)
        if pooled[0] >= 500:
            cusum.update(end, *pooled)
            pooled = (0, 0)
    return {"ours": ours, **{name: [(t, "p95", "up" if z > 0 else "down") for t, z in baselines.found(name)]
                             for name in ("adwin", "page_hinkley")},
            "binomial_cusum": [(t, "error_ratio", "up") for t, _ in cusum.found],
            "excused": stream.excused, "step_at": stream.step_at, "start": float(stream.ends[0]),
            "span_s": float(stream.ends[-1] - stream.ends[0]),
            "windows": int(stream.ends.size), "seconds": elapsed}


def _judge(result: dict, detector: str, stepped: str | None) -> tuple[int, float | None]:
    """A stream's false detections by ``detector``, and its delay to the step (None: not found)."""
    false, delay = 0, None
    step_at = result["step_at"]
    for at, aggregate, direction in result[detector]:
        if at < result["start"] + JUDGED_AFTER_S:
            continue
        if step_at is not None and at >= step_at:
            if delay is None and aggregate == stepped and direction == "up" and at - step_at <= FOUND_WITHIN_S:
                delay = at - step_at
            continue
        if not any(low <= at <= high for low, high in result["excused"]):
            false += 1
    return false, delay


def _judged_s(result: dict) -> float:
    """The seconds of a stream whose false detections count: from ``JUDGED_AFTER_S`` to its end or
    its step."""
    end = result["start"] + result["span_s"] if result["step_at"] is None else result["step_at"]
    return max(end - result["start"] - JUDGED_AFTER_S, 0.0)


def _false_figures(counts: list[int], series_weeks: float) -> dict:
    total = sum(counts)
    upper = stats.chi2.ppf(0.975, 2 * (total + 1)) / 2  # exact Poisson 95% upper bound of the count
    return {"per_series_week": round(total / series_weeks, 3), "upper_95": round(upper / series_weeks, 3),
            "per_10k_series_week": round(1e4 * total / series_weeks)}


def _summarise(name: str, scenario: Scenario, results: list[dict], goal_s: float | None) -> dict:
    weeks = sum(_judged_s(r) for r in results) / WEEK
    figures: dict = {"streams": len(results), "series_weeks": round(weeks, 1)}
    detectors = ("ours", "adwin", "page_hinkley") if scenario.stepped != "error_ratio" else ("ours", "binomial_cusum")
    if scenario.stepped is None:
        detectors = ("ours", *BASELINES)
    for detector in detectors:
        judged = [_judge(r, detector, scenario.stepped) for r in results]
        entry = {"false": _false_figures([f for f, _ in judged], weeks)}
        if scenario.stepped:
            delays = [d for _, d in judged if d is not None]
            entry["found"] = round(len(delays) / len(judged), 3)
            entry["found_within_goal"] = round(sum(d <= goal_s for d in delays) / len(judged), 3)
            entry["median_delay_min"] = round(float(np.median(delays)) / 60, 1) if delays else None
            entry["goal_min"] = goal_s / 60
        figures[detector] = entry
    return figures


def _task(args: tuple) -> dict:
    name, seed, days, false_per_week = args
    scenario = QUIET[name] if name in QUIET else CHANGES[name][0]
    return run_stream(scenario, seed, days, false_per_week)


def drift_scenarios(streams: int = STREAMS, days: int = DAYS, names: tuple[str, ...] | None = None,
                    false_per_week: float | None = None, workers: int | None = None) -> dict:
    """Every scenario (or ``names``), ``streams`` seeded streams each; figures per scenario, the
    false detections of the quiet ones together, and the time per window of both watches."""
    names = names or (*QUIET, *CHANGES)
    tasks = [(name, 1000 * index + seed, days, false_per_week) for index, name in enumerate(names)
             for seed in range(streams)]
    with ProcessPoolExecutor(workers or min(2, os.cpu_count() or 1)) as pool:
        results = list(pool.map(_task, tasks, chunksize=4))
    figures: dict = {"streams": streams, "days": days,
                     "false_per_week_asked": false_per_week or DriftRule().false_per_week}
    by_name: dict[str, list[dict]] = {}
    for (name, *_), result in zip(tasks, results):
        by_name.setdefault(name, []).append(result)
    for name, group in by_name.items():
        scenario, goal = (QUIET[name], None) if name in QUIET else CHANGES[name]
        figures[name] = _summarise(name, scenario, group, goal)
    quiet = [r for name, group in by_name.items() if name in QUIET for r in group]
    if quiet:
        weeks = sum(_judged_s(r) for r in quiet) / WEEK
        figures["all_quiet"] = {detector: _false_figures([_judge(r, detector, None)[0] for r in quiet], weeks)
                                for detector in ("ours", *BASELINES)}
    if quiet and len(names) == len(QUIET) + len(CHANGES):
        figures["fleet_control"] = fleet_control(max(streams // 4, 1), days)
        figures["pipeline_sample"] = pipeline_sample()
    figures["us_per_window_both_watches"] = round(
        1e6 * sum(r["seconds"] for r in results) / sum(r["windows"] for r in results), 2)
    return figures


FLEET_SETTINGS = (0.25, 1.0, 2.0)


def fleet_control(streams: int, days: int = DAYS) -> list[dict]:
    """The false detections a series-week measured over every quiet scenario (``streams`` each)
    at other settings of ``false_per_week``, next to what each asks."""
    rows = []
    for asked in FLEET_SETTINGS:
        tasks = [(name, 1000 * index + seed, days, asked) for index, name in enumerate(QUIET)
                 for seed in range(streams)]
        with ProcessPoolExecutor(min(2, os.cpu_count() or 1)) as pool:
            results = list(pool.map(_task, tasks, chunksize=4))
        weeks = sum(_judged_s(r) for r in results) / WEEK
        measured = _false_figures([_judge(r, "ours", None)[0] for r in results], weeks)
        rows.append({"asked": asked, "measured": measured["per_series_week"], "upper_95": measured["upper_95"],
                     "ratio": round(measured["per_series_week"] / asked, 2)})
    return rows


SAMPLE_STREAMS = 20
SAMPLE_DAYS = 10
SAMPLE_STEP_DAYS = (8, 9)
SAMPLE = Scenario(requests_per_s=2.0, latency_step=1.3)


def pipeline_sample(streams: int = SAMPLE_STREAMS, days: int = SAMPLE_DAYS) -> dict:
    """The same seeded streams (a daily cycle, 2 requests a second, a +30% p95 step on the ninth
    day) two ways: request by request through ``PartitionProcessor`` with its default settings,
    and as the suite draws them (each window's aggregates directly) through ``SeriesDrift``. The
    two should find the step alike and raise false detections alike."""
    import orjson

    from slostream.config import Settings, pipeline_config
    from slostream.pipeline.partition import PartitionProcessor
    from slostream.pipeline.types import SourceRecord

    direct, piped = [], []
    for seed in range(streams):
        stream = make_stream(SAMPLE, 9000 + seed, days, SAMPLE_STEP_DAYS)
        direct.append(run_stream(SAMPLE, 9000 + seed, days, step_days=SAMPLE_STEP_DAYS))
        rng = np.random.default_rng(seed)
        items = []
        for end, n, level, ratio in zip(stream.ends.tolist(), stream.requests.tolist(), stream.latency.tolist(),
                                        stream.error_ratio.tolist()):
            ts = end - MINUTE + np.sort(rng.random(n)) * MINUTE
            values = BASE_MS * level * rng.lognormal(0, LATENCY_SIGMA, n)
            oks = rng.random(n) >= ratio
            items += [{"service": "sample", "metric": "latency_ms", "ts": t, "value": round(v, 3), "ok": o}
                      for t, v, o in zip(ts.tolist(), values.tolist(), oks.tolist())]
        wall = time.time()
        proc = PartitionProcessor(0, pipeline_config(Settings(partitions=1, grace_s=5.0)), wall)
        found = []
        for offset, first in enumerate(range(0, len(items), 2000)):
            chunk = items[first:first + 2000]
            out = proc.process([SourceRecord("m", 0, offset, chunk[-1]["ts"], None, orjson.dumps(chunk))], wall)
            found += [(e["data"]["detected_at"], e["data"]["aggregate"], e["data"]["direction"]) for _, e in out.drift]
        piped.append({**direct[-1], "ours": found})
    figures = {}
    for name, results in (("pipeline", piped), ("direct", direct)):
        judged = [_judge(r, "ours", "p95") for r in results]
        weeks = sum(_judged_s(r) for r in results) / WEEK
        delays = [d for _, d in judged if d is not None]
        figures[name] = {"false_per_series_week": round(float(sum(f for f, _ in judged) / weeks), 2),
                         "found": round(len(delays) / len(judged), 3),
                         "median_delay_min": round(float(np.median(delays)) / 60, 1) if delays else None}
    return {"streams": streams, "days": days, **figures}
