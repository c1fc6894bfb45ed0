"""Threshold-model quality through the partition pipeline (issue 11).

Seeded latency series, each with a daily and a weekly cycle, a slow trend (-3% to +5% a week),
noise that lasts from window to window (AR(1), phi 0.3), and a labelled incident a week (one or
two hours at +80%), start with a poor static
warning level: too tight (0.6 times the level crossed by 2% of windows) on half of them, too
loose (1.8 times) on the other half. Five weeks run through ``PartitionProcessor`` in event time;
each week's recommendation is applied as an operator would (the processor restarts from its
checkpoint with the new levels). The week-4 recommendation is judged on the held-out fifth week:

- ``prediction_coverage``: the share of series whose actual violation rate at the recommended
  level lies in its predicted 95% interval (its ``slostream.recommendation.scored`` event), and
  ``prediction_median_relative_error``;
- ``noise_cut``: how many fewer breach windows outside incidents the final levels have than the
  initial ones over week 5, and the labelled incidents each detects (a breach window inside);
- the model's memory per series;
- the same figures for a **naive baseline** in the same run: the warning level set to week 4's
  empirical 98th percentile of window p95s, predicting a 2% violation rate with a Jeffreys
  interval on week 4's windows (``naive``).

``slo_threshold_quality``: the compliance models of threshold SLOs (``core.compliance_model``) on
seeded hourly histograms (a daily cycle, lower weekends, a random effect per day and per hour),
four weeks learned and the fifth held out, at the thresholds predicted to give 0.2%, 1% and 5% bad
events: the share whose actual bad share lies in the 95% interval, and the median relative error.
"""

from __future__ import annotations

import math
import time

import numpy as np
import orjson
from scipy import special, stats

from slostream.config import Settings, pipeline_config
from slostream.core.compliance_model import BINS, ComplianceModel
from slostream.core.objectives import Policy
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord

DAY, WEEK = 86400, 7 * 86400
T0 = 1_699_833_600  # a Monday, 00:00 UTC
SERIES = 16
WEEKS = 5
WINDOW = 300
EVERY_S = 20  # a measurement every 20 s: 15 to a 5-minute window
NAIVE_QUANTILE = 0.98
INCIDENTS_PER_WEEK = 1
INCIDENT_FACTOR = 1.8
PER_RECORD = 500
LASTING_PHI, LASTING_SD = 0.3, 0.06


def _series(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]:
    """One series' measurement times and latencies, and its incidents (start, end)."""
    n = (WEEKS * WEEK + 3600) // EVERY_S
    ts = T0 + EVERY_S * np.arange(n) + rng.uniform(0, 1, n)
    hour = (ts % DAY) / 3600
    daily = 1 + 0.35 * np.sin(2 * np.pi * (hour - 8) / 24)
    weekly = np.where(((ts // DAY) + 3) % 7 >= 5, 0.8, 1.0)  # 1970-01-01 was a Thursday
    trend = 1 + rng.uniform(-0.03, 0.05) * (ts - T0) / WEEK
    windows = ((ts - T0) // WINDOW).astype(np.int64)
    lasting = np.zeros(windows.max() + 1)  # noise that lasts from window to window: AR(1)
    shocks = rng.normal(0, LASTING_SD * math.sqrt(1 - LASTING_PHI ** 2), lasting.size)
    for i in range(1, lasting.size):
        lasting[i] = LASTING_PHI * lasting[i - 1] + shocks[i]
    incidents = []
    for week in range(WEEKS):
        for start in sorted(rng.uniform(0, WEEK - 4 * 3600, INCIDENTS_PER_WEEK)):
            begin = T0 + week * WEEK + start // WINDOW * WINDOW
            incidents.append((begin, begin + 3600 * int(rng.integers(1, 3))))
    factor = np.ones(ts.size)
    for begin, end in incidents:
        factor[(ts >= begin) & (ts < end)] = INCIDENT_FACTOR
    values = 100 * daily * weekly * trend * np.exp(lasting[windows]) * rng.lognormal(0, 0.25, ts.size) * factor
    return ts, values, incidents


def _window_p95(ts: np.ndarray, values: np.ndarray, first: float, last: float) -> tuple[np.ndarray, np.ndarray]:
    """Each complete 5-minute window's end and p95 in [first, last), exactly (numpy)."""
    chosen = (ts >= first) & (ts < last)
    index = ((ts[chosen] - first) // WINDOW).astype(np.int64)
    order = np.argsort(index, kind="stable")
    index, chosen_values = index[order], values[chosen][order]
    bounds = np.flatnonzero(np.diff(index)) + 1
    groups = np.split(chosen_values, bounds)
    starts = first + WINDOW * index[np.r_[0, bounds]]
    return starts + WINDOW, np.array([np.quantile(g, 0.95) for g in groups])


def _outside(ends: np.ndarray, incidents: list[tuple[float, float]]) -> np.ndarray:
    inside = np.zeros(ends.size, dtype=bool)
    for begin, end in incidents:
        inside |= (ends > begin) & (ends - WINDOW < end)
    return ~inside


def threshold_quality(series: int = SERIES, seed: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    generated = [_series(rng) for _ in range(series)]
    initial = {}
    for i, (ts, values, incidents) in enumerate(generated):
        ends, p95 = _window_p95(ts, values, T0, T0 + 4 * WEEK)
        quiet = p95[_outside(ends, incidents)]
        initial[f"s{i}"] = float(np.quantile(quiet, 0.98)) * (0.6 if i % 2 else 1.8)
    levels = dict(initial)

    def config(levels: dict[str, float]):
        policies = tuple(Policy(f"{name}-p95", name, "latency_ms", "p95", WINDOW, "above", warning=level,
                                critical=2 * level) for name, level in levels.items())
        return pipeline_config(Settings(partitions=1, grace_s=5.0, policies=policies))

    items = sorted(((float(t), f"s{i}", float(v)) for i, (ts, values, _) in enumerate(generated)
                    for t, v in zip(ts.tolist(), values.tolist())))
    records = [SourceRecord("m", 0, n, items[min(k + PER_RECORD, len(items)) - 1][0], None,
                            orjson.dumps([{"service": s, "metric": "latency_ms", "ts": t, "value": v}
                                          for t, s, v in items[k:k + PER_RECORD]]))
               for n, k in enumerate(range(0, len(items), PER_RECORD))]
    wall = time.time()  # the pipeline's wall clock: after all of the (past) data
    proc = PartitionProcessor(0, config(levels), wall)
    scored: dict[tuple[str, float, str], dict] = {}  # warning scores by (service, made_at, trigger)
    newest: dict[str, tuple[float, str]] = {}  # each service's newest warning recommendation
    week_end = T0 + WEEK + WINDOW
    held_out_levels, held_out_made = dict(levels), {}  # in force over the fifth week, and what set them
    for record in records:
        out = proc.process([record], wall)
        for _, event in out.recommendations:
            data = event["data"]
            if data["target"]["level"] != "warning":
                continue
            if event["type"] == "slostream.recommendation":
                levels[data["service"]] = data["recommended"]
                newest[data["service"]] = (data["made_at"], data["trigger"])
            else:
                scored[data["service"], data["made_at"], data["trigger"]] = data
        if record.timestamp >= week_end:  # apply the week's recommendations, as an operator would
            writes, _ = proc.checkpoint(final=True)
            proc = PartitionProcessor.restore(0, config(levels), dict(writes).items(), wall)
            if week_end < T0 + 5 * WEEK:
                held_out_levels, held_out_made = dict(levels), dict(newest)
            week_end += WEEK
    covered, errors, noise, detected = [], [], {"initial": 0, "final": 0}, {"initial": 0, "final": 0, "labelled": 0}
    naive = {"covered": [], "errors": [], "noise": 0, "detected": 0}
    for i, (ts, values, incidents) in enumerate(generated):
        name = f"s{i}"
        score = scored.get((name, *held_out_made[name])) if name in held_out_made else None
        if score is not None:
            covered.append(score["recommended"]["covered"])
            if score["recommended"]["relative_error"] is not None:
                errors.append(score["recommended"]["relative_error"])
        ends, p95 = _window_p95(ts, values, T0 + 4 * WEEK, T0 + 5 * WEEK)
        outside = _outside(ends, incidents)
        week5 = [(b, e) for b, e in incidents if b >= T0 + 4 * WEEK]
        detected["labelled"] += len(week5)
        _, week4 = _window_p95(ts, values, T0 + 3 * WEEK, T0 + 4 * WEEK)
        naive_level = float(np.quantile(week4, NAIVE_QUANTILE))
        for which, level in (("initial", initial[name]), ("final", held_out_levels[name]), ("naive", naive_level)):
            crossed = (p95[outside] > level).sum()
            found = sum(bool(((ends > b) & (ends - WINDOW < e) & (p95 > level)).any()) for b, e in week5)
            if which == "naive":
                naive["noise"] += int(crossed)
                naive["detected"] += found
            else:
                noise[which] += int(crossed)
                detected[which] += found
        actual = float(np.mean(p95 > naive_level))
        over = round((1 - NAIVE_QUANTILE) * week4.size)
        low, high = stats.beta.ppf([0.025, 0.975], over + 0.5, week4.size - over + 0.5)
        naive["covered"].append(bool(low <= actual <= high))
        if actual:
            naive["errors"].append(abs(1 - NAIVE_QUANTILE - actual) / actual)
    model_bytes = [m.model.recent.nbytes() + m.model.older.nbytes() + len(m.model.baseline.to_state())
                   for s in proc.series.values() for m in (s.models or {}).values()]
    return {
        "series": series,
        "scored_held_out": len(covered),
        "prediction_coverage": round(float(np.mean(covered)), 3) if covered else None,
        "prediction_median_relative_error": round(float(np.median(errors)), 3) if errors else None,
        "breach_windows_outside_incidents": noise,
        "noise_cut": round(1 - noise["final"] / noise["initial"], 3) if noise["initial"] else None,
        "incidents_detected": detected,
        "model_bytes_per_series": int(np.mean(model_bytes)) if model_bytes else None,
        "naive": {
            "prediction_coverage": round(float(np.mean(naive["covered"])), 3),
            "prediction_median_relative_error": round(float(np.median(naive["errors"])), 3)
            if naive["errors"] else None,
            "breach_windows_outside_incidents": naive["noise"],
            "noise_cut": round(1 - naive["noise"] / noise["initial"], 3) if noise["initial"] else None,
            "incidents_detected": naive["detected"],
        },
    }



def seasonal_hourly_histograms(model: ComplianceModel, rng: np.random.Generator, weeks: int, day_sd: float,
                               hour_sd: float = 0.03):
    """Hourly histograms (over ``model``'s bins) of a seasonal lognormal latency: a daily cycle,
    lower weekends, and a random effect per day (``day_sd``) and per hour, as (start, counts)."""
    base, sigma, per_hour = 150 * rng.uniform(0.8, 1.2), rng.uniform(0.25, 0.35), rng.uniform(500, 3000)
    day_effect = rng.normal(0, day_sd, weeks * 7)
    for h in range(weeks * 168):
        start = T0 + h * 3600
        daily = 1 + 0.3 * math.sin(2 * math.pi * ((start % DAY) / 3600 - 8) / 24)
        weekend = 0.85 if ((start // DAY) + 3) % 7 >= 5 else 1.0
        scale = base * daily * weekend * math.exp(day_effect[h // 24] + rng.normal(0, hour_sd))
        shares = np.diff(np.r_[0.0, special.ndtr(np.log(model.edges / scale) / sigma), 1.0])
        yield start, rng.multinomial(rng.poisson(per_hour * (0.5 + 0.5 * daily)), shares).astype(np.float32)


def slo_threshold_quality(series: int = 30, day_sd: float = 0.05) -> dict:
    covered, errors = [], []
    for seed in range(series):
        rng = np.random.default_rng(seed)
        model = ComplianceModel(300.0, good_below=True, objective=0.99)
        held_out = np.zeros(BINS + 2)
        for start, counts in seasonal_hourly_histograms(model, rng, 5, day_sd):
            if start < T0 + 4 * WEEK:
                model.update(start, counts)
            else:
                held_out += counts
        week = model.forecast(T0 + 4 * WEEK, WEEK)
        for target in (0.002, 0.01, 0.05):
            level = model.level_for(target, week)
            prediction = model.predict(level, week)
            actual = float(model.bad_of(level, held_out[None])[0] / held_out.sum())
            covered.append(prediction.covers(actual))
            errors.append(abs(prediction.violation_rate - actual) / actual)
    return {"series": series, "predictions": len(covered), "day_sd": day_sd,
            "prediction_coverage": round(float(np.mean(covered)), 3),
            "prediction_median_relative_error": round(float(np.median(errors)), 3),
            "model_bytes": model.nbytes()}
